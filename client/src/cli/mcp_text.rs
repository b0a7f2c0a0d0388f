//! What an assistant reads back from `tetherctl mcp`: agent replies and failures turned into
//! plain text. Pure functions, so the wording and the truncation are tested without an agent.
//!
//! Output is cut the way the agent cuts exec output (the head and the tail are kept, the middle
//! goes) and the text always says so: a model that is not told about a cut trusts what it sees.

use tether_client::{ClientError, pb};

use super::format;

/// The error code without its `ERROR_CODE_` prefix: `NOT_FOUND`.
pub fn code_name(code: pb::ErrorCode) -> &'static str {
    code.as_str_name().trim_start_matches("ERROR_CODE_")
}

/// The text of a failed tool call. An agent refusal keeps its code and message; a refused
/// screen input says it was refused and that only the machine's owner can change that.
pub fn error_text(err: &ClientError) -> String {
    if err.code() == Some(pb::ErrorCode::ConsentRequired) {
        return format!(
            "Refused by the agent: {err}. The machine's owner has not consented to screen control; \
             this cannot be changed from here."
        );
    }
    let mut text = match err.code() {
        Some(code) => format!("{}: {err}", code_name(code)),
        None => format!("error: {err}"),
    };
    if err.retryable() {
        text.push_str(" (retryable: the same call may succeed later)");
    }
    text
}

/// One output stream as text, at most `cap` bytes of it, and a note when anything was cut.
///
/// `kept` is what the agent returned; when `agent_cut` is set it is the head and the tail of
/// the output, half and half (see the agent's exec shaping), of `total` bytes in all. A stream
/// longer than `cap` is cut again the same way.
pub fn stream_text(
    name: &str,
    kept: &[u8],
    agent_cut: bool,
    total: u64,
    cap: usize,
) -> (String, Option<String>) {
    let (head, tail) = if agent_cut { kept.split_at(kept.len() / 2) } else { (kept, &[][..]) };
    let (head, tail) = if head.len() + tail.len() > cap {
        let head_cap = cap / 2;
        let tail_cap = cap - head_cap;
        // Without an agent cut the tail still comes from the end of the whole output.
        let (head, tail) =
            if tail.is_empty() { head.split_at(head.len() - tail_cap.min(head.len())) } else { (head, tail) };
        (&head[..head_cap.min(head.len())], &tail[tail.len() - tail_cap.min(tail.len())..])
    } else {
        (head, tail)
    };
    let shown = (head.len() + tail.len()) as u64;
    let total = total.max(shown);
    let missing = total - shown;
    if missing == 0 {
        let mut all = head.to_vec();
        all.extend_from_slice(tail);
        return (String::from_utf8_lossy(&all).into_owned(), None);
    }
    let text = format!(
        "{}\n[... {missing} bytes cut here ...]\n{}",
        String::from_utf8_lossy(head),
        String::from_utf8_lossy(tail)
    );
    let note = format!(
        "{name} truncated: showing the first {} and the last {} of {total} bytes",
        head.len(),
        tail.len()
    );
    (text, Some(note))
}

/// A finished command: its status, its output, and what the caller should know about it.
pub fn exec_text(reply: &pb::ExecResponse, cap: usize) -> String {
    let status = if reply.timed_out {
        format!("timed out after {} ms and was killed", reply.duration_ms)
    } else if reply.signal > 0 {
        format!("killed by signal {}", reply.signal)
    } else {
        format!("exit code {}", reply.exit_code)
    };
    let mut text = format!("{status} ({} ms)\n", reply.duration_ms);
    let streams = [
        ("stdout", &reply.stdout, reply.stdout_truncated, reply.stdout_total_bytes),
        ("stderr", &reply.stderr, reply.stderr_truncated, reply.stderr_total_bytes),
    ];
    let mut notes = Vec::new();
    for (name, bytes, cut, total) in streams {
        if bytes.is_empty() && total == 0 {
            continue;
        }
        let (body, note) = stream_text(name, bytes, cut, total, cap);
        text.push_str(&format!("--- {name} ---\n{body}"));
        if !body.ends_with('\n') {
            text.push('\n');
        }
        notes.extend(note);
    }
    for note in notes {
        text.push_str(&format!("[{note}]\n"));
    }
    text
}

/// A piece of a file: its text (or a note that it is not text) and where the rest is.
pub fn read_text(path: &str, content: &[u8], offset: u64, total: u64) -> String {
    let end = offset + content.len() as u64;
    let mut text = match std::str::from_utf8(content) {
        Ok(text) => text.to_owned(),
        // A cut through the last character is still text.
        Err(e) if e.error_len().is_none() && end < total => {
            String::from_utf8_lossy(&content[..e.valid_up_to()]).into_owned()
        }
        Err(_) => format!(
            "[{path} is not UTF-8 text; {} bytes shown with replacement characters]\n{}",
            content.len(),
            String::from_utf8_lossy(content)
        ),
    };
    if offset > 0 || end < total {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("[bytes {offset}..{end} of {total}"));
        if end < total {
            text.push_str(&format!("; call read_file with offset {end} for more"));
        }
        text.push(']');
    }
    text
}

/// A directory listing, one entry a line.
pub fn list_text(path: &str, reply: &pb::FsListResponse) -> String {
    let mut lines: Vec<String> = reply.entries.iter().map(format::entry_line).collect();
    if lines.is_empty() {
        lines.push(format!("({} is empty)", if path.is_empty() { "the workspace root" } else { path }));
    }
    if reply.truncated {
        lines.push(format!(
            "[truncated: {} entries shown; list a subdirectory or raise max_entries]",
            reply.entries.len()
        ));
    }
    lines.join("\n")
}

/// What a screenshot shows and how its pixels map to the screen's.
pub fn screenshot_text(shot: &pb::DesktopScreenshotResponse) -> String {
    let (w, h) = (shot.width, shot.height);
    let (nw, nh) = (shot.native_width.max(1), shot.native_height.max(1));
    let scale = f64::from(w) / f64::from(nw);
    let mut text = format!("Screenshot {w}x{h} of the {nw}x{nh} screen, scale {scale:.3}");
    if (w, h) != (nw, nh) {
        text.push_str(&format!(" (one image pixel is {:.2} screen pixels)", 1.0 / scale.max(f64::EPSILON)));
    }
    text.push_str(
        ". Give click, scroll and desktop_act coordinates in this image's pixels; \
         they are mapped to the screen.",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn short_output_is_shown_whole_without_a_note() {
        let (text, note) = stream_text("stdout", b"hello\n", false, 6, 100);
        assert_eq!(text, "hello\n");
        assert!(note.is_none());
    }

    #[test]
    fn output_cut_by_the_agent_shows_where_and_says_so() {
        // The agent kept "abcd" (head "ab", tail "cd") of 10 bytes.
        let (text, note) = stream_text("stdout", b"abcd", true, 10, 100);
        assert_eq!(text, "ab\n[... 6 bytes cut here ...]\ncd");
        assert_eq!(note.as_deref(), Some("stdout truncated: showing the first 2 and the last 2 of 10 bytes"));
    }

    #[test]
    fn long_output_is_cut_to_the_cap_keeping_head_and_tail() {
        let (text, note) = stream_text("stderr", b"0123456789", false, 10, 4);
        assert_eq!(text, "01\n[... 6 bytes cut here ...]\n89");
        assert!(note.unwrap().contains("first 2 and the last 2 of 10"));
        // Cut by the agent and again by the cap: the outer ends survive.
        let (text, _) = stream_text("stdout", b"abcdefgh", true, 100, 4);
        assert_eq!(text, "ab\n[... 96 bytes cut here ...]\ngh");
    }

    #[test]
    fn exec_text_states_status_and_truncation() {
        let reply = pb::ExecResponse {
            exit_code: 3,
            duration_ms: 12,
            stdout: bytes::Bytes::from_static(b"abcd"),
            stdout_truncated: true,
            stdout_total_bytes: 10,
            ..Default::default()
        };
        let text = exec_text(&reply, 1000);
        assert!(text.starts_with("exit code 3 (12 ms)\n--- stdout ---\nab\n"), "{text}");
        assert!(
            text.contains("[stdout truncated: showing the first 2 and the last 2 of 10 bytes]"),
            "{text}"
        );
        assert!(!text.contains("stderr"), "{text}");
        let timed_out = pb::ExecResponse { timed_out: true, duration_ms: 500, ..Default::default() };
        assert!(exec_text(&timed_out, 10).starts_with("timed out after 500 ms and was killed"));
    }

    #[test]
    fn reads_say_where_the_rest_is() {
        assert_eq!(read_text("a", b"hi\n", 0, 3), "hi\n");
        assert_eq!(
            read_text("a", b"hi", 0, 10),
            "hi\n[bytes 0..2 of 10; call read_file with offset 2 for more]"
        );
        assert_eq!(read_text("a", b"yo", 8, 10), "yo\n[bytes 8..10 of 10]");
        // A cut through a two-byte character drops its first byte, not the text.
        assert!(read_text("a", "é".as_bytes().get(..1).unwrap(), 0, 2).starts_with("[bytes 0..1"));
        assert!(read_text("b", &[0xff, 0xfe], 0, 2).contains("not UTF-8"));
    }

    #[test]
    fn refusals_and_agent_errors_read_as_such() {
        let agent = |code, retryable| ClientError::Agent {
            code,
            message: "no such file: /w/x".into(),
            retryable,
            detail: HashMap::new(),
        };
        assert_eq!(error_text(&agent(pb::ErrorCode::NotFound, false)), "NOT_FOUND: no such file: /w/x");
        assert!(
            error_text(&agent(pb::ErrorCode::Timeout, true))
                .ends_with("(retryable: the same call may succeed later)")
        );
        let refused = error_text(&agent(pb::ErrorCode::ConsentRequired, false));
        assert!(refused.starts_with("Refused by the agent"), "{refused}");
    }

    #[test]
    fn screenshots_state_their_scale() {
        let shot = pb::DesktopScreenshotResponse {
            width: 1280,
            height: 800,
            native_width: 2560,
            native_height: 1600,
            ..Default::default()
        };
        let text = screenshot_text(&shot);
        assert!(text.starts_with("Screenshot 1280x800 of the 2560x1600 screen, scale 0.500"), "{text}");
        assert!(text.contains("one image pixel is 2.00 screen pixels"), "{text}");
    }
}
