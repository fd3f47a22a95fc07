// {{name}}: a huddle alert sink (world `alert-sink` of huddle:plugin@0.2.0).
//
// POSTs each batch of alerts as one JSON document to a URL:
// `{"alerts": [{source, count, interaction, actor, type, content, timestamp}]}`.
//
// Settings (beside `plugin` and `allow` in its `[[alerts.sinks]]` table):
// - `url` (required): where to POST; it must be on the sink's `allow` list.

import { log } from "huddle:plugin/host-log@0.2.0";
import { post } from "huddle:plugin/http@0.2.0";

const PLUGIN = "{{name}}";

// The host calls configure() once per instance, before any deliver().
let url = null;

function configure(settings) {
  for (const [key, value] of settings) {
    switch (key) {
      case "url":
        if (!/^https?:\/\//.test(value)) {
          throw `${PLUGIN}: \`url\` must be an http:// or https:// URL, not ${JSON.stringify(value)}`;
        }
        url = value;
        break;
      default:
        // Refusing unknown keys turns a typo in huddle.toml into a clear error.
        throw `${PLUGIN}: unknown setting \`${key}\``;
    }
  }
  if (url === null) {
    throw `${PLUGIN}: the \`url\` setting is required`;
  }
}

function requestBody(alerts) {
  return JSON.stringify({
    alerts: alerts.map((alert) => ({
      source: alert.source,
      count: alert.count,
      // A WIT u64 arrives as a BigInt, which JSON.stringify refuses.
      interaction: Number(alert.event.interaction),
      actor: alert.event.actor,
      type: alert.event.type,
      content: alert.event.content,
      timestamp: alert.event.timestamp,
    })),
  });
}

// 2xx is delivered; 408, 429 and 5xx may pass later (retried with backoff);
// any other answer will not change by retrying the same request.
function checkStatus(status) {
  if (status >= 200 && status <= 299) {
    return;
  }
  const reason = `${PLUGIN}: ${url} answered HTTP ${status}`;
  const transient = status === 408 || status === 429 || (status >= 500 && status <= 599);
  throw { tag: transient ? "transient" : "permanent", val: reason };
}

// The host's refusals (allowlist, headers, the per-call request limit) are
// configuration mistakes: retrying cannot help. A timeout or a failed
// connection may pass later.
const PERMANENT = ["not-allowed", "header-not-allowed", "too-many-requests"];

function deliver(alerts) {
  if (url === null) {
    throw { tag: "permanent", val: `${PLUGIN}: deliver called before configure` };
  }
  let response;
  try {
    response = post(url, "application/json", [], new TextEncoder().encode(requestBody(alerts)));
  } catch (error) {
    // The host's typed http-error is the thrown error's payload: {tag, val}.
    const reason = error.payload ?? { tag: "connection-failed", val: String(error) };
    if (reason.tag === "response-too-large") {
      // The body was cut at the host's limit; the status still tells.
      response = reason.val;
    } else {
      const message = `${PLUGIN}: ${reason.tag}${typeof reason.val === "string" ? `: ${reason.val}` : ""}`;
      log("warn", message);
      throw { tag: PERMANENT.includes(reason.tag) ? "permanent" : "transient", val: message };
    }
  }
  checkStatus(response.status);
  log("debug", `${PLUGIN}: delivered ${alerts.length} alert(s) to ${url}`);
}

export const sink = { configure, deliver };
