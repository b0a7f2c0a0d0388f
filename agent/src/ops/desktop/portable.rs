//! The screen on macOS and Windows: xcap captures, enigo injects. On X11 the x11rb backend
//! replaces both (xcap is about 70 times slower there, and enigo's key remapping races the
//! client and drops characters); here they are the well-kept way to reach each OS's APIs.

use enigo::{Axis, Coordinate, Direction, Enigo, Keyboard, Mouse, Settings};

use crate::error::{OpError, OpResult};
use crate::ops::desktop::keys;
use crate::ops::desktop::screen::{Backend, Button, Frame, Screen};

pub struct PortableScreen {
    monitor: xcap::Monitor,
    enigo: Option<Enigo>,
}

fn os_error(what: &str, e: impl std::fmt::Display) -> OpError {
    OpError::os(format!("{what} failed: {e}"))
}

impl PortableScreen {
    /// The primary monitor, and an input connection when the OS grants one.
    pub fn open() -> OpResult<PortableScreen> {
        let monitors = xcap::Monitor::all().map_err(|e| OpError::unsupported(format!("no monitors: {e}")))?;
        let monitor = monitors
            .iter()
            .find(|m| m.is_primary().unwrap_or(false))
            .or(monitors.first())
            .cloned()
            .ok_or_else(|| OpError::unsupported("no monitor to capture"))?;
        let enigo = Enigo::new(&Settings::default()).ok();
        Ok(PortableScreen { monitor, enigo })
    }

    fn enigo(&mut self) -> OpResult<&mut Enigo> {
        self.enigo.as_mut().ok_or_else(|| OpError::unsupported("the OS refused input injection"))
    }
}

/// The enigo key for a keysym from [`keys`].
fn enigo_key(keysym: u32) -> enigo::Key {
    use enigo::Key;
    match keysym {
        0xff0d => Key::Return,
        0xff09 => Key::Tab,
        0xff1b => Key::Escape,
        0xff08 => Key::Backspace,
        0xffff => Key::Delete,
        0xff50 => Key::Home,
        0xff57 => Key::End,
        0xff55 => Key::PageUp,
        0xff56 => Key::PageDown,
        0xff51 => Key::LeftArrow,
        0xff52 => Key::UpArrow,
        0xff53 => Key::RightArrow,
        0xff54 => Key::DownArrow,
        0x20 => Key::Space,
        keys::SHIFT => Key::Shift,
        keys::CONTROL => Key::Control,
        keys::ALT => Key::Alt,
        keys::SUPER => Key::Meta,
        0xffbe..=0xffc9 => [
            Key::F1,
            Key::F2,
            Key::F3,
            Key::F4,
            Key::F5,
            Key::F6,
            Key::F7,
            Key::F8,
            Key::F9,
            Key::F10,
            Key::F11,
            Key::F12,
        ][(keysym - 0xffbe) as usize],
        other => keys::keysym_char(other).map(Key::Unicode).unwrap_or(Key::Other(other)),
    }
}

impl Screen for PortableScreen {
    fn backend(&self) -> Backend {
        "xcap"
    }

    fn can_inject(&self) -> bool {
        self.enigo.is_some()
    }

    fn size(&mut self) -> OpResult<(u32, u32)> {
        let w = self.monitor.width().map_err(|e| os_error("reading the monitor size", e))?;
        let h = self.monitor.height().map_err(|e| os_error("reading the monitor size", e))?;
        Ok((w, h))
    }

    fn capture(&mut self, _cursor: bool) -> OpResult<Frame> {
        let image = self.monitor.capture_image().map_err(|e| os_error("capturing the screen", e))?;
        let (width, height) = image.dimensions();
        let mut bgra = image.into_raw();
        bgra.chunks_exact_mut(4).for_each(|px| px.swap(0, 2));
        Ok(Frame { width, height, bgra })
    }

    fn pointer_move(&mut self, x: i32, y: i32) -> OpResult<()> {
        self.enigo()?.move_mouse(x, y, Coordinate::Abs).map_err(|e| os_error("moving the pointer", e))
    }

    fn button(&mut self, button: Button, down: bool) -> OpResult<()> {
        let button = match button {
            Button::Left => enigo::Button::Left,
            Button::Middle => enigo::Button::Middle,
            Button::Right => enigo::Button::Right,
        };
        let direction = if down { Direction::Press } else { Direction::Release };
        self.enigo()?.button(button, direction).map_err(|e| os_error("pressing a button", e))
    }

    fn scroll(&mut self, dx: i32, dy: i32) -> OpResult<()> {
        let enigo = self.enigo()?;
        if dy != 0 {
            enigo.scroll(dy, Axis::Vertical).map_err(|e| os_error("scrolling", e))?;
        }
        if dx != 0 {
            enigo.scroll(dx, Axis::Horizontal).map_err(|e| os_error("scrolling", e))?;
        }
        Ok(())
    }

    fn key(&mut self, keysym: u32, down: bool) -> OpResult<()> {
        let direction = if down { Direction::Press } else { Direction::Release };
        self.enigo()?.key(enigo_key(keysym), direction).map_err(|e| os_error("pressing a key", e))
    }

    fn text(&mut self, text: &str) -> OpResult<()> {
        self.enigo()?.text(text).map_err(|e| os_error("typing", e))
    }

    fn sync(&mut self) -> OpResult<()> {
        Ok(())
    }
}
