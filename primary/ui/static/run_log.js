// The run page's log, followed with plain requests (GET /runs/ID/log?offset=N&limit=M, as
// Jenkins' progressiveText and GitLab's job trace do): no connection is held between them,
// so any number of run tabs leave the browser's connections to other pages. A finished
// run's log is one request; a live one is asked for again every second (at once while a
// backlog comes in), a queued one every 3 s. Each answer says where it ends, whether the
// log is complete, and the run's state, and the page refreshes its state, jobs and
// attempts when that changed (also on the first answer, against what the page was
// rendered with).
//
// The DOM stays bounded: one <span> per line (its number and byte offset in data-), at
// most MAX_LINES of them; older lines leave the top ("Load earlier" brings back the lines
// before the first shown, with a plain request; it and every other start away from the
// log's start ask the primary for the colours set before it). A large backlog is
// rendered a slice per frame, and lines that would leave at once are only run through the
// colour parser, so the page answers while megabytes arrive.
(function () {
  "use strict";
  const log = document.getElementById("log");
  if (!log) return;
  const MAX_LINES = 5000;
  const PIECE_BYTES = 2 << 20;
  const EARLIER_BYTES = 256 << 10;
  const LINES_PER_SLICE = 1500;
  const LIVE_MS = 1000;
  const QUEUED_MS = 3000;
  const statusLine = document.getElementById("log-status");
  const followButton = document.getElementById("log-follow");
  const earlier = document.getElementById("log-earlier");
  const earlierButton = document.getElementById("log-load-earlier");
  const parts = document.querySelectorAll("[data-run-part]"); // state, jobs, attempts
  const ansi = window.cifleetAnsi;
  const logUrl = log.dataset.logUrl;
  const decoder = new TextDecoder("utf-8");
  let offset = Number(log.dataset.offset || "0"); // the next byte to ask for
  let nextNumber = Number(log.dataset.firstLine || "1");
  let ansiState = ansi.fresh();
  // Shown from the middle of the log (a long log's tail, a search result): the next answer
  // brings the colours set before it (X-Log-Ansi), as a terminal would still show them.
  let needAnsi = offset > 0;
  let partial = null; // the last line while it has no newline: {el, text, ansi, offset}
  let lineStart = offset; // byte offset where the line being read starts
  let lastState = log.dataset.state || null;
  let following = true;
  let failures = 0;
  let requests = 0;
  let targetShown = false;
  let polling = false; // a request or a timer for the next one is on its way
  let shown = 0; // which start the log shows: a search result opened makes a new one

  function status(text) { statusLine.textContent = text; }

  function refreshParts() {
    for (const part of parts) window.cifleet.refresh(part).catch(() => {});
  }

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 4;
  }

  function follow(on) {
    following = on;
    followButton.hidden = on;
  }

  // Only the reader's own scrolling starts or stops following: the page's own (a line
  // scrolled to, the log emptied to show a search result) does not.
  let touchedAt = 0;
  for (const kind of ["wheel", "touchmove", "keydown", "pointerdown"]) {
    log.addEventListener(kind, () => { touchedAt = Date.now(); }, { passive: true });
  }
  log.addEventListener("scroll", () => { if (Date.now() - touchedAt < 1500) follow(atBottom()); });
  followButton.addEventListener("click", () => {
    log.scrollTop = log.scrollHeight;
    follow(true);
    log.focus();
  });

  // A line's segments as a terminal shows them: a carriage return (not the one of a CR LF)
  // goes back to the start of the line, and what follows it is what stays (a progress bar
  // redraws the whole line); the colours set before it still apply.
  function afterLastReturn(segments) {
    for (let i = segments.length - 1; i >= 0; i--) {
      const text = segments[i].text;
      const cut = text.replace(/\r(?=\n?$)/, "").lastIndexOf("\r");
      if (cut >= 0) {
        return [{ ...segments[i], text: text.slice(cut + 1) }, ...segments.slice(i + 1)];
      }
    }
    return segments;
  }

  function fill(el, segments) {
    const fragment = document.createDocumentFragment();
    for (const segment of afterLastReturn(segments)) {
      const names = ansi.classes(segment);
      const colours = ansi.colours(segment);
      if (!names && !colours.color && !colours.backgroundColor) { fragment.append(segment.text); continue; }
      const span = document.createElement("span");
      if (names) span.className = names;
      Object.assign(span.style, colours);
      span.textContent = segment.text;
      fragment.append(span);
    }
    el.replaceChildren(fragment);
  }

  // Sections: a job's header (`=== job NAME`) or a Prepare environment header starts one,
  // which a click (or Enter) on the header folds; it runs to the next `=== ` line. A job's
  // failed footer offers a jump to that job's header.
  const HEADER = /^=== (job [^:\n]+|Prepare environment[^\n]*)\r?\n?$/;
  const FAILED = /^=== job (.+): (failed|timed_out)\b/;
  const jumpButton = document.getElementById("log-jump-failed");
  let section = null; // the header of the section lines now go into
  const headers = new Map(); // job name -> its header line

  function classify(el, text) {
    const header = HEADER.exec(text);
    if (header) {
      el.classList.add("section");
      el.tabIndex = 0;
      el.setAttribute("role", "button");
      el.setAttribute("aria-expanded", "true");
      section = el;
      if (header[1].startsWith("job ")) headers.set(header[1].slice(4), el);
      return;
    }
    if (text.startsWith("=== ")) section = null; // a footer or an attempt's end: no section
    else if (section && section.classList.contains("folded")) el.hidden = true;
    const failed = FAILED.exec(text);
    if (failed && jumpButton) {
      const target = headers.get(failed[1]) || el;
      jumpButton.href = `#${target.id}`;
      jumpButton.textContent = `Jump to the failed job (${failed[1]})`;
      jumpButton.hidden = false;
    }
  }

  function toggle(header) {
    const fold = !header.classList.contains("folded");
    header.classList.toggle("folded", fold);
    header.setAttribute("aria-expanded", String(!fold));
    for (let el = header.nextElementSibling; el && !el.textContent.startsWith("=== "); el = el.nextElementSibling) {
      el.hidden = fold;
    }
  }

  function lineElement(number, start) {
    const el = document.createElement("span");
    el.className = "line";
    el.id = `L${number}`;
    el.dataset.n = String(number);
    el.dataset.offset = String(start);
    return el;
  }

  function trimTop() {
    let removed = false;
    // Lines the reader loaded (scrolled up, not following) stay, up to twice the bound.
    const keep = following ? MAX_LINES : 2 * MAX_LINES;
    while (log.childElementCount > keep) {
      log.firstElementChild.remove();
      removed = true;
    }
    if (removed || Number(log.firstElementChild?.dataset.offset || offset) > 0) showEarlier();
  }

  function showEarlier() {
    const first = log.firstElementChild;
    const start = first ? Number(first.dataset.offset) : offset;
    earlier.hidden = start === 0;
    earlier.dataset.before = String(start);
    const n = first ? Number(first.dataset.n) - 1 : nextNumber - 1;
    document.getElementById("log-earlier-count").textContent =
      n > 0 ? `${n} earlier line${n === 1 ? "" : "s"} not shown here.` : "Earlier bytes not shown here.";
  }

  // The complete lines of a piece (each ends with "\n") and its unfinished rest, with the
  // byte offset of each line's start, from the bytes (exact whatever the text decodes to).
  function splitLines(bytes, pieceStart) {
    const lines = [];
    let pos = 0;
    while (pos < bytes.length) {
      const nl = bytes.indexOf(10, pos);
      if (nl < 0) break;
      lines.push({ text: decoder.decode(bytes.subarray(pos, nl + 1), { stream: true }), start: lineStart });
      lineStart = pieceStart + nl + 1;
      pos = nl + 1;
    }
    const rest = decoder.decode(bytes.subarray(pos), { stream: true });
    return { lines, rest };
  }

  function nextFrame() {
    return new Promise((resolve) => requestAnimationFrame(() => resolve()));
  }

  async function render(bytes, end) {
    const { lines, rest } = splitLines(bytes, offset);
    if (partial && lines.length) { // the unfinished line ends now
      lines[0] = { text: partial.text + lines[0].text, start: partial.offset, ansi: partial.ansi, el: partial.el };
      partial = null;
    }
    // Following: lines past what the DOM keeps are only run through the colour parser.
    // Reading (scrolled up, or at a search result): only what fits below what is read; the
    // rest is asked for again later, from the first line not shown.
    const skip = following ? Math.max(0, lines.length - MAX_LINES) : 0;
    const room = following ? Infinity : MAX_LINES - log.childElementCount;
    let added = 0;
    for (let i = 0; i < lines.length; i += LINES_PER_SLICE) {
      const fragment = document.createDocumentFragment();
      for (let k = i; k < Math.min(lines.length, i + LINES_PER_SLICE); k++) {
        const line = lines[k];
        if (!line.el && added >= room) { // no room: stop at this line's start
          log.append(fragment);
          offset = lineStart = line.start;
          decoder.decode(); // what it held of later bytes: they are asked for again
          return;
        }
        const out = ansi.segments(line.text, line.ansi || ansiState);
        ansiState = out.state;
        if (line.el) { fill(line.el, out.segments); classify(line.el, line.text); continue; }
        const number = nextNumber++;
        if (k < skip) continue;
        const el = lineElement(number, line.start);
        fill(el, out.segments);
        classify(el, line.text);
        fragment.append(el);
        added += 1;
      }
      log.append(fragment);
      trimTop();
      if (following) log.scrollTop = log.scrollHeight;
      if (i + LINES_PER_SLICE < lines.length) await nextFrame(); // let the page answer
    }
    if (!following && rest && added >= room) { // the unfinished line too waits
      offset = lineStart;
      decoder.decode();
      return;
    }
    if (rest || partial) {
      if (!partial) {
        partial = { el: lineElement(nextNumber++, lineStart), text: "", ansi: ansiState, offset: lineStart };
        log.append(partial.el);
      }
      partial.text += rest;
      fill(partial.el, ansi.segments(partial.text, partial.ansi).segments);
      trimTop();
    }
    offset = end;
    if (following) log.scrollTop = log.scrollHeight;
  }

  function noteState(header) {
    if (!header) return null;
    const state = JSON.parse(header);
    if (lastState !== null && header !== lastState) refreshParts();
    lastState = header;
    log.dataset.state = state.state;
    document.title = document.title.replace(/^(\S+ · )?/, `${state.state} · `);
    return state;
  }

  // The colours the log has set where an answer's piece starts (asked for with ansi=1).
  function coloursAt(response) {
    return { ...ansi.fresh(), ...JSON.parse(response.headers.get("X-Log-Ansi") || "{}") };
  }

  async function fetchPiece(params) {
    const url = new URL(logUrl, location.href);
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, String(v));
    const response = await fetch(url, {
      headers: window.cifleet.fetchHeaders, credentials: "same-origin", cache: "no-store",
    });
    requests += 1;
    log.dataset.requests = String(requests);
    if (response.status === 401) { window.cifleet.sessionEnded(); throw new Error("logged out"); }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response;
  }

  async function poll() {
    polling = true;
    const generation = shown;
    // Reading up in a long log (or at a search result): new lines wait, so the ones being
    // read do not leave the page; Follow the end goes on.
    if (!following && log.childElementCount >= MAX_LINES) {
      status("paused while you read above; Follow the end goes on");
      setTimeout(poll, LIVE_MS);
      return;
    }
    let response;
    try {
      response = await fetchPiece({ offset, limit: PIECE_BYTES, ...(needAnsi ? { ansi: 1 } : {}) });
    } catch (e) {
      failures += 1;
      const seconds = Math.min(30, 2 ** failures);
      status(`the primary does not answer; trying again in ${seconds} s`);
      document.body.classList.add("stale");
      setTimeout(poll, seconds * 1000);
      return;
    }
    if (failures) { failures = 0; document.body.classList.remove("stale"); }
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (generation !== shown) { setTimeout(poll, 0); return; } // a search result was opened meanwhile
    if (needAnsi) { ansiState = coloursAt(response); needAnsi = false; }
    await render(bytes, Number(response.headers.get("X-Log-Next")));
    if (!targetShown && location.hash) targetShown = markTarget(); // the linked line came
    const state = noteState(response.headers.get("X-Run-State"));
    if (response.headers.get("X-Log-Complete") === "true") {
      const tail = decoder.decode(); // bytes of an unfinished character: shown replaced
      if (tail && partial) { partial.text += tail; fill(partial.el, ansi.segments(partial.text, partial.ansi).segments); }
      log.dataset.complete = "true";
      status("complete");
      refreshParts();
      polling = false;
      return;
    }
    const queued = state && state.state === "queued";
    status(queued ? "waiting for a worker" : "following the log as it grows");
    const wait = bytes.length >= PIECE_BYTES ? 0 : queued ? QUEUED_MS : LIVE_MS;
    setTimeout(poll, document.hidden ? Math.max(wait, 5000) : wait);
  }

  earlierButton.addEventListener("click", async () => {
    const before = Number(earlier.dataset.before);
    earlierButton.disabled = true;
    try {
      const response = await fetchPiece({ before, limit: EARLIER_BYTES, ansi: 1 });
      const bytes = new Uint8Array(await response.arrayBuffer());
      const start = Number(response.headers.get("X-Log-Offset"));
      const first = log.firstElementChild;
      let number = first ? Number(first.dataset.n) : nextNumber;
      const text = new TextDecoder("utf-8").decode(bytes);
      const lines = text.split(/(?<=\n)/).filter((l) => l);
      // Offsets of the lines, from the bytes.
      const starts = [];
      let pos = 0;
      while (pos < bytes.length) { starts.push(start + pos); const nl = bytes.indexOf(10, pos); pos = nl < 0 ? bytes.length : nl + 1; }
      number -= lines.length;
      const fragment = document.createDocumentFragment();
      let state = coloursAt(response);
      lines.forEach((line, i) => {
        const out = ansi.segments(line, state);
        state = out.state;
        const el = lineElement(number + i, starts[i]);
        fill(el, out.segments);
        fragment.append(el);
      });
      const height = log.scrollHeight;
      log.prepend(fragment);
      log.scrollTop += log.scrollHeight - height; // the reader stays on the same line
      showEarlier();
    } finally {
      earlierButton.disabled = false;
    }
  });

  // A click on a line's number links to it (#L123), as on a forge.
  log.addEventListener("keydown", (event) => {
    const line = event.target.closest?.(".line.section");
    if (line && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); toggle(line); }
  });
  if (jumpButton) {
    jumpButton.addEventListener("click", (event) => {
      event.preventDefault();
      history.replaceState(null, "", jumpButton.getAttribute("href"));
      markTarget();
    });
  }

  log.addEventListener("click", (event) => {
    const line = event.target.closest(".line");
    if (!line || window.getSelection().toString()) return;
    const left = line.getClientRects()[0]?.left ?? 0;
    const gutter = parseFloat(getComputedStyle(line, "::before").width) || 0;
    if (event.clientX - left > gutter + 4) {
      if (line.classList.contains("section")) toggle(line);
      return;
    }
    history.replaceState(null, "", `#${line.id}`);
    markTarget();
  });

  function markTarget() {
    log.querySelector(".line.target")?.classList.remove("target");
    const match = /^#L(\d+)$/.exec(location.hash);
    const line = match && document.getElementById(`L${match[1]}`);
    if (!line) return false;
    line.classList.add("target");
    follow(false);
    line.scrollIntoView({ block: "center" });
    return true;
  }

  // Search: the server reads the whole log; a match shown here is marked, one that is not
  // is opened by showing the log from that line on.
  const searchForm = document.getElementById("log-search");
  const results = document.getElementById("log-search-results");

  function showFrom(match) {
    shown += 1;
    log.replaceChildren();
    offset = match.offset;
    lineStart = match.offset;
    nextNumber = match.line;
    partial = null;
    section = null;
    ansiState = ansi.fresh();
    needAnsi = true; // the first answer brings the colours set before this line
    decoder.decode(); // forget an unfinished character
    follow(false);
    delete log.dataset.complete;
    history.replaceState(null, "", `#L${match.line}`);
    targetShown = false;
    showEarlier();
    fetchLater();
  }

  function fetchLater() { if (!polling) poll(); }

  searchForm?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const url = new URL(searchForm.action, location.href);
    url.searchParams.set("q", searchForm.elements.q.value);
    const response = await fetch(url, { headers: window.cifleet.fetchHeaders, credentials: "same-origin" });
    const body = await response.json();
    results.hidden = false;
    if (!response.ok) { results.textContent = body.error; return; }
    const list = document.createElement("ol");
    for (const match of body.matches) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = `#L${match.line}`;
      link.textContent = `line ${match.line}`;
      link.addEventListener("click", (e) => {
        e.preventDefault();
        history.replaceState(null, "", link.getAttribute("href"));
        if (!markTarget()) showFrom(match);
      });
      item.append(link, ": ", match.text);
      list.append(item);
    }
    const count = body.matches.length;
    const summary = document.createElement("p");
    summary.textContent = count === 0 ? "No line matches."
      : `${count}${body.complete ? "" : "+"} matching line${count === 1 ? "" : "s"}${body.complete ? "" : " (the first shown)"}:`;
    results.replaceChildren(summary, list);
  });

  poll();
})();
