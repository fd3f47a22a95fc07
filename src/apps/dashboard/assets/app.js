// huddle dashboard: follows the log over Server-Sent Events and fetches the
// server-rendered panels again on news. Text from the log only ever reaches
// the page through textContent (or the server's escaped HTML).
"use strict";

(function () {
  const LIVE_KEPT = 200;
  const live = document.getElementById("live");
  const panels = document.getElementById("panels");
  const connection = document.getElementById("connection");
  let refreshQueued = false;
  let refreshing = false;

  function setConnection(state, label) {
    connection.textContent = label;
    connection.className = "connection " + state;
    document.body.dataset.stream = state;
  }

  // The panels are rendered and escaped by the server; they hold no script.
  async function refresh() {
    if (refreshing) {
      refreshQueued = true;
      return;
    }
    refreshing = true;
    try {
      const response = await fetch("panel", { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        const html = await response.text();
        const parsed = new DOMParser().parseFromString(html, "text/html");
        panels.replaceChildren(...parsed.body.childNodes);
      }
    } catch (_) {
      // The next tick tries again.
    } finally {
      refreshing = false;
      if (refreshQueued) {
        refreshQueued = false;
        setTimeout(refresh, 50);
      }
    }
  }

  // As the server's `visible`: controls (but newline and tab), bidirectional
  // overrides and line separators show as \u{...} escapes, not obeyed.
  const HIDDEN = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/g;
  function shown(value) {
    return String(value).replace(/\r\n/g, "\n").replace(HIDDEN, function (c) {
      return "\\u{" + c.charCodeAt(0).toString(16) + "}";
    });
  }

  function cell(tag, className, value) {
    const element = document.createElement(tag);
    element.className = className;
    element.textContent = shown(value);
    return element;
  }

  function show(fed) {
    const event = fed.event || {};
    const item = document.createElement("li");
    item.className = "event type-" + String(event.type || "").replace(/[^a-z0-9_-]/g, "");
    item.dataset.position = fed.position;
    item.append(
      cell("span", "when", String(event.timestamp || "")),
      cell("span", "interaction", "#" + String(event.interaction)),
      cell("span", "actor", String(event.actor || "")),
      cell("span", "type", String(event.type || "")),
      cell("span", "content", String(event.content || ""))
    );
    live.prepend(item);
    while (live.childElementCount > LIVE_KEPT) {
      live.lastElementChild.remove();
    }
  }

  // The last event shown: a stream closed for good starts again after it.
  let lastId = null;

  function connect(query) {
    // Relative, so the page works under a reverse proxy's prefix too.
    const url = query ? "api/stream?" + query : "api/stream";
    const stream = new EventSource(url);
    let opened = false;
    stream.addEventListener("open", function () {
      opened = true;
      setConnection("open", "live");
    });
    stream.addEventListener("huddle", function (message) {
      lastId = message.lastEventId || lastId;
      try {
        show(JSON.parse(message.data));
      } catch (_) {
        return;
      }
      refresh();
    });
    stream.addEventListener("error", function () {
      // EventSource reconnects by itself, sending Last-Event-ID. Closed for
      // good (an error answer): go on after the last event shown; if even
      // that is refused (the log was replaced), from the head.
      setConnection("lost", "reconnecting…");
      if (stream.readyState === EventSource.CLOSED) {
        const next = opened && lastId ? "after=" + encodeURIComponent(lastId) : null;
        setTimeout(function () {
          connect(next);
        }, 2000);
      }
    });
  }

  setConnection("connecting", "connecting…");
  const from = document.body.dataset.from;
  connect(from ? "from=" + encodeURIComponent(from) : null);
  // Ages grow and leaders fall silent without any event: tick.
  setInterval(refresh, 1000);
})();
