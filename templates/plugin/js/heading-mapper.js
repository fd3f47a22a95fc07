// {{name}}: a huddle heading mapper (world `heading-mapper` of
// huddle:plugin@0.2.0).
//
// Gives each event the heading shown above it (the table below; other types
// under their own name), or hides it.
//
// Settings (`[plugins.heading-mapper.settings]` in huddle.toml):
// - `hide = ["heartbeat", "leader_election"]`: the event types to hide (these
//   two by default, as huddle does; `hide = []` shows everything).

import { log } from "huddle:plugin/host-log@0.2.0";

const PLUGIN = "{{name}}";

// Event type to heading; types not listed show under their own name.
const HEADINGS = new Map([
  ["question", "Question"],
  ["answer", "Answer"],
  ["followup", "Follow-up"],
  ["error", "Error"],
]);

// The host calls configure() once per instance, before any headings().
let hidden = new Set(["heartbeat", "leader_election"]);

function configure(settings) {
  for (const [key, value] of settings) {
    switch (key) {
      case "hide": {
        // TOML lists arrive as JSON text.
        let kinds = null;
        try {
          kinds = JSON.parse(value);
        } catch {
          // Reported below with the value.
        }
        if (!Array.isArray(kinds) || !kinds.every((kind) => typeof kind === "string")) {
          throw `${PLUGIN}: \`hide\` must be a list of event types, e.g. ["heartbeat"], not ${value}`;
        }
        hidden = new Set(kinds);
        break;
      }
      default:
        // Refusing unknown keys turns a typo in huddle.toml into a clear error.
        throw `${PLUGIN}: unknown setting \`${key}\``;
    }
  }
  log("debug", `${PLUGIN}: hiding ${JSON.stringify([...hidden])}`);
}

// Exactly one answer per event, in order: its heading, or undefined to hide it.
function headings(events) {
  return events.map((event) =>
    hidden.has(event.type) ? undefined : (HEADINGS.get(event.type) ?? event.type),
  );
}

export const mapper = { configure, headings };
