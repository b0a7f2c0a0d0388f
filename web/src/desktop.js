// The desktop view: frames are drawn on a canvas of the screen's size (CSS scales it to the
// window). A frame is either a whole JPEG or PNG image, or (on a channel opened with the TILES
// encoding) a tile frame: changed rectangles to draw over the picture so far, told apart by
// their "TTI1" magic (proto/src/tiles.rs has the layout). Frames are drawn strictly in order;
// while one decodes, the next wait, except that a whole image makes every frame waiting before
// it stale, so it replaces them. With a token that may drive the desktop, pointer, wheel and
// keys on the canvas become DesktopInput in the image's pixel space (the agent maps it to the
// screen); without, nothing is sent and the page says "view only".

import { BUTTON, POINTER, encodeKey, encodePointer, encodeScroll } from "./wire.js";

/** Pixels of wheel travel per notch (deltaMode 0); lines count one notch each. */
const PIXELS_PER_NOTCH = 100;
const MAX_NOTCHES = 50;
const TILES_MAGIC = [0x54, 0x54, 0x49, 0x31];
const RECT_TYPES = ["image/jpeg", "image/png"];

/** Whether `bytes` is a tile frame rather than a whole image. */
export function isTiles(bytes) {
  return bytes.length >= 4 && TILES_MAGIC.every((b, i) => bytes[i] === b);
}

/** A tile frame's screen size and rectangles ({x, y, width, height, type, image}). */
export function parseTiles(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 10) throw new Error("truncated tile frame");
  const frame = { width: view.getUint16(4), height: view.getUint16(6), rects: [] };
  let at = 10;
  for (let i = view.getUint16(8); i > 0; i -= 1) {
    if (at + 13 > bytes.length) throw new Error("truncated tile frame");
    const len = view.getUint32(at + 9);
    if (at + 13 + len > bytes.length) throw new Error("truncated tile frame");
    frame.rects.push({
      x: view.getUint16(at),
      y: view.getUint16(at + 2),
      width: view.getUint16(at + 4),
      height: view.getUint16(at + 6),
      type: RECT_TYPES[bytes[at + 8]] || "application/octet-stream",
      image: bytes.subarray(at + 13, at + 13 + len),
    });
    at += 13 + len;
  }
  return frame;
}

export function startDesktop(root, link, canControl) {
  const canvas = document.createElement("canvas");
  canvas.className = "desktop";
  canvas.tabIndex = 0;
  root.append(canvas);
  const ctx = canvas.getContext("2d");
  const stats = { frames: 0, tileFrames: 0, width: 0, height: 0 };
  let drawing = false;
  const queue = [];

  async function whole(bytes) {
    const image = await createImageBitmap(new Blob([bytes]));
    if (canvas.width !== image.width || canvas.height !== image.height) {
      canvas.width = image.width;
      canvas.height = image.height;
    }
    ctx.drawImage(image, 0, 0);
    image.close();
  }

  async function tiles(bytes) {
    const frame = parseTiles(bytes);
    // Deltas of another size than the picture (none drawn yet) have nothing to update.
    if (frame.width !== canvas.width || frame.height !== canvas.height) return;
    const images = await Promise.all(
      frame.rects.map((r) => createImageBitmap(new Blob([r.image], { type: r.type }))),
    );
    frame.rects.forEach((r, i) => {
      ctx.drawImage(images[i], r.x, r.y);
      images[i].close();
    });
    stats.tileFrames += 1;
  }

  async function drain() {
    drawing = true;
    while (queue.length > 0) {
      const bytes = queue.shift();
      try {
        await (isTiles(bytes) ? tiles(bytes) : whole(bytes));
        stats.frames += 1;
        stats.width = canvas.width;
        stats.height = canvas.height;
      } catch {
        // A frame that does not decode is skipped; the next whole one repairs the picture.
      }
    }
    drawing = false;
  }

  if (canControl) listen(canvas, link);
  return {
    data: (bytes) => {
      if (!isTiles(bytes)) queue.length = 0;
      queue.push(bytes);
      if (!drawing) drain();
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
