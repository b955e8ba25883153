// ANSI escape sequences in log text -> styled segments. Pure: no DOM, no globals but the
// one it defines. SGR colours 30-37 and 90-97 (background 40-47, 100-107), 256 colours and
// RGB (38/48;5;N and 38/48;2;R;G;B, as "#rrggbb"), bold (1; 22 ends it), underline (4; 24
// ends it), default colours (39, 49) and reset (0 or none) are kept as styles; every other
// escape sequence is dropped. A sequence cut off at the end of a chunk is kept in the state
// and finished by the next one.
//   let state = cifleetAnsi.fresh();
//   const out = cifleetAnsi.segments(text, state); // {segments: [{text, fg, bg, bold, underline}], state}
(function () {
  "use strict";
  const ESC = "\x1b";
  // An unfinished sequence longer than this is not one: its ESC is dropped, the rest shown.
  const MAX_PENDING = 256;

  function fresh() {
    return { fg: null, bg: null, bold: false, underline: false, pending: "" };
  }

  const CUBE = [0, 95, 135, 175, 215, 255];
  const hex = (r, g, b) => "#" + [r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("");

  // Colour N of the 256: the first 16 as the theme's codes (base + N, bright + N - 8), the
  // rest as "#rrggbb" (the 6x6x6 cube, then 24 greys).
  function colour256(n, base, bright) {
    if (n < 8) return base + n;
    if (n < 16) return bright + n - 8;
    if (n < 232) {
      const c = n - 16;
      return hex(CUBE[Math.floor(c / 36)], CUBE[Math.floor(c / 6) % 6], CUBE[c % 6]);
    }
    const grey = 8 + 10 * (n - 232);
    return hex(grey, grey, grey);
  }

  // The colour of 38/48's arguments at codes[k + 1...], and how many arguments it took.
  function extendedColour(codes, k, base, bright) {
    if (codes[k + 1] === 5) {
      const n = codes[k + 2];
      return [Number.isInteger(n) && n >= 0 && n <= 255 ? colour256(n, base, bright) : undefined, 2];
    }
    if (codes[k + 1] === 2) {
      const rgb = codes.slice(k + 2, k + 5);
      const ok = rgb.length === 3 && rgb.every((v) => Number.isInteger(v) && v >= 0 && v <= 255);
      return [ok ? hex(...rgb) : undefined, 4];
    }
    return [undefined, 0];
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
      if (code === 0) { style.fg = null; style.bg = null; style.bold = false; style.underline = false; }
      else if (code === 1) style.bold = true;
      else if (code === 22) style.bold = false;
      else if (code === 4) style.underline = true;
      else if (code === 24) style.underline = false;
      else if (code === 39) style.fg = null;
      else if (code === 49) style.bg = null;
      else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) style.fg = code;
      else if ((code >= 40 && code <= 47) || (code >= 100 && code <= 107)) style.bg = code;
      else if (code === 38 || code === 48) {
        const [colour, used] = code === 38
          ? extendedColour(codes, k, 30, 90) : extendedColour(codes, k, 40, 100);
        if (colour !== undefined) style[code === 38 ? "fg" : "bg"] = colour;
        k += used; // its arguments are no codes of their own
      } else if (code === 58) {
        k += extendedColour(codes, k, 0, 0)[1]; // underline colour: not shown
      }
    }
  }

  const same = (a, b) => a.fg === b.fg && a.bg === b.bg && a.bold === b.bold && a.underline === b.underline;
  const styleOf = (s) => ({ fg: s.fg, bg: s.bg, bold: s.bold, underline: s.underline });

  function segments(text, state) {
    const input = state.pending + text;
    const style = styleOf(state);
    const out = [];
    let plain = "";
    const flush = () => {
      const last = out[out.length - 1];
      if (!plain) return;
      if (last && same(last, style)) last.text += plain;
      else out.push({ text: plain, ...styleOf(style) });
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
          return { segments: out, state: { ...styleOf(style), pending: input.slice(esc) } };
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
    return { segments: out, state: { ...styleOf(style), pending: "" } };
  }

  // CSS classes of a segment: "ansi-fg-31 ansi-bg-44 ansi-bold ansi-underline", or "" for
  // plain text. A colour of the 256 or RGB is no class: colours(segment) has it.
  function classes(segment) {
    const names = [];
    if (typeof segment.fg === "number") names.push(`ansi-fg-${segment.fg}`);
    if (typeof segment.bg === "number") names.push(`ansi-bg-${segment.bg}`);
    if (segment.bold) names.push("ansi-bold");
    if (segment.underline) names.push("ansi-underline");
    return names.join(" ");
  }

  // {color, backgroundColor} of a segment's "#rrggbb" colours ({} when it has none): set
  // through the element's style object, which the Content-Security-Policy allows.
  function colours(segment) {
    const out = {};
    if (typeof segment.fg === "string") out.color = segment.fg;
    if (typeof segment.bg === "string") out.backgroundColor = segment.bg;
    return out;
  }

  window.cifleetAnsi = { fresh, segments, classes, colours };
})();
