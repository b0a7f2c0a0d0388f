//! Fitting an `ExecResponse` into the reply budget. Everything is returned when it fits;
//! otherwise the budget is split fairly between stdout and stderr (a stream that needs less
//! than half gives the rest to the other), each truncated stream keeps its head and its tail
//! (half and half), and the truncation flags and true totals tell the caller what was cut.

use bytes::Bytes;
use prost::Message;
use tether_proto::pb;

use super::capture::Capture;

/// Worst-case cost of one `bytes` field besides its content: a one-byte key and a
/// length varint of at most 10 bytes.
const BYTES_FIELD_OVERHEAD: usize = 1 + 10;
/// Slack on top of the exact accounting, in case a field is added to the message.
const SAFETY_MARGIN: usize = 16;

/// Fills stdout/stderr, their totals and truncation flags into `base` (which carries the exit
/// code, signal, timing) so that the message encodes to at most `budget` bytes.
pub fn shape(mut base: pb::ExecResponse, out: &Capture, err: &Capture, budget: usize) -> pb::ExecResponse {
    base.stdout = Bytes::new();
    base.stderr = Bytes::new();
    base.stdout_total_bytes = out.total();
    base.stderr_total_bytes = err.total();
    // Size the fixed part with both flags set: the largest it can be.
    base.stdout_truncated = true;
    base.stderr_truncated = true;
    let fixed = base.encoded_len() + 2 * BYTES_FIELD_OVERHEAD + SAFETY_MARGIN;
    let avail = budget.saturating_sub(fixed);
    let (out_share, err_share) = split(avail, out.total(), err.total());
    base.stdout = take(out, out_share);
    base.stderr = take(err, err_share);
    base.stdout_truncated = (base.stdout.len() as u64) < out.total();
    base.stderr_truncated = (base.stderr.len() as u64) < err.total();
    debug_assert!(budget < fixed || base.encoded_len() <= budget);
    base
}

/// Shares of `avail` bytes for two streams needing `a` and `b` bytes.
fn split(avail: usize, a: u64, b: u64) -> (usize, usize) {
    let a = usize::try_from(a).unwrap_or(usize::MAX);
    let b = usize::try_from(b).unwrap_or(usize::MAX);
    if a.saturating_add(b) <= avail {
        return (a, b);
    }
    let half = avail / 2;
    if a <= half {
        (a, avail - a)
    } else if b <= avail - half {
        (avail - b, b)
    } else {
        (half, avail - half)
    }
}

/// At most `share` bytes of `capture`: all of it, or its head and tail half and half.
fn take(capture: &Capture, share: usize) -> Bytes {
    if let Some(all) = capture.all().filter(|all| all.len() <= share) {
        return Bytes::copy_from_slice(all);
    }
    let share = share.min(capture.limit());
    let head_len = share / 2;
    let mut v = Vec::with_capacity(share);
    v.extend_from_slice(capture.head(head_len));
    v.extend_from_slice(&capture.tail(share - head_len));
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(limit: usize, data: &[u8]) -> Capture {
        let mut c = Capture::new(limit);
        c.push(data);
        c
    }

    fn base() -> pb::ExecResponse {
        pb::ExecResponse {
            exit_code: -1,
            timed_out: true,
            duration_ms: u64::MAX,
            signal: 15,
            ..Default::default()
        }
    }

    #[test]
    fn small_output_is_returned_whole() {
        let r = shape(base(), &cap(1000, b"hello"), &cap(1000, b"oops"), 1000);
        assert_eq!(&r.stdout[..], b"hello");
        assert_eq!(&r.stderr[..], b"oops");
        assert!(!r.stdout_truncated && !r.stderr_truncated);
        assert_eq!((r.stdout_total_bytes, r.stderr_total_bytes), (5, 4));
    }

    #[test]
    fn split_is_fair_and_generous() {
        assert_eq!(split(100, 10, 20), (10, 20));
        assert_eq!(split(100, 10, 500), (10, 90));
        assert_eq!(split(100, 500, 3), (97, 3));
        assert_eq!(split(101, 500, 500), (50, 51));
        assert_eq!(split(0, 5, 5), (0, 0));
        assert_eq!(split(10, u64::MAX, 0), (10, 0));
    }

    #[test]
    fn always_fits_and_keeps_head_and_tail() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        for budget in [60, 100, 1000, 4096, 65_536, 200_000, 700_000] {
            for (o, e) in [(0, 300_000), (10, 300_000), (300_000, 300_000), (150_000, 20), (299_000, 1)] {
                let (out, err) = (cap(budget, &data[..o]), cap(budget, &data[..e]));
                let r = shape(base(), &out, &err, budget);
                assert!(r.encoded_len() <= budget, "budget {budget} o {o} e {e}: {}", r.encoded_len());
                for (got, len, truncated) in
                    [(&r.stdout, o, r.stdout_truncated), (&r.stderr, e, r.stderr_truncated)]
                {
                    assert_eq!(truncated, got.len() < len);
                    let h = got.len() / 2;
                    if truncated {
                        assert_eq!(&got[..h], &data[..h]);
                        assert_eq!(&got[h..], &data[len - (got.len() - h)..len]);
                    } else {
                        assert_eq!(&got[..], &data[..len]);
                    }
                }
                // The budget is used, not wasted: within the fixed overhead of full.
                if r.stdout_truncated || r.stderr_truncated {
                    assert!(r.encoded_len() + 64 >= budget, "budget {budget}: {}", r.encoded_len());
                }
                assert_eq!((r.stdout_total_bytes, r.stderr_total_bytes), (o as u64, e as u64));
            }
        }
    }
}
