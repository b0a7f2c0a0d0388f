//! Capturing the X11 root window: through one MIT-SHM segment the server writes the image
//! into (no copy through the socket: well under a millisecond at 1280x800), or plain GetImage
//! when the server cannot share memory with us (remote, another IPC namespace, another user).
//! The pointer is drawn from the XFixes cursor image on request.

use x11rb::connection::Connection;
use x11rb::protocol::shm::{self, ConnectionExt as _};
use x11rb::protocol::xfixes::ConnectionExt as _;
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat, Window};
use x11rb::rust_connection::RustConnection;

use super::x11_error;
use crate::error::{OpError, OpResult};
use crate::ops::desktop::screen::Frame;

/// A System V shared memory segment attached both here (read-only) and in the X server.
pub struct ShmSegment {
    seg: shm::Seg,
    addr: *const u8,
    size: usize,
}

// SAFETY: the mapping is owned by this value alone and only read through `&self`.
unsafe impl Send for ShmSegment {}

impl ShmSegment {
    /// Creates a segment of `size` bytes and attaches it to the server; `None` when the
    /// server cannot attach it (then capture falls back to GetImage).
    pub fn new(conn: &RustConnection, size: usize) -> Option<ShmSegment> {
        conn.shm_query_version().ok()?.reply().ok()?;
        // SAFETY: plain System V calls; the id and address are checked before use, and the
        // segment is marked for removal at once so it cannot outlive both attachments.
        unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, size, libc::IPC_CREAT | 0o600);
            if id < 0 {
                return None;
            }
            let addr = libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY);
            let attached = addr as isize != -1;
            let seg = conn.generate_id().ok();
            let server = match (attached, seg) {
                (true, Some(seg)) => conn.shm_attach(seg, id as u32, false).ok().and_then(|c| c.check().ok()),
                _ => None,
            };
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
            match (server, seg) {
                (Some(()), Some(seg)) => Some(ShmSegment { seg, addr: addr as *const u8, size }),
                _ => {
                    if attached {
                        libc::shmdt(addr);
                    }
                    None
                }
            }
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Detaches from the server and from this process.
    pub fn release(self, conn: &RustConnection) {
        let _ = conn.shm_detach(self.seg).map(|c| c.ignore_error());
        // SAFETY: `addr` came from shmat and is detached once, here.
        unsafe {
            libc::shmdt(self.addr as *const libc::c_void);
        }
    }

    /// Captures `width x height` of `root` into the segment and copies it out.
    pub fn capture(&self, conn: &RustConnection, root: Window, width: u16, height: u16) -> OpResult<Frame> {
        let len = width as usize * height as usize * 4;
        if len > self.size {
            return Err(OpError::os("the shared memory segment is smaller than the screen"));
        }
        let format = ImageFormat::Z_PIXMAP.into();
        conn.shm_get_image(root, 0, 0, width, height, !0, format, self.seg, 0)
            .map_err(|e| x11_error("ShmGetImage", e))?
            .reply()
            .map_err(|e| x11_error("ShmGetImage", e))?;
        // SAFETY: the server has written `len <= size` bytes of the segment, which stays mapped
        // while `self` lives; the reply above orders that write before this read.
        let pixels = unsafe { std::slice::from_raw_parts(self.addr, len) };
        Ok(Frame { width: width.into(), height: height.into(), bgra: pixels.to_vec() })
    }
}

/// Captures with plain GetImage (the image crosses the socket).
pub fn get_image(conn: &RustConnection, root: Window, width: u16, height: u16) -> OpResult<Frame> {
    let reply = conn
        .get_image(ImageFormat::Z_PIXMAP, root, 0, 0, width, height, !0)
        .map_err(|e| x11_error("GetImage", e))?
        .reply()
        .map_err(|e| x11_error("GetImage", e))?;
    let len = width as usize * height as usize * 4;
    if reply.data.len() < len {
        return Err(OpError::os(format!("GetImage returned {} bytes, expected {len}", reply.data.len())));
    }
    let mut bgra = reply.data;
    bgra.truncate(len);
    Ok(Frame { width: width.into(), height: height.into(), bgra })
}

/// Draws the current cursor image (premultiplied ARGB from XFixes) over `frame`.
pub fn draw_cursor(conn: &RustConnection, frame: &mut Frame) -> OpResult<()> {
    let cursor = conn
        .xfixes_get_cursor_image()
        .map_err(|e| x11_error("XFixesGetCursorImage", e))?
        .reply()
        .map_err(|e| x11_error("XFixesGetCursorImage", e))?;
    let left = i64::from(cursor.x) - i64::from(cursor.xhot);
    let top = i64::from(cursor.y) - i64::from(cursor.yhot);
    blend(frame, left, top, cursor.width.into(), &cursor.cursor_image);
    Ok(())
}

/// Blends premultiplied ARGB `image` (`width` pixels a row) onto `frame` at `(left, top)`,
/// clipping at the frame's edges.
pub fn blend(frame: &mut Frame, left: i64, top: i64, width: usize, image: &[u32]) {
    if width == 0 {
        return;
    }
    for (row, line) in image.chunks(width).enumerate() {
        let y = top + row as i64;
        if y < 0 || y >= i64::from(frame.height) {
            continue;
        }
        for (col, &argb) in line.iter().enumerate() {
            let x = left + col as i64;
            if x < 0 || x >= i64::from(frame.width) {
                continue;
            }
            let alpha = argb >> 24;
            if alpha == 0 {
                continue;
            }
            let at = (y as usize * frame.width as usize + x as usize) * 4;
            let px = &mut frame.bgra[at..at + 3];
            let src = [argb & 0xff, (argb >> 8) & 0xff, (argb >> 16) & 0xff];
            for (dst, src) in px.iter_mut().zip(src) {
                *dst = (src + u32::from(*dst) * (255 - alpha) / 255).min(255) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opaque_cursor_replaces_pixels_and_is_clipped_at_the_edges() {
        let mut frame = Frame { width: 2, height: 2, bgra: vec![0; 16] };
        // A 2x2 opaque red cursor hanging off the bottom-right corner by one pixel.
        blend(&mut frame, 1, 1, 2, &[0xffff0000; 4]);
        assert_eq!(&frame.bgra[12..15], &[0, 0, 255], "bottom-right pixel is red (BGR order)");
        assert_eq!(&frame.bgra[0..3], &[0, 0, 0], "top-left untouched");
    }
}
