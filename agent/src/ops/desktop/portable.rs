//! The screen through xcap (capture) and enigo (input): the backend on macOS and Windows, where
//! they are the well-kept way to reach each OS's APIs. Linux builds carry it only with the
//! `portable-desktop` feature and open it only when `TETHER_DESKTOP_BACKEND=portable` asks
//! (see `backend`): on X11 the x11rb backend replaces both, because xcap opens new X
//! connections and reads the image through GetImage on every capture, and enigo remaps spare
//! keycodes for characters the keymap lacks (also for shifted ones) in a way that can race the
//! client reading them (BENCHMARKS.md has the figures). The mapping from our keysyms to enigo's
//! keys and the splitting of text are pure functions, unit-tested wherever this builds.

use enigo::{Axis, Coordinate, Direction, Enigo, Keyboard, Mouse, Settings};

use crate::error::{OpError, OpResult};
use crate::ops::desktop::keys;
use crate::ops::desktop::screen::{Backend, Button, Frame, Screen};

pub struct PortableScreen {
    monitor: xcap::Monitor,
    /// The input connection, or why the OS refused one.
    enigo: Result<Enigo, String>,
}

fn os_error(what: &str, e: impl std::fmt::Display) -> OpError {
    OpError::os(format!("{what} failed: {e}"))
}

impl PortableScreen {
    /// The primary monitor of `display` (`None` = the platform default), and an input
    /// connection when the OS grants one.
    pub fn open(display: Option<&str>) -> OpResult<PortableScreen> {
        #[cfg(target_os = "linux")]
        let display = same_display(display, std::env::var("DISPLAY").ok().as_deref())?;
        #[cfg(not(target_os = "linux"))]
        let display: Option<String> = {
            let _ = display; // one display per machine: the OS's
            None
        };
        let monitors = xcap::Monitor::all().map_err(|e| OpError::unsupported(format!("no monitors: {e}")))?;
        let monitor = monitors
            .iter()
            .find(|m| m.is_primary().unwrap_or(false))
            .or(monitors.first())
            .cloned()
            .ok_or_else(|| OpError::unsupported("no monitor to capture"))?;
        let settings = Settings { x11_display: display, ..Settings::default() };
        let enigo = Enigo::new(&settings).map_err(|e| format!("the OS refused input injection: {e}"));
        if let Err(e) = &enigo {
            tracing::warn!(error = %e, "no input on this desktop");
        }
        Ok(PortableScreen { monitor, enigo })
    }

    fn enigo(&mut self) -> OpResult<&mut Enigo> {
        self.enigo.as_mut().map_err(|e| OpError::unsupported(e.clone()))
    }
}

/// xcap connects to `$DISPLAY` by itself on every call, so this backend can serve that display
/// only: asking for another (a `--virtual-desktop`) is refused rather than capturing one
/// screen and driving another. Returns the display for enigo.
#[cfg(target_os = "linux")]
fn same_display(asked: Option<&str>, env: Option<&str>) -> OpResult<Option<String>> {
    match (asked, env) {
        (Some(asked), Some(env)) if asked == env => Ok(Some(asked.to_owned())),
        (None, Some(env)) if !env.is_empty() => Ok(Some(env.to_owned())),
        (Some(asked), _) => Err(OpError::unsupported(format!(
            "the portable backend (xcap) captures $DISPLAY only and cannot open {asked}; \
             use the x11 backend for --virtual-desktop"
        ))),
        (None, _) => Err(OpError::unsupported("no display: $DISPLAY is not set")),
    }
}

/// xcap's RGBA pixels as the [`Frame`]'s BGRA, in place.
fn rgba_to_bgra(mut pixels: Vec<u8>) -> Vec<u8> {
    pixels.chunks_exact_mut(4).for_each(|px| px.swap(0, 2));
    pixels
}

fn enigo_button(button: Button) -> enigo::Button {
    match button {
        Button::Left => enigo::Button::Left,
        Button::Middle => enigo::Button::Middle,
        Button::Right => enigo::Button::Right,
    }
}

fn direction(down: bool) -> Direction {
    if down { Direction::Press } else { Direction::Release }
}

/// The enigo key for a keysym from [`keys`], or `None` when this platform has no such key.
fn enigo_key(keysym: u32) -> Option<enigo::Key> {
    use enigo::Key;
    const F_KEYS: [Key; 20] = [
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
        Key::F13,
        Key::F14,
        Key::F15,
        Key::F16,
        Key::F17,
        Key::F18,
        Key::F19,
        Key::F20,
    ];
    Some(match keysym {
        0xff0d => Key::Return,
        0xff09 => Key::Tab,
        0xff1b => Key::Escape,
        0xff08 => Key::Backspace,
        0xffff => Key::Delete,
        #[cfg(not(target_os = "macos"))]
        0xff63 => Key::Insert,
        #[cfg(not(target_os = "macos"))]
        0xff61 => Key::PrintScr,
        0xffe5 => Key::CapsLock,
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
        f @ 0xffbe..=0xffd1 => F_KEYS[(f - 0xffbe) as usize],
        other => return keys::keysym_char(other).map(Key::Unicode).or_else(|| other_key(other)),
    })
}

/// A key with no enigo name: on X11 enigo takes the keysym itself.
#[cfg(target_os = "linux")]
fn other_key(keysym: u32) -> Option<enigo::Key> {
    Some(enigo::Key::Other(keysym))
}

/// Elsewhere `Key::Other` is a platform key code, not a keysym: better refused than wrong.
#[cfg(not(target_os = "linux"))]
fn other_key(_: u32) -> Option<enigo::Key> {
    None
}

/// A piece of text to type: characters enigo types as text, or a control character that is a
/// key press (newline is Return, as in the X11 backend).
#[derive(Debug, PartialEq, Eq)]
enum Run<'a> {
    Text(&'a str),
    Key(u32),
}

/// Splits `text` at the control characters [`keys::char_keysym`] maps to keys.
fn runs(text: &str) -> Vec<Run<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if c.is_control() {
            if start < at {
                out.push(Run::Text(&text[start..at]));
            }
            out.push(Run::Key(keys::char_keysym(c)));
            start = at + c.len_utf8();
        }
    }
    if start < text.len() {
        out.push(Run::Text(&text[start..]));
    }
    out
}

impl PortableScreen {
    fn press(&mut self, keysym: u32, direction: Direction) -> OpResult<()> {
        let key = enigo_key(keysym).ok_or_else(|| {
            OpError::unsupported(format!("key {keysym:#x} has no equivalent on this platform"))
        })?;
        self.enigo()?.key(key, direction).map_err(|e| os_error("pressing a key", e))
    }
}

impl Screen for PortableScreen {
    fn backend(&self) -> Backend {
        "xcap"
    }

    fn can_inject(&self) -> bool {
        self.enigo.is_ok()
    }

    fn size(&mut self) -> OpResult<(u32, u32)> {
        let w = self.monitor.width().map_err(|e| os_error("reading the monitor size", e))?;
        let h = self.monitor.height().map_err(|e| os_error("reading the monitor size", e))?;
        Ok((w, h))
    }

    /// xcap cannot draw the pointer in: `cursor` is ignored here.
    fn capture(&mut self, _cursor: bool) -> OpResult<Frame> {
        let image = self.monitor.capture_image().map_err(|e| os_error("capturing the screen", e))?;
        let (width, height) = image.dimensions();
        Ok(Frame { width, height, bgra: rgba_to_bgra(image.into_raw()) })
    }

    fn pointer_move(&mut self, x: i32, y: i32) -> OpResult<()> {
        self.enigo()?.move_mouse(x, y, Coordinate::Abs).map_err(|e| os_error("moving the pointer", e))
    }

    fn button(&mut self, button: Button, down: bool) -> OpResult<()> {
        self.enigo()?
            .button(enigo_button(button), direction(down))
            .map_err(|e| os_error("pressing a button", e))
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
        self.press(keysym, direction(down))
    }

    fn text(&mut self, text: &str) -> OpResult<()> {
        for run in runs(text) {
            match run {
                Run::Text(text) => self.enigo()?.text(text).map_err(|e| os_error("typing", e))?,
                Run::Key(keysym) => self.press(keysym, Direction::Click)?,
            }
        }
        Ok(())
    }

    /// enigo waits for the display server after every event on X11; elsewhere the OS queues
    /// the events in order.
    fn sync(&mut self) -> OpResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use enigo::Key;

    use super::*;

    #[test]
    fn named_keys_map_to_enigo_keys() {
        for (name, key) in [
            ("Enter", Key::Return),
            ("Tab", Key::Tab),
            ("Escape", Key::Escape),
            ("Backspace", Key::Backspace),
            ("Delete", Key::Delete),
            ("Home", Key::Home),
            ("End", Key::End),
            ("PageUp", Key::PageUp),
            ("PageDown", Key::PageDown),
            ("Left", Key::LeftArrow),
            ("Up", Key::UpArrow),
            ("Right", Key::RightArrow),
            ("Down", Key::DownArrow),
            ("space", Key::Space),
            ("capslock", Key::CapsLock),
            ("shift", Key::Shift),
            ("ctrl", Key::Control),
            ("alt", Key::Alt),
            ("super", Key::Meta),
            ("F1", Key::F1),
            ("F12", Key::F12),
            ("F20", Key::F20),
        ] {
            let keysym = keys::named_key(name).expect("a known name");
            assert_eq!(enigo_key(keysym), Some(key), "{name}");
        }
    }

    #[test]
    fn characters_are_typed_as_unicode() {
        for c in ['a', 'Z', '~', '{', 'é', 'ß', '→', '中'] {
            assert_eq!(enigo_key(keys::char_keysym(c)), Some(Key::Unicode(c)), "{c:?}");
        }
    }

    #[test]
    fn every_chord_of_the_protocol_has_a_key() {
        for chord in ["ctrl+c", "shift+Tab", "ctrl+alt+t", "super+l", "ctrl++", "alt+F4", "ctrl+é"] {
            let chord = keys::parse_chord(chord).expect("a valid chord");
            for keysym in chord.keysyms() {
                assert!(enigo_key(keysym).is_some(), "{keysym:#x} in {chord:?}");
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn other_keys_go_to_x11_as_keysyms() {
        for name in ["F24", "menu"] {
            let keysym = keys::named_key(name).expect("a known name");
            assert_eq!(enigo_key(keysym), Some(Key::Other(keysym)), "{name}");
        }
        assert_eq!(enigo_key(0xff63), Some(Key::Insert));
        assert_eq!(enigo_key(0xff61), Some(Key::PrintScr));
    }

    #[test]
    fn text_splits_at_control_characters() {
        assert_eq!(runs("héllo"), vec![Run::Text("héllo")]);
        assert_eq!(
            runs("a\nb\tc→\n"),
            vec![
                Run::Text("a"),
                Run::Key(0xff0d),
                Run::Text("b"),
                Run::Key(0xff09),
                Run::Text("c→"),
                Run::Key(0xff0d)
            ]
        );
        assert_eq!(runs(""), vec![]);
        assert_eq!(runs("\u{8}\u{1b}"), vec![Run::Key(0xff08), Run::Key(0xff1b)]);
    }

    #[test]
    fn pixels_are_reordered_to_bgra() {
        assert_eq!(rgba_to_bgra(vec![1, 2, 3, 4, 5, 6, 7, 8]), vec![3, 2, 1, 4, 7, 6, 5, 8]);
        assert_eq!(rgba_to_bgra(Vec::new()), Vec::<u8>::new());
    }

    #[test]
    fn buttons_and_directions_map() {
        assert_eq!(enigo_button(Button::Left), enigo::Button::Left);
        assert_eq!(enigo_button(Button::Middle), enigo::Button::Middle);
        assert_eq!(enigo_button(Button::Right), enigo::Button::Right);
        assert_eq!(direction(true), Direction::Press);
        assert_eq!(direction(false), Direction::Release);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_the_display_xcap_reads_is_served() {
        assert_eq!(same_display(Some(":5"), Some(":5")).expect("same"), Some(":5".into()));
        assert_eq!(same_display(None, Some(":7")).expect("env"), Some(":7".into()));
        let other = same_display(Some(":99"), Some(":5")).expect_err("another display");
        assert!(other.message.contains(":99"), "{}", other.message);
        assert!(same_display(Some(":99"), None).is_err());
        assert!(same_display(None, None).is_err());
        assert!(same_display(None, Some("")).is_err());
    }
}
