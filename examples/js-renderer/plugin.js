// js-renderer: a huddle renderer (world `renderer` of huddle:plugin@0.2.0).
//
// Each interaction becomes a heading and one list item per visible event:
//
//     ### Interaction #1
//
//     - **A → B** from Agent A: Who owns the deploy script?
//     - **B → A** from Agent B: I do
//
// Settings (`[plugins.renderer.settings]` in huddle.toml):
// - `show_time = true` adds each event's timestamp to its line.

import { log } from "huddle:plugin/host-log@0.2.0";

const PLUGIN = "js-renderer";

// The host calls configure() once per instance, before any render.
let showTime = false;

function configure(settings) {
  for (const [key, value] of settings) {
    switch (key) {
      case "show_time":
        // TOML booleans arrive as JSON text: "true" or "false".
        if (value !== "true" && value !== "false") {
          throw `${PLUGIN}: \`show_time\` must be true or false, not ${value}`;
        }
        showTime = value === "true";
        break;
      default:
        // Refusing unknown keys turns a typo in huddle.toml into a clear error.
        throw `${PLUGIN}: unknown setting \`${key}\``;
    }
  }
  log("debug", `${PLUGIN}: show_time = ${showTime}`);
}

// `number` is a BigInt (a WIT u64); it prints without a suffix.
function head(context, number) {
  const level = context.section === "communication" ? "###" : "##";
  return `${level} Interaction #${number}\n\n`;
}

function line(entry) {
  const event = entry.event;
  const time = showTime ? ` at ${event.timestamp}` : "";
  // Later lines indented: a multi-line content stays inside its list item.
  const content = event.content.replaceAll("\n", "\n  ");
  return `- **${entry.heading}** from ${event.actor}${time}: ${content}\n`;
}

// The blank line keeps blocks apart once the host joins them.
const TAIL = "\n";

// One block per interaction, in the order given; a block depends only on its
// interaction and the context (the host caches blocks).
function renderBlocks(context, interactions) {
  return interactions.map(
    (interaction) =>
      head(context, interaction.number) + interaction.entries.map(line).join("") + TAIL,
  );
}

// An interaction too large for one call, in slices: the parts joined must
// equal what renderBlocks() returns for the whole interaction.
function renderPart(context, part) {
  return (
    (part.first ? head(context, part.number) : "") +
    part.entries.map(line).join("") +
    (part.last ? TAIL : "")
  );
}

export const render = { configure, render: renderBlocks, renderPart };
