//! An fs_read's content read straight into the buffer its reply is published from.
//!
//! Built the usual way, a 1 MiB read costs a zeroed buffer, the read, and a second buffer the
//! content is copied into while the `ControlResponse` is encoded. Here the file is read into
//! spare capacity behind room for the reply's header; once the request id and the content's
//! length are known, the header is written right-aligned into that room, the total size is
//! appended, and the bytes are exactly what prost would have encoded (the tests compare them).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use bytes::{Buf, Bytes};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tether_proto::pb;

/// Room in front of the content for the header: the request id's field, then the keys and
/// lengths of `fs_read` and of its content. It holds ids of up to 96 bytes; a longer one costs
/// one copy of the content.
const HEAD_ROOM: usize = 128;
/// The total size's field after the content: a key and a varint.
const TAIL_ROOM: usize = 11;

/// `ControlResponse.request_id`, `ControlResponse.fs_read` and its fields.
const REQUEST_ID: u32 = 1;
const FS_READ: u32 = 14;
const CONTENT: u32 = 1;
const TOTAL_SIZE: u32 = 2;

/// The content of a read, held behind room for its reply's header.
pub struct ReadContent {
    /// `HEAD_ROOM` bytes of room, then the content.
    buf: Vec<u8>,
    total_size: u64,
}

impl ReadContent {
    /// Reads up to `want` bytes of `file` from `offset` (fewer if the file ends first).
    pub fn read(file: &File, offset: u64, want: usize, total_size: u64) -> io::Result<ReadContent> {
        let mut buf = Vec::with_capacity(HEAD_ROOM + want + TAIL_ROOM);
        buf.resize(HEAD_ROOM, 0);
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        // read_to_end fills the spare capacity without zeroing it first.
        file.take(want as u64).read_to_end(&mut buf)?;
        Ok(ReadContent { buf, total_size })
    }

    fn content_len(&self) -> usize {
        self.buf.len() - HEAD_ROOM
    }

    /// The reply as a message (no copy: the content is a slice of the buffer).
    pub fn into_message(self) -> pb::FsReadResponse {
        let total_size = self.total_size;
        pb::FsReadResponse { content: Bytes::from(self.buf).slice(HEAD_ROOM..), total_size }
    }

    /// The encoded `ControlResponse` answering `request_id` with this content; the content is
    /// copied only when the id does not fit the room, and a reply over `max_payload` becomes
    /// PAYLOAD_TOO_LARGE as any other.
    pub fn into_response(mut self, request_id: String, max_payload: usize) -> Bytes {
        let n = self.content_len();
        let tail_len = match self.total_size {
            0 => 0,
            total => key_len(TOTAL_SIZE) + encoded_len_varint(total),
        };
        let mut message_len = tail_len;
        if n > 0 {
            message_len += key_len(CONTENT) + encoded_len_varint(n as u64) + n;
        }
        let mut head = Vec::with_capacity(HEAD_ROOM);
        if !request_id.is_empty() {
            encode_key(REQUEST_ID, WireType::LengthDelimited, &mut head);
            encode_varint(request_id.len() as u64, &mut head);
            head.extend_from_slice(request_id.as_bytes());
        }
        encode_key(FS_READ, WireType::LengthDelimited, &mut head);
        encode_varint(message_len as u64, &mut head);
        if n > 0 {
            encode_key(CONTENT, WireType::LengthDelimited, &mut head);
            encode_varint(n as u64, &mut head);
        }
        if head.len() > HEAD_ROOM || head.len() + n + tail_len > max_payload {
            let reply = pb::control_response::Result::FsRead(self.into_message());
            return crate::dispatch::encode(request_id, Ok(reply), max_payload);
        }
        let start = HEAD_ROOM - head.len();
        self.buf[start..HEAD_ROOM].copy_from_slice(&head);
        if self.total_size > 0 {
            encode_key(TOTAL_SIZE, WireType::Varint, &mut self.buf);
            encode_varint(self.total_size, &mut self.buf);
        }
        let mut bytes = Bytes::from(self.buf);
        bytes.advance(start);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use prost::Message;

    use super::*;

    fn file_of(len: usize) -> File {
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        file.write_all(&content).unwrap();
        file
    }

    fn prost_encoded(request_id: &str, content: &[u8], total_size: u64) -> Vec<u8> {
        let reply = pb::FsReadResponse { content: Bytes::copy_from_slice(content), total_size };
        pb::ControlResponse {
            request_id: request_id.into(),
            error: None,
            result: Some(pb::control_response::Result::FsRead(reply)),
        }
        .encode_to_vec()
    }

    #[test]
    fn the_reply_is_byte_for_byte_what_prost_encodes() {
        let sizes = [0, 1, 127, 128, 16_383, 16_384, 300_000, (1 << 20) - 40];
        let ids = [String::new(), "r".into(), "4d2a9c6e-0a1b-4c3d-9e8f-1234567890ab".into(), "x".repeat(96)];
        for len in sizes {
            let file = file_of(len + 10);
            for id in &ids {
                for (offset, total) in [(0, len as u64 + 10), (10, 0), (3, 1 << 40)] {
                    let read = ReadContent::read(&file, offset, len, total).unwrap();
                    let want = &read.buf[HEAD_ROOM..].to_vec();
                    let got = read.into_response(id.clone(), 2 << 20);
                    assert_eq!(got, prost_encoded(id, want, total), "{len} bytes, id {id:?}, total {total}");
                }
            }
        }
    }

    #[test]
    fn a_long_request_id_or_a_short_file_still_encodes_exactly() {
        let file = file_of(5000);
        let id = "y".repeat(300);
        let read = ReadContent::read(&file, 4000, 4096, 5000).unwrap();
        assert_eq!(read.content_len(), 1000, "the read stops at the end of the file");
        let content = read.buf[HEAD_ROOM..].to_vec();
        assert_eq!(read.into_response(id.clone(), 1 << 20), prost_encoded(&id, &content, 5000));
    }

    #[test]
    fn a_reply_over_max_payload_is_refused_as_too_large() {
        let read = ReadContent::read(&file_of(4096), 0, 4096, 4096).unwrap();
        let reply = pb::ControlResponse::decode(read.into_response("r".into(), 1000)).unwrap();
        let error = reply.error.expect("an error");
        assert_eq!(error.code, pb::ErrorCode::PayloadTooLarge as i32, "{error:?}");
    }
}
