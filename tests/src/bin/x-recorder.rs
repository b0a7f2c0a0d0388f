//! A tiny X client for desktop tests: maps a window at the given place, takes the input focus,
//! and prints every key and button event it receives, one line each, translating keys with its
//! own copy of the keymap (refreshed on MappingNotify), so the agent's input path is checked
//! by something other than itself. A left click toggles the window between grey and green (an
//! effect a screenshot can show).
//!
//! Usage: x-recorder X Y WIDTH HEIGHT  (display from $DISPLAY). Prints `ready`, then
//! `button N X Y`, `release N X Y`, `key KEYSYM STATE` and `char C` lines.

use std::io::Write;

use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::*;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

const GREY: u32 = 0x808080;
const GREEN: u32 = 0x00ff00;

struct Keymap {
    min: u8,
    per: usize,
    syms: Vec<u32>,
}

impl Keymap {
    fn load(conn: &RustConnection) -> Keymap {
        let (min, max) = (conn.setup().min_keycode, conn.setup().max_keycode);
        let reply =
            conn.get_keyboard_mapping(min, max - min + 1).expect("x11 request").reply().expect("x11 request");
        Keymap { min, per: reply.keysyms_per_keycode.into(), syms: reply.keysyms }
    }

    fn keysym(&self, code: u8, shifted: bool) -> u32 {
        let at = (code - self.min) as usize * self.per;
        let row = &self.syms[at..at + self.per];
        let plain = row[0];
        let shifted_sym = row.get(1).copied().unwrap_or(0);
        match shifted {
            true if shifted_sym != 0 => shifted_sym,
            true if (0x61..=0x7a).contains(&plain) => plain - 0x20,
            _ => plain,
        }
    }
}

fn text_of(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        k if k >> 24 == 1 => char::from_u32(k & 0xffffff),
        _ => None,
    }
}

fn main() {
    let args: Vec<i32> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let [x, y, w, h] = args[..] else { panic!("usage: x-recorder X Y WIDTH HEIGHT") };
    let (conn, screen) = RustConnection::connect(None).expect("connect");
    let root = conn.setup().roots[screen].root;
    let win = conn.generate_id().expect("x11 request");
    let mask = EventMask::KEY_PRESS
        | EventMask::BUTTON_PRESS
        | EventMask::BUTTON_RELEASE
        | EventMask::EXPOSURE
        | EventMask::STRUCTURE_NOTIFY;
    let attrs = CreateWindowAux::new().background_pixel(GREY).event_mask(mask).override_redirect(1);
    conn.create_window(
        0,
        win,
        root,
        x as i16,
        y as i16,
        w as u16,
        h as u16,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &attrs,
    )
    .expect("x11 request");
    conn.map_window(win).expect("x11 request");
    conn.flush().expect("x11 request");
    let mut keymap = Keymap::load(&conn);
    let mut out = std::io::stdout();
    let mut ready = false;
    let mut green = false;
    loop {
        let event = match conn.wait_for_event() {
            Ok(event) => event,
            Err(_) => return,
        };
        let line = match event {
            Event::Expose(_) | Event::MapNotify(_) if !ready => {
                ready = true;
                conn.set_input_focus(InputFocus::POINTER_ROOT, win, x11rb::CURRENT_TIME)
                    .expect("x11 request");
                conn.sync().expect("x11 request");
                format!("ready {win}")
            }
            Event::MappingNotify(_) => {
                keymap = Keymap::load(&conn);
                continue;
            }
            Event::ButtonPress(e) => {
                if e.detail == 1 {
                    green = !green;
                    let colour = if green { GREEN } else { GREY };
                    conn.change_window_attributes(
                        win,
                        &ChangeWindowAttributesAux::new().background_pixel(colour),
                    )
                    .expect("x11 request");
                    conn.clear_area(false, win, 0, 0, 0, 0).expect("x11 request");
                    conn.flush().expect("x11 request");
                }
                format!("button {} {} {}", e.detail, e.root_x, e.root_y)
            }
            Event::ButtonRelease(e) => format!("release {} {} {}", e.detail, e.root_x, e.root_y),
            Event::KeyPress(e) => {
                let shifted = u16::from(e.state) & u16::from(KeyButMask::SHIFT) != 0;
                let keysym = keymap.keysym(e.detail, shifted);
                let mut line = format!("key {keysym:#x} {}", u16::from(e.state));
                if let Some(c) = text_of(keysym).filter(|_| u16::from(e.state) & 0x4 == 0) {
                    line.push_str(&format!("\nchar {c}"));
                }
                line
            }
            _ => continue,
        };
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return;
        }
    }
}
