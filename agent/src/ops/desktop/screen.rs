//! The small platform trait every desktop op goes through: capture a frame, inject input, say
//! how big the screen is. X11 implements it with x11rb (MIT-SHM capture, XTEST input); other
//! platforms with xcap and enigo. Keys travel as X keysyms, the one naming every platform
//! can map from, so the chord parser and the ops stay platform-neutral.

use crate::error::OpResult;

/// One captured screen: BGRA (X's ZPixmap byte order on little-endian), `width * 4` bytes per
/// row, alpha undefined (X leaves it 0): encoders and the resizer must ignore it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub bgra: Vec<u8>,
}

/// A pointer button, as X numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Button {
    Left,
    Middle,
    Right,
}

/// What a capture backend is, for Hello and logs.
pub type Backend = &'static str;

/// A screen that can be captured and driven. Methods block; the desktop thread owns the one
/// instance, so input is serialised through one connection.
pub trait Screen: Send {
    /// The name of the capture path in use ("x11-shm", "x11-getimage", "xcap").
    fn backend(&self) -> Backend;
    /// Whether input can be injected at all (consent aside).
    fn can_inject(&self) -> bool;
    /// The current size in pixels.
    fn size(&mut self) -> OpResult<(u32, u32)>;
    /// Captures the whole screen; with `cursor`, the pointer is drawn into the image.
    fn capture(&mut self, cursor: bool) -> OpResult<Frame>;
    /// Moves the pointer to native pixel `(x, y)`.
    fn pointer_move(&mut self, x: i32, y: i32) -> OpResult<()>;
    fn button(&mut self, button: Button, down: bool) -> OpResult<()>;
    /// Scrolls by whole wheel notches: positive `dy` scrolls down, positive `dx` right.
    fn scroll(&mut self, dx: i32, dy: i32) -> OpResult<()>;
    /// Presses or releases the key that produces `keysym` (adding Shift when the keymap has it
    /// only on the shifted level; a keysym the keymap lacks is mapped onto a spare key).
    fn key(&mut self, keysym: u32, down: bool) -> OpResult<()>;
    /// Types `text`, any Unicode the platform can produce.
    fn text(&mut self, text: &str) -> OpResult<()>;
    /// Returns once the input sent so far has been processed by the display server.
    fn sync(&mut self) -> OpResult<()>;
    /// Whether anything may have been drawn on the screen since the last call (the first call
    /// says yes). `None` when the backend cannot tell: the caller then captures and compares.
    /// A yes also starts the next watch, so a change made after the call is seen by the next.
    fn drawn_since_last_asked(&mut self) -> Option<bool> {
        None
    }
    /// Called when no request came for a while (X11 restores spare keys it remapped).
    fn idle(&mut self) {}
}
