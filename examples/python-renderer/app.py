"""Example renderer in Python (componentize-py), world `renderer` of
huddle:plugin@0.2.0: each interaction becomes a markdown table, one row per
visible event.

Settings (`[plugins.renderer.settings]` in huddle.toml):
- `max_chars = N` cuts each event's content to N characters (default 200,
  0 keeps it whole) so a long message does not stretch the table.

Build: ../build-polyglot.sh (or the componentize-py line in README.md).
"""

import re
from typing import List, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host_log
from wit_world.imports.types import (
    Entry,
    Interaction,
    InteractionPart,
    Level,
    RenderContext,
    Section,
)

# configure() is called once per instance, before any render().
_max_chars = 200


# A pipe not already escaped: preceded by an even number of backslashes
# (GitHub's tables read `\\|` as an escaped backslash, then a cell border).
_BARE_PIPE = re.compile(r"(?<!\\)((?:\\\\)*)\|")


def _content_cell(content: str) -> str:
    """An event's content as one table cell.

    huddle neutralises every field before a renderer sees it (no raw HTML,
    no line that opens a block), keeping inline markdown; the one-line fields
    (actor, heading, timestamp) arrive with every character of inline meaning
    escaped, `|` included, and go in as they are. Content keeps its inline
    markdown, so only what a table adds is done here: one line, bare pipes
    escaped."""
    text = " ".join(content.split())
    if _max_chars and len(text) > _max_chars:
        text = text[:_max_chars].rstrip("\\") + "…"
    return _BARE_PIPE.sub(lambda m: m.group(1) + "\\|", text)


def _head(context: RenderContext, number: int) -> str:
    level = "###" if context.section == Section.COMMUNICATION else "##"
    return (
        f"{level} Interaction #{number}\n\n"
        "| time (UTC) | actor | event | content |\n"
        "| --- | --- | --- | --- |\n"
    )


def _row(entry: Entry) -> str:
    event = entry.event
    # 2026-05-01T12:00:00Z -> 2026-05-01 12:00:00
    time = event.timestamp.replace("T", " ").rstrip("Z")[:19]
    return (
        f"| {time} | {event.actor} | {entry.heading} | {_content_cell(event.content)} |\n"
    )


# The blank line keeps blocks apart once the host joins them.
_TAIL = "\n"


class Render(exports.Render):
    def configure(self, settings: List[Tuple[str, str]]) -> None:
        global _max_chars
        for key, value in settings:
            if key == "max_chars":
                # TOML integers arrive as JSON text.
                if not value.isdigit():
                    raise Err(
                        f"python-renderer: `max_chars` must be a whole number, not {value}"
                    )
                _max_chars = int(value)
            else:
                # Refusing unknown keys turns a typo in huddle.toml into a clear error.
                raise Err(f"python-renderer: unknown setting `{key}`")
        host_log.log(Level.DEBUG, f"python-renderer: max_chars = {_max_chars}")

    def render(
        self, context: RenderContext, interactions: List[Interaction]
    ) -> List[str]:
        return [
            _head(context, interaction.number)
            + "".join(_row(entry) for entry in interaction.entries)
            + _TAIL
            for interaction in interactions
        ]

    def render_part(self, context: RenderContext, part: InteractionPart) -> str:
        # The parts joined must equal render()'s block: head on the first,
        # tail on the last, rows in between.
        return (
            (_head(context, part.number) if part.first else "")
            + "".join(_row(entry) for entry in part.entries)
            + (_TAIL if part.last else "")
        )
