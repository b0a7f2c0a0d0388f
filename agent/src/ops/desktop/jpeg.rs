//! Baseline JPEG encoded in horizontal strips on several cores at once, joined into one
//! stream by restart markers.
//!
//! A JPEG scan may reset its DC prediction at a restart marker every `interval` MCUs, and a
//! strip whose height is a whole number of MCU rows is exactly such an interval. So each strip
//! is encoded on its own thread as a small JPEG of its own (same quality, same sampling, same
//! standard Huffman tables), and the strips' entropy-coded data are laid end to end behind the
//! first strip's headers, with the frame height set to the whole image's, a DRI segment naming
//! the strip size, and RSTn markers between strips. The pixels decode exactly as from a
//! single-threaded encode; only the few bytes of the restart markers differ.

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

use crate::error::{OpError, OpResult};
use crate::ops::desktop::screen::Frame;

/// Fewest MCU rows worth a thread of their own (a 1280-wide strip of 4 rows is ~0.3 ms).
const MIN_ROWS_PER_STRIP: usize = 4;
/// Most strips one image is cut into.
const MAX_STRIPS: usize = 4;

const SOF0: u8 = 0xc0;
const SOS: u8 = 0xda;
const EOI: [u8; 2] = [0xff, 0xd9];
const RST0: u8 = 0xd0;
const DRI: u8 = 0xdd;

/// Encodes `frame` at `quality` (1..=100) using up to the machine's cores.
pub fn encode(frame: &Frame, quality: u8) -> OpResult<Vec<u8>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    encode_in_strips(frame, quality, cores.min(MAX_STRIPS))
}

/// Encodes `frame` in at most `strips` strips, each on its own thread (1: a plain encode).
pub fn encode_in_strips(frame: &Frame, quality: u8, strips: usize) -> OpResult<Vec<u8>> {
    let (Ok(width), Ok(height)) = (u16::try_from(frame.width), u16::try_from(frame.height)) else {
        return Err(OpError::os("the screen is too large for JPEG (over 65535 pixels an edge)"));
    };
    let quality = quality.clamp(1, 100);
    // Below quality 90 chroma is halved both ways (4:2:0), the encoder's own default.
    let (sampling, mcu) = if quality < 90 { (SamplingFactor::F_2_2, 16) } else { (SamplingFactor::F_1_1, 8) };
    let plain = |rows: &[u8], h: u16| -> OpResult<Vec<u8>> {
        let mut out = Vec::with_capacity(rows.len() / 8);
        let mut encoder = Encoder::new(&mut out, quality);
        encoder.set_sampling_factor(sampling);
        encoder
            .encode(rows, width, h, ColorType::Bgra)
            .map_err(|e| OpError::os(format!("JPEG encoding failed: {e}")))?;
        Ok(out)
    };
    let mcu_cols = usize::from(width).div_ceil(mcu);
    let mcu_rows = usize::from(height).div_ceil(mcu);
    let strips = strips.min(mcu_rows / MIN_ROWS_PER_STRIP).max(1);
    let rows_per_strip = mcu_rows.div_ceil(strips);
    // A restart interval counts at most 65535 MCUs.
    let (true, Ok(interval)) = (strips > 1, u16::try_from(rows_per_strip * mcu_cols)) else {
        return plain(&frame.bgra, height);
    };
    let row_bytes = usize::from(width) * 4;
    let Some(pixels) = frame.bgra.get(..row_bytes * usize::from(height)) else {
        return Err(OpError::os("the frame holds fewer pixels than its size says"));
    };
    let parts: Vec<OpResult<Vec<u8>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = pixels
            .chunks(rows_per_strip * mcu * row_bytes)
            .map(|rows| {
                let h = (rows.len() / row_bytes) as u16;
                scope.spawn(move || plain(rows, h))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(OpError::os("JPEG strip panicked"))))
            .collect()
    });
    let parts = parts.into_iter().collect::<OpResult<Vec<_>>>()?;
    splice(&parts, height, interval)
        .ok_or_else(|| OpError::os("JPEG strips did not splice (unexpected layout)"))
}

/// One stream from strip JPEGs: the first strip's headers with the full `height` and a DRI of
/// `interval`, then every strip's scan data, RSTn between strips, and EOI.
fn splice(parts: &[Vec<u8>], height: u16, interval: u16) -> Option<Vec<u8>> {
    let first = parts.first()?;
    let scan_start = scan_data_start(first)?;
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum::<usize>() + 8 * parts.len());
    out.extend_from_slice(&first[..scan_start]);
    let (sof, sos) = (segment(&out, SOF0)?, segment(&out, SOS)?);
    // SOF0: marker(2) length(2) precision(1) height(2) ...
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    let dri = [0xff, DRI, 0, 4, (interval >> 8) as u8, interval as u8];
    out.splice(sos..sos, dri);
    for (i, part) in parts.iter().enumerate() {
        let data = part.get(scan_data_start(part)?..)?.strip_suffix(&EOI)?;
        out.extend_from_slice(data);
        if i + 1 < parts.len() {
            out.extend_from_slice(&[0xff, RST0 + (i % 8) as u8]);
        }
    }
    out.extend_from_slice(&EOI);
    Some(out)
}

/// Offset of the segment with `marker` among the headers of `jpeg` (which start after SOI).
fn segment(jpeg: &[u8], marker: u8) -> Option<usize> {
    let mut at = 2;
    loop {
        let [0xff, m, hi, lo] = *jpeg.get(at..at + 4)? else {
            return None;
        };
        if m == marker {
            return Some(at);
        }
        if m == SOS {
            return None;
        }
        at += 2 + usize::from(u16::from_be_bytes([hi, lo]));
    }
}

/// Offset of the first entropy-coded byte: just past the SOS segment.
fn scan_data_start(jpeg: &[u8]) -> Option<usize> {
    let sos = segment(jpeg, SOS)?;
    let [hi, lo] = *jpeg.get(sos + 2..sos + 4)? else { return None };
    Some(sos + 2 + usize::from(u16::from_be_bytes([hi, lo])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::desktop::encode::tests::frame;

    fn decode(jpeg: &[u8]) -> (u16, u16, Vec<u8>) {
        let mut decoder = jpeg_decoder::Decoder::new(jpeg);
        let pixels = decoder.decode().expect("a valid JPEG");
        let info = decoder.info().expect("info");
        (info.width, info.height, pixels)
    }

    #[test]
    fn strips_decode_to_exactly_the_pixels_of_a_single_threaded_encode() {
        // Heights that split evenly, unevenly, and end in a partial MCU row; widths that are and
        // are not whole MCUs; both samplings (quality 80: 4:2:0, 95: 4:4:4).
        for (w, h) in [(1280, 800), (1366, 768), (333, 257), (40, 300)] {
            let f = frame(w, h);
            for quality in [80, 95] {
                let one = decode(&encode_in_strips(&f, quality, 1).unwrap()).2;
                for strips in [2, 3, 4] {
                    let many = encode_in_strips(&f, quality, strips).unwrap();
                    let (mw, mh, pixels) = decode(&many);
                    assert_eq!((u32::from(mw), u32::from(mh)), (w, h), "{w}x{h} q{quality} {strips} strips");
                    assert!(pixels == one, "{w}x{h} q{quality} {strips} strips: pixels differ");
                }
            }
        }
    }

    #[test]
    fn a_large_frame_is_really_cut_into_strips() {
        let f = frame(1280, 800);
        let one = encode_in_strips(&f, 80, 1).unwrap();
        let many = encode_in_strips(&f, 80, 4).unwrap();
        assert!(segment(&one, DRI).is_none(), "a plain encode has no restart interval");
        let dri = segment(&many, DRI).expect("a DRI segment");
        // 800 rows are 50 MCU rows of 16; in 4 strips 13 rows of 80 MCUs each.
        assert_eq!(&many[dri + 4..dri + 6], &(13u16 * 80).to_be_bytes());
        let restarts = many.windows(2).filter(|p| p[0] == 0xff && (RST0..RST0 + 8).contains(&p[1])).count();
        assert_eq!(restarts, 3, "three restart markers join four strips");
    }

    #[test]
    fn a_frame_shorter_than_its_size_is_an_error_not_a_shorter_image() {
        let mut f = frame(1280, 800);
        f.bgra.truncate(f.bgra.len() - 4);
        assert!(encode_in_strips(&f, 80, 2).is_err());
        assert!(encode_in_strips(&f, 80, 1).is_err());
    }

    #[test]
    fn a_frame_too_small_to_share_is_encoded_plainly() {
        let f = frame(64, 48); // 3 MCU rows: under MIN_ROWS_PER_STRIP for a second strip
        assert_eq!(encode_in_strips(&f, 80, 4).unwrap(), encode_in_strips(&f, 80, 1).unwrap());
    }
}
