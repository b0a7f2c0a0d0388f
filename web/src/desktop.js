// The desktop view: each frame is a whole JPEG or PNG image, drawn on a canvas of the image's
// size (CSS scales it to the window). While one frame decodes, newer ones replace the waiting
// one: only the newest is worth drawing. With a token that may drive the desktop, pointer,
// wheel and keys on the canvas become DesktopInput in the image's pixel space (the agent maps
// it to the screen); without, nothing is sent and the page says "view only".

import { BUTTON, POINTER, encodeKey, encodePointer, encodeScroll } from "./wire.js";

/** Pixels of wheel travel per notch (deltaMode 0); lines count one notch each. */
const PIXELS_PER_NOTCH = 100;
const MAX_NOTCHES = 50;

export function startDesktop(root, link, canControl) {
  const canvas = document.createElement("canvas");
  canvas.className = "desktop";
  canvas.tabIndex = 0;
  root.append(canvas);
  const ctx = canvas.getContext("2d");
  const stats = { frames: 0, width: 0, height: 0 };
  let decoding = false;
  let waiting = null;

  async function draw(bytes) {
    decoding = true;
    try {
      const image = await createImageBitmap(new Blob([bytes]));
      if (canvas.width !== image.width || canvas.height !== image.height) {
        canvas.width = image.width;
        canvas.height = image.height;
      }
      ctx.drawImage(image, 0, 0);
      image.close();
      stats.frames += 1;
      stats.width = canvas.width;
      stats.height = canvas.height;
    } catch {
      // A frame that does not decode is skipped; the next one is whole again.
    }
    decoding = false;
    if (waiting) {
      const next = waiting;
      waiting = null;
      draw(next);
    }
  }

  if (canControl) listen(canvas, link);
  return {
    data: (bytes) => {
      if (decoding) waiting = bytes;
      else draw(bytes);
    },
    live: () => {},
    inspect: () => ({ ...stats }),
  };
}

/** Pointer, wheel and key listeners that send DesktopInput. */
function listen(canvas, link) {
  const id = link.channel.channel;
  const at = (e) => {
    const box = canvas.getBoundingClientRect();
    const x = Math.round(((e.clientX - box.left) / box.width) * canvas.width);
    const y = Math.round(((e.clientY - box.top) / box.height) * canvas.height);
    return {
      x: Math.max(0, Math.min(canvas.width - 1, x)),
      y: Math.max(0, Math.min(canvas.height - 1, y)),
      width: canvas.width,
      height: canvas.height,
    };
  };
  const button = (e) => [BUTTON.LEFT, BUTTON.MIDDLE, BUTTON.RIGHT][e.button] || BUTTON.LEFT;
  // Moves are sent at most once per animation frame.
  let move = null;
  canvas.addEventListener("pointermove", (e) => {
    if (!canvas.width) return;
    if (!move) requestAnimationFrame(() => {
      link.sendNow(encodePointer(id, { ...move, action: POINTER.MOVE }));
      move = null;
    });
    move = at(e);
  });
  canvas.addEventListener("pointerdown", (e) => {
    if (!canvas.width) return;
    canvas.focus();
    canvas.setPointerCapture(e.pointerId);
    link.sendNow(encodePointer(id, { ...at(e), action: POINTER.DOWN, button: button(e) }));
    e.preventDefault();
  });
  canvas.addEventListener("pointerup", (e) => {
    if (!canvas.width) return;
    link.sendNow(encodePointer(id, { ...at(e), action: POINTER.UP, button: button(e) }));
    e.preventDefault();
  });
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  let travel = { x: 0, y: 0 };
  canvas.addEventListener(
    "wheel",
    (e) => {
      e.preventDefault();
      if (!canvas.width) return;
      const unit = e.deltaMode === 0 ? PIXELS_PER_NOTCH : 1;
      travel = { x: travel.x + e.deltaX / unit, y: travel.y + e.deltaY / unit };
      const clamp = (v) => Math.max(-MAX_NOTCHES, Math.min(MAX_NOTCHES, Math.trunc(v)));
      const dx = clamp(travel.x);
      const dy = clamp(travel.y);
      if (dx === 0 && dy === 0) return;
      travel = { x: travel.x - dx, y: travel.y - dy };
      link.sendNow(encodeScroll(id, { ...at(e), dx, dy }));
    },
    { passive: false },
  );
  canvas.addEventListener("keydown", (e) => {
    const key = chord(e);
    if (!key) return;
    e.preventDefault();
    link.sendNow(encodeKey(id, key.name, key.text));
  });
}

const MODIFIER_KEYS = new Set(["Control", "Shift", "Alt", "Meta", "AltGraph", "CapsLock", "Dead", "Unidentified"]);

/**
 * The agent's name for a key press: a printable character without ctrl/alt/meta is text (so
 * any layout types what it shows); anything else is a chord such as "ctrl+c" or "shift+Tab",
 * whose key names ("Enter", "ArrowLeft", "F5") the agent shares with KeyboardEvent.key.
 */
export function chord(e) {
  if (MODIFIER_KEYS.has(e.key)) return null;
  const printable = [...e.key].length === 1;
  if (printable && !e.ctrlKey && !e.altKey && !e.metaKey) return { name: e.key, text: true };
  const mods = [];
  if (e.ctrlKey) mods.push("ctrl");
  if (e.altKey) mods.push("alt");
  if (e.metaKey) mods.push("super");
  if (e.shiftKey && !printable) mods.push("shift");
  const name = e.key === " " ? "space" : printable ? e.key.toLowerCase() : e.key;
  return { name: [...mods, name].join("+"), text: false };
}
