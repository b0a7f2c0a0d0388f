//! Captures to stream frames, and when a frame is worth sending at all. WHOLE channels send
//! every changed capture as one image, as they always have. TILES channels send a key frame
//! (a whole image) when asked to (a viewer joined), when the screen size changed, when most of
//! the screen changed, or when the deltas since the last key frame would outweigh it; otherwise
//! a delta frame holding only the changed rectangles ([`super::tiles`], laid out as
//! `tether_proto::tiles` says). That last rule bounds what the relay keeps for a resuming viewer
//! (the key frame and the deltas after it) to about two key frames. Synchronous: the stream
//! runs it on the blocking pool.

use bytes::Bytes;
use tether_proto::tiles::{RectFormat, TileFrame, TileRect};

use super::tiles::{self, Rect};
use crate::error::{OpError, OpResult};
use crate::ops::desktop::encode::{self, Format};
use crate::ops::desktop::screen::Frame;

/// A frame ready for the pump.
#[derive(Debug, Clone)]
pub struct StreamFrame {
    pub data: Bytes,
    pub delta: bool,
}

impl super::pump::Output for StreamFrame {
    fn into_parts(self) -> (Bytes, bool) {
        (self.data, self.delta)
    }
}

/// One channel's encoder state.
#[derive(Debug, Clone)]
pub struct FrameEncoder {
    tiles: bool,
    format: Format,
    /// The ensure's size bound (0 = native).
    max: (u32, u32),
    /// Largest frame the relay takes.
    budget: usize,
    /// The last frame sent, at the size it was sent.
    last: Option<Frame>,
    /// TILES: (capture size, stream size) of the last key frame (a key that had to shrink to fit
    /// the budget sets the size the deltas after it are cut at).
    scale: Option<((u32, u32), (u32, u32))>,
    key_bytes: usize,
    delta_bytes: usize,
}

impl FrameEncoder {
    pub fn new(tiles: bool, format: Format, max: (u32, u32), budget: usize) -> Self {
        FrameEncoder { tiles, format, max, budget, last: None, scale: None, key_bytes: 0, delta_bytes: 0 }
    }

    /// Forgets the last frame: the next one is a key frame whatever it shows.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// The frame to send for `capture`, if any. `fresh` asks for a whole image even when
    /// nothing changed (a viewer joined).
    pub fn next(&mut self, capture: Frame, fresh: bool) -> OpResult<Option<StreamFrame>> {
        if !self.tiles {
            if !fresh && self.last.as_ref() == Some(&capture) {
                return Ok(None);
            }
            let encoded = encode::fit(&capture, self.max, self.format, self.budget)?;
            self.last = Some(capture);
            return Ok(Some(StreamFrame { data: encoded.bytes.into(), delta: false }));
        }
        let native = (capture.width, capture.height);
        let size = match self.scale {
            Some((from, to)) if from == native => to,
            _ => encode::target_size(native, self.max),
        };
        let frame = match size == native {
            true => capture,
            false => encode::resize(&capture, size.0, size.1)?,
        };
        match self.last.as_ref().filter(|l| !fresh && (l.width, l.height) == size) {
            Some(last) => {
                let rects = tiles::changed(last, &frame);
                if rects.is_empty() {
                    return Ok(None);
                }
                let area: u64 = rects.iter().map(Rect::area).sum();
                if area * 2 <= u64::from(size.0) * u64::from(size.1) {
                    let data = self.delta(&frame, &rects)?;
                    if self.delta_bytes + data.len() <= self.key_bytes {
                        self.delta_bytes += data.len();
                        self.last = Some(frame);
                        return Ok(Some(StreamFrame { data, delta: true }));
                    }
                }
                self.key(native, frame).map(Some)
            }
            None => self.key(native, frame).map(Some),
        }
    }

    /// A whole image of `frame` (shrunk if it must be to fit the budget).
    fn key(&mut self, native: (u32, u32), frame: Frame) -> OpResult<StreamFrame> {
        let encoded = encode::fit(&frame, (0, 0), self.format, self.budget)?;
        let sent = (encoded.width, encoded.height);
        let kept = match sent == (frame.width, frame.height) {
            true => frame,
            false => encode::resize(&frame, sent.0, sent.1)?,
        };
        self.scale = Some((native, sent));
        self.last = Some(kept);
        self.key_bytes = encoded.bytes.len();
        self.delta_bytes = 0;
        Ok(StreamFrame { data: encoded.bytes.into(), delta: false })
    }

    /// The delta frame drawing `rects` of `frame`.
    fn delta(&self, frame: &Frame, rects: &[Rect]) -> OpResult<Bytes> {
        let too_big =
            || OpError::os("the screen is too large for the tile layout (over 65535 pixels an edge)");
        let edge = |v: u32| u16::try_from(v).map_err(|_| too_big());
        let format = match self.format {
            Format::Png => RectFormat::Png,
            Format::Jpeg { .. } => RectFormat::Jpeg,
        };
        let mut out = TileFrame { width: edge(frame.width)?, height: edge(frame.height)?, rects: Vec::new() };
        for &rect in rects {
            let image = encode::encode(&tiles::crop(frame, rect), self.format)?;
            out.rects.push(TileRect {
                x: edge(rect.x)?,
                y: edge(rect.y)?,
                width: edge(rect.width)?,
                height: edge(rect.height)?,
                format,
                image: image.into(),
            });
        }
        Ok(out.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(width: u32, height: u32, shade: u8) -> Frame {
        Frame { width, height, bgra: vec![shade; (width * height * 4) as usize] }
    }

    /// `frame` with a `size`-pixel square of `shade` at (x, y).
    fn with_block(frame: &Frame, (x, y): (u32, u32), size: u32, shade: u8) -> Frame {
        let mut f = frame.clone();
        for row in y..y + size {
            let at = ((row * f.width + x) * 4) as usize;
            f.bgra[at..at + size as usize * 4].fill(shade);
        }
        f
    }

    fn png_pixels(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        (info.width, info.height, buf)
    }

    #[test]
    fn whole_mode_sends_every_change_as_an_image_and_nothing_when_unchanged() {
        let mut enc = FrameEncoder::new(false, Format::Png, (0, 0), 1 << 20);
        let a = screen(256, 128, 10);
        assert!(!enc.next(a.clone(), false).unwrap().unwrap().delta);
        assert!(enc.next(a.clone(), false).unwrap().is_none());
        assert!(enc.next(a.clone(), true).unwrap().is_some(), "a joining viewer gets a frame");
        let b = with_block(&a, (0, 0), 8, 200);
        let sent = enc.next(b, false).unwrap().unwrap();
        assert!(!sent.delta && !tether_proto::tiles::is_tiles(&sent.data));
    }

    #[test]
    fn tiles_mode_sends_a_key_then_deltas_that_rebuild_the_screen() {
        let mut enc = FrameEncoder::new(true, Format::Png, (0, 0), 1 << 20);
        let a = screen(640, 320, 10);
        let key = enc.next(a.clone(), false).unwrap().unwrap();
        assert!(!key.delta);
        assert!(enc.next(a.clone(), false).unwrap().is_none(), "unchanged: nothing");
        let b = with_block(&a, (100, 70), 20, 200);
        let delta = enc.next(b.clone(), false).unwrap().unwrap();
        assert!(delta.delta);
        let tiles = TileFrame::decode(delta.data).unwrap();
        assert_eq!((tiles.width, tiles.height), (640, 320));
        assert_eq!(tiles.rects.len(), 1);
        let r = &tiles.rects[0];
        assert_eq!((r.x, r.y, r.width, r.height), (64, 64, 64, 64), "the block's one tile");
        let (w, h, rgb) = png_pixels(&r.image);
        assert_eq!((w, h), (64, 64));
        // Pixel (100, 70) of the screen is (36, 6) of the rectangle.
        assert_eq!(&rgb[(6 * 64 + 36) * 3..][..3], &[200, 200, 200]);
        assert_eq!(&rgb[..3], &[10, 10, 10]);
        assert!(!enc.next(b, true).unwrap().unwrap().delta, "a joining viewer gets a key frame");
    }

    #[test]
    fn a_big_change_or_too_many_delta_bytes_sends_a_key_frame() {
        let mut enc = FrameEncoder::new(true, Format::Png, (0, 0), 1 << 20);
        let a = screen(640, 320, 10);
        enc.next(a.clone(), false).unwrap();
        assert!(!enc.next(screen(640, 320, 90), false).unwrap().unwrap().delta, "all changed: key");
        // Noise blocks compress badly: deltas soon outweigh the flat key frame.
        let mut last = screen(640, 320, 90);
        let mut kinds = Vec::new();
        for i in 0..8u32 {
            let mut next = last.clone();
            for (n, px) in next.bgra[..64 * 4 * 64].iter_mut().enumerate() {
                *px = ((n as u32).wrapping_mul(2_654_435_761u32.wrapping_mul(i + 1)) >> 13) as u8;
            }
            kinds.push(enc.next(next.clone(), false).unwrap().unwrap().delta);
            last = next;
        }
        assert!(kinds.contains(&false) && kinds.contains(&true), "{kinds:?}");
    }

    #[test]
    fn a_size_bound_scales_key_and_delta_frames_alike() {
        let mut enc = FrameEncoder::new(true, Format::Png, (320, 0), 1 << 20);
        let a = screen(640, 320, 10);
        let key = enc.next(a.clone(), false).unwrap().unwrap();
        assert_eq!(png_pixels(&key.data).0, 320);
        let delta = enc.next(with_block(&a, (0, 0), 200, 200), false).unwrap().unwrap();
        let tiles = TileFrame::decode(delta.data).unwrap();
        assert_eq!((tiles.width, tiles.height), (320, 160));
        assert!(tiles.rects.iter().all(|r| r.x + r.width <= 320 && r.y + r.height <= 160));
    }
}
