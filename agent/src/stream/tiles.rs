//! What changed between two captures, as a few rectangles: compare the frames tile by tile
//! ([`TILE`] pixels square, a row slice compare each, well under a millisecond at 1280x800),
//! merge the dirty tiles into rectangles (runs along a tile row, then runs of equal span down
//! the rows), and crop a rectangle out of a frame for encoding. Pure functions over frames, so
//! the delta encoder ([`super::frames`]) stays about policy.

use crate::ops::desktop::screen::Frame;

/// Edge of a comparison tile in pixels.
pub const TILE: u32 = 64;
/// More rectangles than this are sent as their bounding box (each costs a header and an image).
pub const MAX_RECTS: usize = 32;

/// A rectangle of the screen in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// Which tiles differ between `prev` and `next` (same size): `grid[row * cols + col]`.
pub fn dirty_tiles(prev: &Frame, next: &Frame) -> (u32, u32, Vec<bool>) {
    let (w, h) = (next.width, next.height);
    let cols = w.div_ceil(TILE);
    let rows = h.div_ceil(TILE);
    let mut grid = vec![false; (cols * rows) as usize];
    let stride = w as usize * 4;
    for y in 0..h {
        let row = (y / TILE) as usize * cols as usize;
        let line = y as usize * stride;
        for col in 0..cols {
            let cell = row + col as usize;
            if grid[cell] {
                continue;
            }
            let from = line + (col * TILE) as usize * 4;
            let to = line + ((col + 1) * TILE).min(w) as usize * 4;
            if prev.bgra[from..to] != next.bgra[from..to] {
                grid[cell] = true;
            }
        }
    }
    (cols, rows, grid)
}

/// Merges dirty tiles into rectangles clipped to `width x height`: each tile row's runs of
/// dirty tiles, joined with the run just above when both span the same columns. At most
/// [`MAX_RECTS`]: beyond that, their bounding box.
pub fn merge(cols: u32, rows: u32, grid: &[bool], width: u32, height: u32) -> Vec<Rect> {
    // (col0, col1, row0, row1) in tiles, end-exclusive.
    let mut done: Vec<(u32, u32, u32, u32)> = Vec::new();
    let mut open: Vec<(u32, u32, u32, u32)> = Vec::new();
    for row in 0..rows {
        let mut runs = Vec::new();
        let mut col = 0;
        while col < cols {
            if grid[(row * cols + col) as usize] {
                let start = col;
                while col < cols && grid[(row * cols + col) as usize] {
                    col += 1;
                }
                runs.push((start, col));
            } else {
                col += 1;
            }
        }
        let mut next_open = Vec::with_capacity(runs.len());
        for (c0, c1) in runs {
            match open.iter().position(|&(a, b, _, _)| (a, b) == (c0, c1)) {
                Some(i) => {
                    let (a, b, r0, _) = open.swap_remove(i);
                    next_open.push((a, b, r0, row + 1));
                }
                None => next_open.push((c0, c1, row, row + 1)),
            }
        }
        done.append(&mut open);
        open = next_open;
    }
    done.append(&mut open);
    let to_pixels = |(c0, c1, r0, r1): (u32, u32, u32, u32)| Rect {
        x: c0 * TILE,
        y: r0 * TILE,
        width: (c1 * TILE).min(width) - c0 * TILE,
        height: (r1 * TILE).min(height) - r0 * TILE,
    };
    if done.len() > MAX_RECTS {
        let c0 = done.iter().map(|r| r.0).min().unwrap_or(0);
        let c1 = done.iter().map(|r| r.1).max().unwrap_or(0);
        let r0 = done.iter().map(|r| r.2).min().unwrap_or(0);
        let r1 = done.iter().map(|r| r.3).max().unwrap_or(0);
        return vec![to_pixels((c0, c1, r0, r1))];
    }
    done.sort_by_key(|&(c0, _, r0, _)| (r0, c0));
    done.into_iter().map(to_pixels).collect()
}

/// The changed rectangles between two same-size frames.
pub fn changed(prev: &Frame, next: &Frame) -> Vec<Rect> {
    let (cols, rows, grid) = dirty_tiles(prev, next);
    merge(cols, rows, &grid, next.width, next.height)
}

/// A copy of `rect` (inside `frame`) as a frame of its own.
pub fn crop(frame: &Frame, rect: Rect) -> Frame {
    let stride = frame.width as usize * 4;
    let mut bgra = Vec::with_capacity(rect.area() as usize * 4);
    for y in rect.y..rect.y + rect.height {
        let from = y as usize * stride + rect.x as usize * 4;
        bgra.extend_from_slice(&frame.bgra[from..from + rect.width as usize * 4]);
    }
    Frame { width: rect.width, height: rect.height, bgra }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(width: u32, height: u32) -> Frame {
        Frame { width, height, bgra: vec![40; (width * height * 4) as usize] }
    }

    fn poke(f: &mut Frame, x: u32, y: u32) {
        let at = ((y * f.width + x) * 4) as usize;
        f.bgra[at] ^= 0xff;
    }

    #[test]
    fn equal_frames_have_no_changes_and_one_pixel_dirties_one_clipped_tile() {
        let a = flat(200, 100);
        assert!(changed(&a, &a.clone()).is_empty());
        let mut b = a.clone();
        poke(&mut b, 199, 99);
        // The last tile column is 200 - 192 = 8 wide, the last row 100 - 64 = 36 high.
        assert_eq!(changed(&a, &b), [Rect { x: 192, y: 64, width: 8, height: 36 }]);
    }

    #[test]
    fn runs_merge_across_a_row_and_down_equal_spans() {
        let a = flat(640, 320);
        let mut b = a.clone();
        // A 2x2-tile block at tiles (1..3, 1..3), and a lone tile at (8, 0).
        for (x, y) in [(70, 70), (130, 70), (70, 130), (130, 130), (520, 10)] {
            poke(&mut b, x, y);
        }
        assert_eq!(
            changed(&a, &b),
            [Rect { x: 512, y: 0, width: 64, height: 64 }, Rect { x: 64, y: 64, width: 128, height: 128 },]
        );
        // Unequal spans stay separate rectangles.
        let mut c = a.clone();
        for (x, y) in [(10, 10), (70, 10), (10, 70)] {
            poke(&mut c, x, y);
        }
        assert_eq!(
            changed(&a, &c),
            [Rect { x: 0, y: 0, width: 128, height: 64 }, Rect { x: 0, y: 64, width: 64, height: 64 }]
        );
    }

    #[test]
    fn too_many_rectangles_become_their_bounding_box() {
        let a = flat(64 * 20, 64 * 8);
        let mut b = a.clone();
        // A checkerboard: every other tile, no two merge.
        for row in 0..8 {
            for col in (row % 2..20).step_by(2) {
                poke(&mut b, col * 64 + 1, row * 64 + 1);
            }
        }
        assert_eq!(changed(&a, &b), [Rect { x: 0, y: 0, width: 64 * 20, height: 64 * 8 }]);
    }

    #[test]
    fn crop_copies_the_rectangle_rows() {
        let mut f = flat(8, 4);
        for (i, px) in f.bgra.chunks_exact_mut(4).enumerate() {
            px[0] = i as u8;
        }
        let c = crop(&f, Rect { x: 2, y: 1, width: 3, height: 2 });
        assert_eq!((c.width, c.height), (3, 2));
        let firsts: Vec<u8> = c.bgra.chunks_exact(4).map(|p| p[0]).collect();
        assert_eq!(firsts, [10, 11, 12, 18, 19, 20]);
    }
}
