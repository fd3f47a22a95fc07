"""{{name}}: a huddle renderer (world `renderer` of huddle:plugin@0.2.0).

Each interaction becomes a heading and one list item per visible event:

    ### Interaction #1

    - **A → B** from Agent A: Who owns the deploy script?
    - **B → A** from Agent B: I do

Settings (`[plugins.renderer.settings]` in huddle.toml):
- `show_time = true` adds each event's timestamp to its line.
"""

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

PLUGIN = "{{name}}"

# The host calls configure() once per instance, before any render.
_show_time = False


def _head(context: RenderContext, number: int) -> str:
    level = "###" if context.section == Section.COMMUNICATION else "##"
    return f"{level} Interaction #{number}\n\n"


def _line(entry: Entry) -> str:
    event = entry.event
    time = f" at {event.timestamp}" if _show_time else ""
    # Later lines indented: a multi-line content stays inside its list item.
    content = event.content.replace("\n", "\n  ")
    return f"- **{entry.heading}** from {event.actor}{time}: {content}\n"


# The blank line keeps blocks apart once the host joins them.
_TAIL = "\n"


class Render(exports.Render):
    def configure(self, settings: List[Tuple[str, str]]) -> None:
        global _show_time
        for key, value in settings:
            if key == "show_time":
                # TOML booleans arrive as JSON text: "true" or "false".
                if value not in ("true", "false"):
                    raise Err(f"{PLUGIN}: `show_time` must be true or false, not {value}")
                _show_time = value == "true"
            else:
                # Refusing unknown keys turns a typo in huddle.toml into a clear error.
                raise Err(f"{PLUGIN}: unknown setting `{key}`")
        host_log.log(Level.DEBUG, f"{PLUGIN}: show_time = {str(_show_time).lower()}")

    def render(
        self, context: RenderContext, interactions: List[Interaction]
    ) -> List[str]:
        # One block per interaction, in the order given; a block depends only
        # on its interaction and the context (the host caches blocks).
        return [
            _head(context, interaction.number)
            + "".join(_line(entry) for entry in interaction.entries)
            + _TAIL
            for interaction in interactions
        ]

    def render_part(self, context: RenderContext, part: InteractionPart) -> str:
        # An interaction too large for one call, in slices: the parts joined
        # must equal what render() returns for the whole interaction.
        return (
            (_head(context, part.number) if part.first else "")
            + "".join(_line(entry) for entry in part.entries)
            + (_TAIL if part.last else "")
        )
