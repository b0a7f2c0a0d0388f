// The terminal view: xterm.js fitted to the window. Keys and pastes (xterm turns both into
// input, bracketed when the remote program asked for it) go to the PTY as input frames; a new
// size goes as PtyResize, and again after every reconnect (a restarted relay forgot it).

import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";

const utf8 = new TextEncoder();
const SCROLLBACK_LINES = 10000;

export function startTerminal(root, link) {
  const term = new Terminal({ scrollback: SCROLLBACK_LINES, cursorBlink: true, allowProposedApi: false });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(root);
  fit.fit();
  term.onData((text) => link.sendInput(utf8.encode(text)));
  // Mouse reports in the X10 encoding arrive as a "binary" string of bytes.
  term.onBinary((text) => link.sendInput(Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(({ cols, rows }) => link.sendResize(cols, rows));
  new ResizeObserver(() => fit.fit()).observe(root);
  term.focus();
  return {
    data: (bytes) => term.write(bytes),
    live: () => link.sendResize(term.cols, term.rows),
    inspect: () => ({ cols: term.cols, rows: term.rows, text: bufferText(term) }),
  };
}

/** Every line of the terminal, scrollback included, as text. */
function bufferText(term) {
  const buffer = term.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) {
    const line = buffer.getLine(i);
    if (!line) continue;
    const text = line.translateToString(true);
    if (line.isWrapped && lines.length) lines[lines.length - 1] += text;
    else lines.push(text);
  }
  return lines.join("\n");
}
