//! The byte layout of a desktop delta frame (DESKTOP_FRAME_ENCODING_TILES, `StreamFrame.delta`):
//! the changed rectangles of the screen since the previous frame, each an encoded image to draw
//! at its place over the picture so far. It lives here, beside the rest of the wire, because
//! the agent writes it and the viewers (the `/view` page, tests, tools) read it.
//!
//! ```text
//! offset size
//!  0     4    magic "TTI1" (0x54 0x54 0x49 0x31: neither a JPEG, FF D8, nor a PNG, 89 50, starts so)
//!  4     2    screen width in pixels   (u16, big-endian, as every number below)
//!  6     2    screen height
//!  8     2    rectangle count N
//! then N times:
//!        2    x   2 y   2 width   2 height     (inside the screen)
//!        1    format: 0 JPEG, 1 PNG
//!        4    length L of the image bytes
//!        L    the image (exactly width x height pixels)
//! ```
//!
//! A viewer sniffs each frame's data: the magic means "draw these rectangles in order over the
//! previous picture"; anything else is a whole image. Frames must be applied in seq order.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// First bytes of a delta frame.
pub const MAGIC: [u8; 4] = *b"TTI1";
const HEADER: usize = 10;
const RECT_HEADER: usize = 13;

/// How one rectangle's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RectFormat {
    Jpeg = 0,
    Png = 1,
}

/// One changed rectangle and its encoded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileRect {
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
    pub format: RectFormat,
    pub image: Bytes,
}

/// A decoded delta frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TileFrame {
    pub width: u16,
    pub height: u16,
    pub rects: Vec<TileRect>,
}

/// Why bytes are not a delta frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TilesError {
    #[error("not a tile frame (no TTI1 magic)")]
    NoMagic,
    #[error("the tile frame is truncated")]
    Truncated,
    #[error("rectangle {0} lies outside the screen or is empty")]
    OutOfBounds(usize),
    #[error("rectangle {0} has unknown format {1}")]
    Format(usize, u8),
    #[error("{0} bytes follow the last rectangle")]
    Trailing(usize),
}

/// Whether `data` is a delta frame rather than a whole image.
pub fn is_tiles(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

impl TileFrame {
    /// Bytes of the encoded frame.
    pub fn encoded_len(&self) -> usize {
        HEADER + self.rects.iter().map(|r| RECT_HEADER + r.image.len()).sum::<usize>()
    }

    /// The frame in the layout above. Rectangles and counts must fit their fields (the agent's
    /// screens are at most 65535 pixels an edge, the JPEG limit, and rects are few).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_slice(&MAGIC);
        out.put_u16(self.width);
        out.put_u16(self.height);
        out.put_u16(u16::try_from(self.rects.len()).unwrap_or(u16::MAX));
        for r in self.rects.iter().take(usize::from(u16::MAX)) {
            out.put_u16(r.x);
            out.put_u16(r.y);
            out.put_u16(r.width);
            out.put_u16(r.height);
            out.put_u8(r.format as u8);
            out.put_u32(u32::try_from(r.image.len()).unwrap_or(u32::MAX));
            out.put_slice(&r.image);
        }
        out.freeze()
    }

    /// Parses a delta frame; the images are slices of `data`, not copies.
    pub fn decode(mut data: Bytes) -> Result<TileFrame, TilesError> {
        if !is_tiles(&data) {
            return Err(TilesError::NoMagic);
        }
        if data.len() < HEADER {
            return Err(TilesError::Truncated);
        }
        data.advance(MAGIC.len());
        let (width, height, count) = (data.get_u16(), data.get_u16(), data.get_u16());
        let mut rects = Vec::with_capacity(usize::from(count).min(data.len() / RECT_HEADER));
        for i in 0..usize::from(count) {
            if data.len() < RECT_HEADER {
                return Err(TilesError::Truncated);
            }
            let (x, y, w, h) = (data.get_u16(), data.get_u16(), data.get_u16(), data.get_u16());
            let format = match data.get_u8() {
                0 => RectFormat::Jpeg,
                1 => RectFormat::Png,
                other => return Err(TilesError::Format(i, other)),
            };
            let len = data.get_u32() as usize;
            if data.len() < len {
                return Err(TilesError::Truncated);
            }
            let inside = w > 0
                && h > 0
                && u32::from(x) + u32::from(w) <= u32::from(width)
                && u32::from(y) + u32::from(h) <= u32::from(height);
            if !inside {
                return Err(TilesError::OutOfBounds(i));
            }
            let image = data.split_to(len);
            rects.push(TileRect { x, y, width: w, height: h, format, image });
        }
        if !data.is_empty() {
            return Err(TilesError::Trailing(data.len()));
        }
        Ok(TileFrame { width, height, rects })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TileFrame {
        TileFrame {
            width: 1280,
            height: 800,
            rects: vec![
                TileRect {
                    x: 0,
                    y: 64,
                    width: 128,
                    height: 64,
                    format: RectFormat::Jpeg,
                    image: Bytes::from_static(&[0xff, 0xd8, 1, 2, 3]),
                },
                TileRect {
                    x: 1216,
                    y: 768,
                    width: 64,
                    height: 32,
                    format: RectFormat::Png,
                    image: Bytes::from_static(b"\x89PNG"),
                },
            ],
        }
    }

    #[test]
    fn a_frame_round_trips_and_is_sniffed_apart_from_images() {
        let frame = sample();
        let bytes = frame.encode();
        assert_eq!(bytes.len(), frame.encoded_len());
        assert!(is_tiles(&bytes));
        assert_eq!(TileFrame::decode(bytes).unwrap(), frame);
        assert!(!is_tiles(&[0xff, 0xd8, 0xff, 0xe0]), "a JPEG is not a tile frame");
        assert!(!is_tiles(b"\x89PNG\r\n\x1a\n"), "nor is a PNG");
        let empty = TileFrame { width: 8, height: 8, rects: vec![] };
        assert_eq!(TileFrame::decode(empty.encode()).unwrap(), empty);
    }

    #[test]
    fn malformed_frames_are_refused() {
        let bytes = sample().encode();
        assert_eq!(TileFrame::decode(Bytes::from_static(b"\xff\xd8")), Err(TilesError::NoMagic));
        assert_eq!(TileFrame::decode(bytes.slice(..bytes.len() - 1)), Err(TilesError::Truncated));
        assert_eq!(TileFrame::decode(bytes.slice(..12)), Err(TilesError::Truncated));
        let mut long = BytesMut::from(&bytes[..]);
        long.put_u8(0);
        assert_eq!(TileFrame::decode(long.freeze()), Err(TilesError::Trailing(1)));
        let mut outside = sample();
        outside.rects[1].x = 1217;
        assert_eq!(TileFrame::decode(outside.encode()), Err(TilesError::OutOfBounds(1)));
        let mut format = BytesMut::from(&bytes[..]);
        format[HEADER + 8] = 7;
        assert_eq!(TileFrame::decode(format.freeze()), Err(TilesError::Format(0, 7)));
    }
}
