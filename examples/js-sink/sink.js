// Example alert sink in JavaScript (componentize-js), world `alert-sink` of
// huddle:plugin@0.2.0: posts each batch of alerts as one JSON document to a
// URL, for a chat bridge or a script behind a small HTTP endpoint.
//
// Settings (`[[alerts.sinks]]` in huddle.toml, beside `plugin` and `allow`):
// - `url` (required): where to POST; it must be on the sink's `allow` list.
// - `token` (optional): sent as `Authorization: Bearer TOKEN`; the sink's
//   `allow_headers` must list `authorization`.
//
// Build: ../build-polyglot.sh (or the componentize-js line in README.md).

import { log } from "huddle:plugin/host-log@0.2.0";
import { post } from "huddle:plugin/http@0.2.0";

// configure() is called once per instance, before any deliver().
let url = null;
let token = null;

function configure(settings) {
  for (const [key, value] of settings) {
    // Strings arrive as they are; numbers, lists and tables as JSON text.
    switch (key) {
      case "url":
        if (!/^https?:\/\/\S+$/.test(value)) {
          throw `js-sink: \`url\` must be an http(s) URL, not ${JSON.stringify(value)}`;
        }
        url = value;
        break;
      case "token":
        if (value === "") {
          throw "js-sink: `token` must not be empty";
        }
        token = value;
        break;
      default:
        // Refusing unknown keys turns a typo in huddle.toml into a clear error.
        throw `js-sink: unknown setting \`${key}\``;
    }
  }
  if (url === null) {
    throw "js-sink: the `url` setting is required";
  }
}

function deliver(alerts) {
  const body = JSON.stringify({
    alerts: alerts.map((alert) => ({
      source: alert.source,
      count: alert.count,
      interaction: Number(alert.event.interaction),
      actor: alert.event.actor,
      type: alert.event.type,
      content: alert.event.content,
      timestamp: alert.event.timestamp,
    })),
  });
  const headers = token === null ? [] : [["authorization", `Bearer ${token}`]];
  let response;
  try {
    response = post(url, "application/json", headers, new TextEncoder().encode(body));
  } catch (error) {
    // The host's typed http-error arrives as the thrown error's payload.
    const reason = error.payload ?? { tag: "connection-failed", val: String(error) };
    const message = `js-sink: ${reason.tag}${typeof reason.val === "string" ? `: ${reason.val}` : ""}`;
    log("warn", message);
    // Refusals are configuration mistakes: retrying cannot help.
    const permanent = ["not-allowed", "header-not-allowed"].includes(reason.tag);
    throw { tag: permanent ? "permanent" : "transient", val: message };
  }
  if (response.status >= 500 || response.status === 429) {
    throw { tag: "transient", val: `js-sink: ${url} answered ${response.status}` };
  }
  if (response.status >= 400) {
    throw { tag: "permanent", val: `js-sink: ${url} answered ${response.status}` };
  }
  log("debug", `js-sink: delivered ${alerts.length} alert(s) to ${url}`);
}

export const sink = { configure, deliver };
