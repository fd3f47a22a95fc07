"""{{name}}: a huddle heading mapper (world `heading-mapper` of
huddle:plugin@0.2.0).

Gives each event the heading shown above it (the table below; other types
under their own name), or hides it.

Settings (`[plugins.heading-mapper.settings]` in huddle.toml):
- `hide = ["heartbeat", "leader_election"]`: the event types to hide (these
  two by default, as huddle does; `hide = []` shows everything).
"""

import json
from typing import List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host_log
from wit_world.imports.types import Event, Level

PLUGIN = "{{name}}"

# Event type to heading; types not listed show under their own name.
HEADINGS = {
    "question": "Question",
    "answer": "Answer",
    "followup": "Follow-up",
    "error": "Error",
}

# The host calls configure() once per instance, before any headings().
_hidden = {"heartbeat", "leader_election"}


class Mapper(exports.Mapper):
    def configure(self, settings: List[Tuple[str, str]]) -> None:
        global _hidden
        for key, value in settings:
            if key == "hide":
                # TOML lists arrive as JSON text.
                try:
                    kinds = json.loads(value)
                except ValueError:
                    kinds = None
                if not isinstance(kinds, list) or not all(
                    isinstance(kind, str) for kind in kinds
                ):
                    raise Err(
                        f'{PLUGIN}: `hide` must be a list of event types, e.g. ["heartbeat"], not {value}'
                    )
                _hidden = set(kinds)
            else:
                # Refusing unknown keys turns a typo in huddle.toml into a clear error.
                raise Err(f"{PLUGIN}: unknown setting `{key}`")
        host_log.log(Level.DEBUG, f"{PLUGIN}: hiding {sorted(_hidden)}")

    def headings(self, events: List[Event]) -> List[Optional[str]]:
        # Exactly one answer per event, in order: its heading, or None to hide it.
        return [
            None if event.type in _hidden else HEADINGS.get(event.type, event.type)
            for event in events
        ]
