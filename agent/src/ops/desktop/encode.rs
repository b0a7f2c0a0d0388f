//! Frames to image bytes: a fast resizer (SIMD convolution), PNG with the fastest deflate
//! settings (a 1280x800 desktop in a few milliseconds, still lossless: models read text), and
//! JPEG. `fit` shrinks until the bytes fit a reply. Knows nothing of NATS or X11.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::error::{OpError, OpResult};
use crate::ops::desktop::jpeg;
use crate::ops::desktop::screen::Frame;

/// No re-encode shrinks an image's shorter edge below this (unless the screen is smaller).
pub const MIN_EDGE: u32 = 320;
/// Most encodes one `fit` may try before giving up.
pub const MAX_ENCODES: usize = 6;
/// JPEG quality when a request names none.
pub const DEFAULT_JPEG_QUALITY: u8 = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg { quality: u8 },
}

/// An encoded image and its size in pixels.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// The largest size within `max` (0 = unbounded) keeping `native`'s aspect ratio; never
/// larger than `native`.
pub fn target_size((w, h): (u32, u32), (max_w, max_h): (u32, u32)) -> (u32, u32) {
    let max_w = if max_w == 0 { w } else { max_w.min(w) };
    let max_h = if max_h == 0 { h } else { max_h.min(h) };
    if w == 0 || h == 0 {
        return (w, h);
    }
    // Scale by the tighter bound, rounding the other edge to the nearest pixel.
    if u64::from(max_w) * u64::from(h) <= u64::from(max_h) * u64::from(w) {
        (max_w, ((u64::from(h) * u64::from(max_w) + u64::from(w) / 2) / u64::from(w)).max(1) as u32)
    } else {
        (((u64::from(w) * u64::from(max_h) + u64::from(h) / 2) / u64::from(h)).max(1) as u32, max_h)
    }
}

/// Resizes `frame` to `width x height` (bilinear convolution; the alpha byte is ignored).
pub fn resize(frame: &Frame, width: u32, height: u32) -> OpResult<Frame> {
    if (width, height) == (frame.width, frame.height) {
        return Ok(frame.clone());
    }
    let err = |e: &dyn std::fmt::Display| OpError::os(format!("resizing the screenshot failed: {e}"));
    let src =
        fast_image_resize::images::ImageRef::new(frame.width, frame.height, &frame.bgra, PixelType::U8x4)
            .map_err(|e| err(&e))?;
    let mut dst = Image::new(width, height, PixelType::U8x4);
    let options =
        ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).use_alpha(false);
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| err(&e))?;
    Ok(Frame { width, height, bgra: dst.into_vec() })
}

/// Encodes `frame` as `format`.
pub fn encode(frame: &Frame, format: Format) -> OpResult<Vec<u8>> {
    match format {
        Format::Png => png(frame),
        Format::Jpeg { quality } => jpeg::encode(frame, quality),
    }
}

/// Lossless RGB PNG with the fastest deflate and adaptive filtering: at 1280x800 about 1 ms and
/// a third of the bytes of a single fixed filter (the Balanced level costs ten times the time
/// for a fourth of the bytes; see BENCHMARKS.md).
pub fn png(frame: &Frame) -> OpResult<Vec<u8>> {
    let err = |e: png::EncodingError| OpError::os(format!("PNG encoding failed: {e}"));
    let mut rgb = Vec::with_capacity(frame.width as usize * frame.height as usize * 3);
    for px in frame.bgra.chunks_exact(4) {
        rgb.extend_from_slice(&[px[2], px[1], px[0]]);
    }
    let mut out = Vec::with_capacity(rgb.len() / 8);
    let mut encoder = png::Encoder::new(&mut out, frame.width, frame.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fastest);
    encoder.set_filter(png::Filter::Adaptive);
    let mut writer = encoder.write_header().map_err(err)?;
    writer.write_image_data(&rgb).map_err(err)?;
    writer.finish().map_err(err)?;
    Ok(out)
}

/// Encodes `frame` within `max` and shrinks it until the bytes fit `budget`: at most
/// [`MAX_ENCODES`] encodes, never below a [`MIN_EDGE`] shorter edge; else PAYLOAD_TOO_LARGE.
pub fn fit(frame: &Frame, max: (u32, u32), format: Format, budget: usize) -> OpResult<Encoded> {
    let native = (frame.width, frame.height);
    let floor = MIN_EDGE.min(native.0.min(native.1));
    let (mut width, mut height) = target_size(native, max);
    let mut last = 0;
    for _ in 0..MAX_ENCODES {
        let bytes = match (width, height) == native {
            true => encode(frame, format)?,
            false => encode(&resize(frame, width, height)?, format)?,
        };
        if bytes.len() <= budget {
            return Ok(Encoded { bytes, width, height });
        }
        last = bytes.len();
        if width.min(height) <= floor {
            break;
        }
        // Bytes grow about with the pixel count: shrink both edges by the root of the excess,
        // with a margin, but keep the shorter edge at or above the floor.
        let factor = ((budget as f64 / bytes.len() as f64).sqrt() * 0.9).min(0.95);
        let shorter = f64::from(width.min(height));
        let factor = factor.max(f64::from(floor) / shorter);
        (width, height) = target_size(
            native,
            (((f64::from(width) * factor) as u32).max(1), ((f64::from(height) * factor) as u32).max(1)),
        );
    }
    Err(OpError::payload_too_large(
        format!(
            "the screenshot does not fit the reply even at {width}x{height} ({last} bytes, budget {budget})"
        ),
        last,
        budget,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A frame with a noisy left half (incompressible) and a flat right half.
    pub(crate) fn frame(width: u32, height: u32) -> Frame {
        let mut bgra = Vec::with_capacity((width * height * 4) as usize);
        let mut seed = 0x2545_f491_u32;
        for _ in 0..height {
            for x in 0..width {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let v = if x < width / 2 { seed.to_le_bytes() } else { [40, 80, 120, 0] };
                bgra.extend_from_slice(&v);
            }
        }
        Frame { width, height, bgra }
    }

    #[test]
    fn target_sizes_keep_the_aspect_ratio_and_never_upscale() {
        assert_eq!(target_size((2560, 1600), (1280, 800)), (1280, 800));
        assert_eq!(target_size((2560, 1600), (1024, 768)), (1024, 640));
        assert_eq!(target_size((1280, 800), (0, 400)), (640, 400));
        assert_eq!(target_size((1280, 800), (4000, 4000)), (1280, 800));
        assert_eq!(target_size((1280, 800), (0, 0)), (1280, 800));
    }

    #[test]
    fn png_and_jpeg_decode_to_the_frame_colours() {
        let mut f = frame(64, 32);
        f.bgra.chunks_exact_mut(4).for_each(|px| px.copy_from_slice(&[10, 20, 200, 0]));
        let png = png(&f).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (64, 32));
        assert_eq!(&buf[..3], &[200, 20, 10], "RGB order");
        assert!(jpeg::encode(&f, 80).unwrap().starts_with(&[0xff, 0xd8]), "a JPEG stream");
    }

    #[test]
    fn fit_shrinks_until_the_bytes_fit_and_stops_at_the_floor() {
        let f = frame(1280, 800);
        let full = png(&f).unwrap().len();
        let fitted = fit(&f, (0, 0), Format::Png, full / 3).unwrap();
        assert!(fitted.bytes.len() <= full / 3);
        assert!(fitted.width < 1280 && fitted.height < 800 && fitted.height >= MIN_EDGE);
        assert_eq!(fitted.width * 800 / 1280, fitted.height, "aspect kept");
        let err = fit(&f, (0, 0), Format::Png, 1000).unwrap_err();
        assert_eq!(err.code, tether_proto::pb::ErrorCode::PayloadTooLarge);
    }
}
