//! XTEST input on the agent's one X connection, and the keymap that turns keysyms into
//! keycodes. A keysym the keymap lacks (é on a US layout, →, CJK) is mapped onto a spare
//! keycode (one with no symbols) and kept there while input flows: restoring it at once
//! races the client, which translates the keycode only when it reads the event. Spare
//! keycodes are restored when the desktop has been idle for a while.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    BUTTON_PRESS_EVENT, BUTTON_RELEASE_EVENT, ConnectionExt as _, KEY_PRESS_EVENT, KEY_RELEASE_EVENT,
    MOTION_NOTIFY_EVENT, Window,
};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use super::x11_error;
use crate::error::{OpError, OpResult};
use crate::ops::desktop::keys::{self, SHIFT};

/// How long a client gets to read events typed on a spare keycode before it is remapped.
const RECYCLE_PAUSE: Duration = Duration::from_millis(30);

/// Keysym -> keycode, from the server's core keymap, plus our spare-key assignments.
pub struct Keymap {
    /// keysym -> (keycode, needs shift)
    codes: HashMap<u32, (u8, bool)>,
    /// Keycodes with no symbols at all, free to borrow.
    free: Vec<u8>,
    /// Borrowed keycodes, least recently used first.
    borrowed: VecDeque<(u8, u32)>,
    /// Another client changed the keymap: reload before the next use.
    stale: bool,
}

impl Keymap {
    pub fn load(conn: &RustConnection) -> OpResult<Keymap> {
        let setup = conn.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let reply = conn
            .get_keyboard_mapping(min, max - min + 1)
            .map_err(|e| x11_error("GetKeyboardMapping", e))?
            .reply()
            .map_err(|e| x11_error("GetKeyboardMapping", e))?;
        let per = usize::from(reply.keysyms_per_keycode).max(1);
        let mut codes = HashMap::new();
        let mut free = Vec::new();
        for (i, syms) in reply.keysyms.chunks(per).enumerate() {
            let code = min.saturating_add(i as u8);
            if syms.iter().all(|&s| s == 0) {
                free.push(code);
                continue;
            }
            let level0 = syms.first().copied().unwrap_or(0);
            let mut level1 = syms.get(1).copied().unwrap_or(0);
            // A lone lowercase letter implies its uppercase on the shifted level.
            if level1 == 0 && (u32::from(b'a')..=u32::from(b'z')).contains(&level0) {
                level1 = level0 - 0x20;
            }
            if level0 != 0 {
                codes.entry(level0).or_insert((code, false));
            }
            if level1 != 0 {
                codes.entry(level1).or_insert((code, true));
            }
        }
        // Borrow from the top of the range first: low spare codes are often real keys that a
        // layout switch fills in.
        free.reverse();
        Ok(Keymap { codes, free, borrowed: VecDeque::new(), stale: false })
    }
}

/// The input side of the X11 screen.
pub struct Input {
    root: Window,
    keymap: Keymap,
}

impl Input {
    pub fn new(conn: &RustConnection, root: Window) -> OpResult<Input> {
        conn.xtest_get_version(2, 2).map_err(|e| x11_error("XTEST", e))?.reply().map_err(|_| {
            OpError::unsupported("the X server has no XTEST extension: input cannot be injected")
        })?;
        Ok(Input { root, keymap: Keymap::load(conn)? })
    }

    fn fake(&self, conn: &RustConnection, kind: u8, detail: u8, x: i16, y: i16) -> OpResult<()> {
        conn.xtest_fake_input(kind, detail, 0, self.root, x, y, 0)
            .map_err(|e| x11_error("XTestFakeInput", e))?;
        Ok(())
    }

    pub fn motion(&self, conn: &RustConnection, x: i32, y: i32) -> OpResult<()> {
        let clamp = |v: i32| v.clamp(i16::MIN.into(), i16::MAX.into()) as i16;
        self.fake(conn, MOTION_NOTIFY_EVENT, 0, clamp(x), clamp(y))
    }

    pub fn button(&self, conn: &RustConnection, button: u8, down: bool) -> OpResult<()> {
        let kind = if down { BUTTON_PRESS_EVENT } else { BUTTON_RELEASE_EVENT };
        self.fake(conn, kind, button, 0, 0)
    }

    /// Presses or releases the key for `keysym`, holding Shift around it when the keysym sits
    /// on the shifted level.
    pub fn key(&mut self, conn: &RustConnection, keysym: u32, down: bool) -> OpResult<()> {
        self.refresh(conn)?;
        let (code, shifted) = self.keycode(conn, keysym)?;
        let shift = match shifted {
            true => Some(self.keycode(conn, SHIFT)?.0),
            false => None,
        };
        match (down, shift) {
            (true, Some(shift)) => {
                self.fake(conn, KEY_PRESS_EVENT, shift, 0, 0)?;
                self.fake(conn, KEY_PRESS_EVENT, code, 0, 0)
            }
            (false, Some(shift)) => {
                self.fake(conn, KEY_RELEASE_EVENT, code, 0, 0)?;
                self.fake(conn, KEY_RELEASE_EVENT, shift, 0, 0)
            }
            (true, None) => self.fake(conn, KEY_PRESS_EVENT, code, 0, 0),
            (false, None) => self.fake(conn, KEY_RELEASE_EVENT, code, 0, 0),
        }
    }

    /// Types `text`: press and release per character.
    pub fn text(&mut self, conn: &RustConnection, text: &str) -> OpResult<()> {
        for c in text.chars() {
            let keysym = keys::char_keysym(c);
            self.key(conn, keysym, true)?;
            self.key(conn, keysym, false)?;
        }
        Ok(())
    }

    /// The keycode for `keysym`, borrowing a spare keycode when the keymap has none.
    fn keycode(&mut self, conn: &RustConnection, keysym: u32) -> OpResult<(u8, bool)> {
        if let Some(&found) = self.keymap.codes.get(&keysym) {
            return Ok(found);
        }
        let map = &mut self.keymap;
        if let Some(at) = map.borrowed.iter().position(|&(_, k)| k == keysym) {
            let entry = map.borrowed.remove(at).unwrap_or((0, keysym));
            map.borrowed.push_back(entry);
            return Ok((entry.0, false));
        }
        let code = match map.free.pop() {
            Some(code) => code,
            None => {
                let Some((code, _)) = map.borrowed.pop_front() else {
                    return Err(OpError::unsupported(format!(
                        "no key produces keysym {keysym:#x} and the keymap has no spare keycode to map it to"
                    )));
                };
                // Events typed on this keycode may still be unread by their client.
                x11rb::wrapper::ConnectionExt::sync(conn).map_err(|e| x11_error("sync", e))?;
                std::thread::sleep(RECYCLE_PAUSE);
                code
            }
        };
        conn.change_keyboard_mapping(1, code, 2, &[keysym, keysym])
            .map_err(|e| x11_error("ChangeKeyboardMapping", e))?;
        self.keymap.borrowed.push_back((code, keysym));
        Ok((code, false))
    }

    /// Notes a MappingNotify (the screen reads the connection's events for everyone).
    pub fn keymap_changed(&mut self) {
        self.keymap.stale = true;
    }

    /// Reloads the keymap when another client changed it (no borrowed keys outstanding, else
    /// the change was most likely ours).
    fn refresh(&mut self, conn: &RustConnection) -> OpResult<()> {
        if self.keymap.stale && self.keymap.borrowed.is_empty() {
            self.keymap = Keymap::load(conn)?;
        }
        Ok(())
    }

    /// Gives borrowed keycodes back (no symbols again).
    pub fn restore(&mut self, conn: &RustConnection) {
        while let Some((code, _)) = self.keymap.borrowed.pop_front() {
            if conn.change_keyboard_mapping(1, code, 2, &[0, 0]).is_ok() {
                self.keymap.free.push(code);
            }
        }
        let _ = conn.flush();
    }
}
