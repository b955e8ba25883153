// The run page's live log: Server-Sent Events from /runs/ID/events (see
// primary/ui/log_stream.py). Each `log` event's id is the byte offset after it, so a
// reconnect (EventSource sends Last-Event-ID) resumes at the next byte. Auto-scroll
// follows the end until the user scrolls up, and again once they are back at the bottom.
(function () {
  "use strict";
  const log = document.getElementById("log");
  if (!log) return;
  const statusLine = document.getElementById("log-status");
  const followButton = document.getElementById("log-follow");
  const parts = document.querySelectorAll("[data-run-part]"); // state, jobs, attempts
  let ansiState = window.cifleetAnsi.fresh();
  let offset = log.dataset.offset || "0"; // bytes of the log shown so far
  let following = true;
  let lastState = null;
  let failures = 0;
  let opened = 0;

  function status(text) { statusLine.textContent = text; }

  function refreshParts() {
    for (const part of parts) {
      window.cifleet.refresh(part).catch(() => {}); // a 401 reloads to the login page
    }
  }

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 4;
  }

  function follow(on) {
    following = on;
    followButton.hidden = on;
  }

  log.addEventListener("scroll", () => follow(atBottom()));
  followButton.addEventListener("click", () => {
    log.scrollTop = log.scrollHeight;
    follow(true);
    log.focus();
  });

  function append(text) {
    const out = window.cifleetAnsi.segments(text, ansiState);
    ansiState = out.state;
    const fragment = document.createDocumentFragment();
    for (const segment of out.segments) {
      const names = window.cifleetAnsi.classes(segment);
      if (!names) { fragment.append(segment.text); continue; }
      const span = document.createElement("span");
      span.className = names;
      span.textContent = segment.text;
      fragment.append(span);
    }
    log.append(fragment);
    if (following) log.scrollTop = log.scrollHeight;
  }

  function connect() {
    const url = new URL(log.dataset.eventsUrl, location.href);
    url.searchParams.set("offset", offset); // after a refused stream; a reconnect sends Last-Event-ID
    const source = new EventSource(url);
    source.addEventListener("open", () => {
      failures = 0;
      opened += 1;
      log.dataset.connections = String(opened);
      status("following the log as it grows");
    });
    source.addEventListener("log", (event) => {
      offset = event.lastEventId;
      append(JSON.parse(event.data).text);
    });
    source.addEventListener("state", (event) => {
      if (event.data !== lastState && lastState !== null) refreshParts();
      lastState = event.data;
      log.dataset.state = JSON.parse(event.data).state;
    });
    source.addEventListener("end", () => {
      source.close();
      log.dataset.complete = "true";
      refreshParts();
      status("complete");
    });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) {
        status("reconnecting…"); // EventSource retries by itself, from the last id
        return;
      }
      // Refused (the primary is busy, or the session ended): try again later ourselves.
      failures += 1;
      const seconds = Math.min(30, 2 ** failures);
      status(`live log unavailable; trying again in ${seconds} s`);
      refreshParts();
      setTimeout(connect, seconds * 1000);
    });
  }

  connect();
})();
