//! The X11 screen: one x11rb connection (pure Rust, no libxcb needed) that captures through
//! MIT-SHM (GetImage as the fallback) and injects input through XTEST, in this process: no
//! helper process per action, no round trip through a tool.

mod capture;
mod input;

use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::damage::{ConnectionExt as _, Damage, ReportLevel};
use x11rb::protocol::xfixes::ConnectionExt as _;
use x11rb::protocol::xproto::{ConnectionExt as _, ImageOrder, VisualClass, Window};
use x11rb::rust_connection::RustConnection;

use self::capture::ShmSegment;
use self::input::Input;
use crate::error::{OpError, OpResult};
use crate::ops::desktop::request::MAX_SCROLL_NOTCHES;
use crate::ops::desktop::screen::{Backend, Button, Frame, Screen};

pub struct X11Screen {
    conn: RustConnection,
    root: Window,
    shm: Option<ShmSegment>,
    /// Whether MIT-SHM worked once (if not, every capture uses GetImage).
    shm_usable: bool,
    xfixes: bool,
    /// The DAMAGE object watching the root window (and everything drawn in it), when the
    /// server has the extension: it tells the stream when the screen cannot have changed.
    damage: Option<Damage>,
    /// A DamageNotify arrived (or nothing was watched yet) since the last look.
    drawn: bool,
    input: Option<Input>,
    /// Why input is unavailable, when it is.
    input_error: Option<OpError>,
}

impl X11Screen {
    /// Connects to `display` (e.g. ":99"; `None` = `$DISPLAY`) and checks that its root window
    /// has a pixel format we can encode (32 bits a pixel, BGRX on the wire).
    pub fn open(display: Option<&str>) -> OpResult<X11Screen> {
        let (conn, screen_num) = RustConnection::connect(display)
            .map_err(|e| OpError::unsupported(format!("cannot connect to the X display: {e}")))?;
        let setup = conn.setup();
        let screen = setup
            .roots
            .get(screen_num)
            .ok_or_else(|| OpError::unsupported("the X display has no such screen"))?;
        let root = screen.root;
        let depth = screen.root_depth;
        let bpp = setup.pixmap_formats.iter().find(|f| f.depth == depth).map(|f| f.bits_per_pixel);
        let visual = screen
            .allowed_depths
            .iter()
            .flat_map(|d| d.visuals.iter())
            .find(|v| v.visual_id == screen.root_visual);
        let bgrx = visual.is_some_and(|v| {
            v.class == VisualClass::TRUE_COLOR && v.red_mask == 0xff0000 && v.blue_mask == 0xff
        });
        if bpp != Some(32) || !bgrx || setup.image_byte_order != ImageOrder::LSB_FIRST {
            return Err(OpError::unsupported(format!(
                "the X screen's pixel format (depth {depth}, {bpp:?} bits a pixel) is not 32-bit BGRX"
            )));
        }
        let xfixes = conn.xfixes_query_version(5, 0).ok().and_then(|c| c.reply().ok()).is_some();
        let damage = xfixes.then(|| watch_damage(&conn, root)).flatten();
        let (input, input_error) = match Input::new(&conn, root) {
            Ok(input) => (Some(input), None),
            Err(e) => (None, Some(e)),
        };
        Ok(X11Screen {
            conn,
            root,
            shm: None,
            shm_usable: true,
            xfixes,
            damage,
            drawn: true,
            input,
            input_error,
        })
    }

    /// Captures with GetImage from now on, as if MIT-SHM were missing (benchmarks compare).
    pub fn disable_shm(&mut self) {
        if let Some(old) = self.shm.take() {
            old.release(&self.conn);
        }
        self.shm_usable = false;
    }

    /// Reads the events queued on the connection, for whoever they concern: DAMAGE's for the
    /// stream, MappingNotify for the input's keymap. The one place events are read, so neither
    /// consumer drops the other's.
    fn read_events(&mut self) -> OpResult<()> {
        while let Some(event) = self.conn.poll_for_event().map_err(|e| x11_error("reading events", e))? {
            match event {
                Event::DamageNotify(_) => self.drawn = true,
                Event::MappingNotify(_) => {
                    if let Some(input) = self.input.as_mut() {
                        input.keymap_changed();
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn input(&mut self) -> OpResult<(&RustConnection, &mut Input)> {
        match (&mut self.input, &self.input_error) {
            (Some(input), _) => Ok((&self.conn, input)),
            (None, Some(e)) => Err(e.clone()),
            (None, None) => Err(OpError::unsupported("input is unavailable on this display")),
        }
    }

    fn geometry(&self) -> OpResult<(u16, u16)> {
        let g = self
            .conn
            .get_geometry(self.root)
            .map_err(|e| OpError::os(format!("X11 GetGeometry failed: {e}")))?
            .reply()
            .map_err(|e| OpError::os(format!("X11 GetGeometry failed: {e}")))?;
        Ok((g.width, g.height))
    }

    /// Makes sure the shared segment holds `len` bytes (remade when the screen outgrew it);
    /// leaves none when the server cannot share memory (capture falls back to GetImage).
    fn ensure_segment(&mut self, len: usize) {
        if !self.shm_usable {
            return;
        }
        if self.shm.as_ref().is_some_and(|s| s.size() < len)
            && let Some(old) = self.shm.take()
        {
            old.release(&self.conn);
        }
        if self.shm.is_none() {
            self.shm = ShmSegment::new(&self.conn, len);
            if self.shm.is_none() {
                tracing::info!("MIT-SHM is unavailable on this display; capturing with GetImage");
                self.shm_usable = false;
            }
        }
    }
}

fn x11_error(what: &str, e: impl std::fmt::Display) -> OpError {
    OpError::os(format!("X11 {what} failed: {e}"))
}

/// A DAMAGE object on `root` that reports when its damage goes from empty to not (one event
/// per look at most, so unread events cannot pile up); `None` without the extension.
fn watch_damage(conn: &RustConnection, root: Window) -> Option<Damage> {
    conn.damage_query_version(1, 1).ok()?.reply().ok()?;
    let damage = conn.generate_id().ok()?;
    conn.damage_create(damage, root, ReportLevel::NON_EMPTY).ok()?.check().ok()?;
    Some(damage)
}

impl Drop for X11Screen {
    fn drop(&mut self) {
        if let Some(input) = self.input.as_mut() {
            input.restore(&self.conn);
        }
        if let Some(shm) = self.shm.take() {
            shm.release(&self.conn);
        }
    }
}

impl Screen for X11Screen {
    fn backend(&self) -> Backend {
        if self.shm_usable { "x11-shm" } else { "x11-getimage" }
    }

    fn can_inject(&self) -> bool {
        self.input.is_some()
    }

    fn size(&mut self) -> OpResult<(u32, u32)> {
        self.geometry().map(|(w, h)| (w.into(), h.into()))
    }

    fn capture(&mut self, cursor: bool) -> OpResult<Frame> {
        let (width, height) = self.geometry()?;
        let len = width as usize * height as usize * 4;
        self.ensure_segment(len);
        let mut frame = match &self.shm {
            Some(shm) => shm.capture(&self.conn, self.root, width, height)?,
            None => capture::get_image(&self.conn, self.root, width, height)?,
        };
        if cursor && self.xfixes {
            capture::draw_cursor(&self.conn, &mut frame)?;
        }
        Ok(frame)
    }

    fn pointer_move(&mut self, x: i32, y: i32) -> OpResult<()> {
        let (conn, input) = self.input()?;
        input.motion(conn, x, y)
    }

    fn button(&mut self, button: Button, down: bool) -> OpResult<()> {
        let number = match button {
            Button::Left => 1,
            Button::Middle => 2,
            Button::Right => 3,
        };
        let (conn, input) = self.input()?;
        input.button(conn, number, down)
    }

    fn scroll(&mut self, dx: i32, dy: i32) -> OpResult<()> {
        let (conn, input) = self.input()?;
        let steps = |delta: i32, back: u8, forth: u8| {
            let button = if delta < 0 { back } else { forth };
            (button, delta.unsigned_abs().min(MAX_SCROLL_NOTCHES as u32))
        };
        for (button, count) in [steps(dy, 4, 5), steps(dx, 6, 7)] {
            for _ in 0..count {
                input.button(conn, button, true)?;
                input.button(conn, button, false)?;
            }
        }
        Ok(())
    }

    fn key(&mut self, keysym: u32, down: bool) -> OpResult<()> {
        self.read_events()?;
        let (conn, input) = self.input()?;
        input.key(conn, keysym, down)
    }

    fn text(&mut self, text: &str) -> OpResult<()> {
        self.read_events()?;
        let (conn, input) = self.input()?;
        input.text(conn, text)
    }

    fn sync(&mut self) -> OpResult<()> {
        x11rb::wrapper::ConnectionExt::sync(&self.conn)
            .map_err(|e| OpError::os(format!("X11 sync failed (is the display gone?): {e}")))
    }

    fn drawn_since_last_asked(&mut self) -> Option<bool> {
        let damage = self.damage?;
        if self.read_events().is_err() {
            // The connection is broken: say so by capturing (which reports the error).
            return Some(true);
        }
        if !std::mem::take(&mut self.drawn) {
            return Some(false);
        }
        // Empty the damage before the capture that follows: whatever is drawn after this
        // notifies again.
        if self.conn.damage_subtract(damage, x11rb::NONE, x11rb::NONE).is_err() {
            self.drawn = true;
        }
        Some(true)
    }

    fn idle(&mut self) {
        if let Some(input) = self.input.as_mut() {
            input.restore(&self.conn);
        }
    }
}
