// ANSI escape sequences in log text -> styled segments. Pure: no DOM, no globals but the
// one it defines. SGR colours 30-37 and 90-97, bold (1; 22 ends it), default colour (39)
// and reset (0 or none) are kept as styles; every other escape sequence is dropped. A
// sequence cut off at the end of a chunk is kept in the state and finished by the next one.
//   let state = cifleetAnsi.fresh();
//   const out = cifleetAnsi.segments(text, state);   // {segments: [{text, fg, bold}], state}
(function () {
  "use strict";
  const ESC = "\x1b";
  // An unfinished sequence longer than this is not one: its ESC is dropped, the rest shown.
  const MAX_PENDING = 256;

  function fresh() {
    return { fg: null, bold: false, pending: "" };
  }

  function inRange(ch, low, high) {
    return ch !== undefined && ch >= low && ch <= high;
  }

  // Index just after the escape sequence starting at `at` (text[at] is ESC), or -1 when
  // the text ends before the sequence does.
  function sequenceEnd(text, at) {
    const kind = text[at + 1];
    if (kind === undefined) return -1;
    if (kind === "[") { // CSI: parameters, intermediates, one final byte
      let i = at + 2;
      while (inRange(text[i], "\x30", "\x3f")) i++;
      while (inRange(text[i], "\x20", "\x2f")) i++;
      if (i >= text.length) return -1;
      return inRange(text[i], "\x40", "\x7e") ? i + 1 : i; // malformed: drop what came before
    }
    if ("]PX^_".includes(kind)) { // OSC and other strings: end at BEL or ESC \
      for (let i = at + 2; i < text.length; i++) {
        if (text[i] === "\x07") return i + 1;
        if (text[i] === ESC) return i + 1 >= text.length ? -1 : i + 2;
      }
      return -1;
    }
    if (inRange(kind, "\x20", "\x2f")) { // nF: intermediates, then a final byte
      let i = at + 1;
      while (inRange(text[i], "\x20", "\x2f")) i++;
      return i >= text.length ? -1 : i + 1;
    }
    if (inRange(kind, "\x30", "\x7e")) return at + 2; // a two-character sequence
    return at + 1; // a lone ESC
  }

  function applySgr(params, style) {
    const codes = params === "" ? [0] : params.split(";").map((p) => (p === "" ? 0 : Number(p)));
    for (let k = 0; k < codes.length; k++) {
      const code = codes[k];
      if (code === 0) { style.fg = null; style.bold = false; }
      else if (code === 1) style.bold = true;
      else if (code === 22) style.bold = false;
      else if (code === 39) style.fg = null;
      else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) style.fg = code;
      else if (code === 38 || code === 48 || code === 58) {
        // 256 colours (5;n) or RGB (2;r;g;b), not shown: skip their arguments so that none
        // is taken for a code of its own.
        k += codes[k + 1] === 5 ? 2 : codes[k + 1] === 2 ? 4 : 0;
      }
    }
  }

  function segments(text, state) {
    const input = state.pending + text;
    const style = { fg: state.fg, bold: state.bold };
    const out = [];
    let plain = "";
    const flush = () => {
      const last = out[out.length - 1];
      if (!plain) return;
      if (last && last.fg === style.fg && last.bold === style.bold) last.text += plain;
      else out.push({ text: plain, fg: style.fg, bold: style.bold });
      plain = "";
    };
    let i = 0;
    while (i < input.length) {
      const esc = input.indexOf(ESC, i);
      if (esc < 0) { plain += input.slice(i); break; }
      plain += input.slice(i, esc);
      const end = sequenceEnd(input, esc);
      if (end < 0) {
        if (input.length - esc <= MAX_PENDING) {
          flush();
          return { segments: out, state: { fg: style.fg, bold: style.bold, pending: input.slice(esc) } };
        }
        i = esc + 1;
        continue;
      }
      const sequence = input.slice(esc, end);
      if (/^\x1b\[[0-9;]*m$/.test(sequence)) {
        flush();
        applySgr(sequence.slice(2, -1), style);
      }
      i = end;
    }
    flush();
    return { segments: out, state: { fg: style.fg, bold: style.bold, pending: "" } };
  }

  // CSS classes of a segment: "ansi-fg-31 ansi-bold", or "" for plain text.
  function classes(segment) {
    const names = [];
    if (segment.fg !== null) names.push(`ansi-fg-${segment.fg}`);
    if (segment.bold) names.push("ansi-bold");
    return names.join(" ");
  }

  window.cifleetAnsi = { fresh, segments, classes };
})();
