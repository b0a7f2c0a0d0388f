// The relay's framing (PROTOCOL.md §7), for the few messages the page speaks: one binary
// websocket message = 1 tag byte + a protobuf body. A hand-written encoder/decoder instead of a
// protobuf library: six small messages do not earn a runtime and a code generator. Field
// numbers are those of proto/proto/tether.proto:
//
//   tag 1 StreamOpen      channel=1 StreamChannel, token=2 string, role=3 enum, resume_from_seq=4 uint64
//         StreamChannel   channel_id=1, workspace_id=2, agent_id=3 (strings), kind=4 enum, port=5 uint32
//   tag 2 StreamOpenAck   accepted=1 bool, error=2 AgentError, resume_from_seq=3 uint64
//         AgentError      code=1 enum, message=2 string, retryable=3 bool, detail=4 map<string,string>
//                         (a map entry is a message: key=1, value=2; the relay puts "reason" there)
//   tag 3 StreamFrame     channel_id=1 string, seq=2 uint64, data=3 bytes, produced_at_ms=4 int64,
//                         delta=100 bool (a desktop tile frame; the page sniffs the data instead)
//   tag 4 StreamClose     channel_id=1 string, reason=2 enum, message=3 string
//   tag 5 DesktopInput    channel_id=1 string; pointer=2 | key=3 | scroll=4
//         PointerEvent    x=1 int32, y=2 int32, action=3, button=4, space_width=100, space_height=101
//         KeyEvent        key=1 string, is_text=2 bool, action=3
//         ScrollEvent     x=1, y=2, delta_x=3, delta_y=4 (int32), space_width=100, space_height=101, at_pointer=102 bool
//   tag 6 PtyResize       cols=1, rows=2 (uint32)
//
// Sequence numbers are uint64: they are BigInt here so no value is rounded.

export const TAG = { OPEN: 1, OPEN_ACK: 2, DATA: 3, CLOSE: 4, DESKTOP_INPUT: 5, PTY_RESIZE: 6 };
export const KIND = { PTY: 1, DESKTOP: 2 };
export const ROLE_CLIENT = 2;
export const CLOSE_REASON = ["UNSPECIFIED", "NORMAL", "PROCESS_EXIT", "FENCED", "TRANSPORT_ERROR", "RATE_LIMITED"];
export const POINTER = { MOVE: 1, DOWN: 2, UP: 3 };
export const BUTTON = { LEFT: 1, RIGHT: 2, MIDDLE: 3 };
export const KEY_PRESS = 3;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** Collects protobuf fields into bytes. */
class Writer {
  constructor() {
    this.bytes = [];
  }
  varint(value) {
    // int32 negatives are sign-extended to 64 bits, as protobuf does.
    let v = BigInt.asUintN(64, BigInt(value));
    while (v >= 0x80n) {
      this.bytes.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.bytes.push(Number(v));
    return this;
  }
  key(field, wireType) {
    return this.varint((field << 3) | wireType);
  }
  uint(field, value) {
    return value ? this.key(field, 0).varint(value) : this;
  }
  bool(field, value) {
    return value ? this.key(field, 0).varint(1) : this;
  }
  raw(field, data) {
    this.key(field, 2).varint(data.length);
    for (const b of data) this.bytes.push(b);
    return this;
  }
  string(field, text) {
    return text ? this.raw(field, utf8.encode(text)) : this;
  }
  message(field, writer) {
    return this.raw(field, writer.bytes);
  }
  /** The frame: the tag byte, then these fields. */
  frame(tag) {
    return Uint8Array.from([tag, ...this.bytes]);
  }
}

/** Reads the fields of one protobuf message: `fields(bytes)` yields [field, value]. */
function* fields(bytes) {
  let at = 0;
  const varint = () => {
    let v = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (at >= bytes.length || shift > 63n) throw new Error("truncated varint");
      const b = bytes[at++];
      v |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return v;
    }
  };
  while (at < bytes.length) {
    const key = Number(varint());
    const field = key >>> 3;
    switch (key & 7) {
      case 0:
        yield [field, varint()];
        break;
      case 1:
        at += 8;
        break;
      case 2: {
        const len = Number(varint());
        if (at + len > bytes.length) throw new Error("truncated field");
        yield [field, bytes.subarray(at, at + len)];
        at += len;
        break;
      }
      case 5:
        at += 4;
        break;
      default:
        throw new Error(`unsupported wire type ${key & 7}`);
    }
  }
}

/** StreamOpen for a viewer (role CLIENT) of `channel` {ws, agent, port, channel, kind}. */
export function encodeOpen(channel, token, resumeFromSeq) {
  const ch = new Writer()
    .string(1, channel.channel)
    .string(2, channel.ws)
    .string(3, channel.agent)
    .uint(4, channel.kind)
    .uint(5, channel.port);
  return new Writer()
    .message(1, ch)
    .string(2, token)
    .uint(3, ROLE_CLIENT)
    .uint(4, resumeFromSeq)
    .frame(TAG.OPEN);
}

/** A StreamFrame of viewer input. */
export function encodeData(channelId, seq, data) {
  return new Writer().string(1, channelId).uint(2, seq).raw(3, data).frame(TAG.DATA);
}

export function encodeResize(cols, rows) {
  return new Writer().uint(1, cols).uint(2, rows).frame(TAG.PTY_RESIZE);
}

/** DesktopInput with a pointer event: {x, y, action, button, width, height} (x, y in width×height). */
export function encodePointer(channelId, p) {
  const e = new Writer()
    .uint(1, p.x)
    .uint(2, p.y)
    .uint(3, p.action)
    .uint(4, p.button || 0)
    .uint(100, p.width)
    .uint(101, p.height);
  return new Writer().string(1, channelId).message(2, e).frame(TAG.DESKTOP_INPUT);
}

/** DesktopInput with a key event: a chord ("ctrl+c", "Enter") or text. */
export function encodeKey(channelId, key, isText) {
  const e = new Writer().string(1, key).bool(2, isText).uint(3, KEY_PRESS);
  return new Writer().string(1, channelId).message(3, e).frame(TAG.DESKTOP_INPUT);
}

/** DesktopInput with a scroll event: {x, y, dx, dy, width, height} (notches, positive = right/down). */
export function encodeScroll(channelId, s) {
  const e = new Writer()
    .uint(1, s.x)
    .uint(2, s.y)
    .uint(3, s.dx)
    .uint(4, s.dy)
    .uint(100, s.width)
    .uint(101, s.height);
  return new Writer().string(1, channelId).message(4, e).frame(TAG.DESKTOP_INPUT);
}

/**
 * Decodes one relay message into {tag, ...}: OPEN_ACK {accepted, error, reason, retryable, resumeFromSeq},
 * DATA {seq, data}, CLOSE {reason, message}; other tags come back as {tag} alone.
 */
export function decode(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length === 0) throw new Error("empty relay message");
  const tag = bytes[0];
  const body = bytes.subarray(1);
  switch (tag) {
    case TAG.OPEN_ACK: {
      const ack = { tag, accepted: false, error: "", reason: "", retryable: false, resumeFromSeq: 0n };
      for (const [f, v] of fields(body)) {
        if (f === 1) ack.accepted = v !== 0n;
        if (f === 3) ack.resumeFromSeq = v;
        if (f === 2) {
          for (const [ef, ev] of fields(v)) {
            if (ef === 2) ack.error = fromUtf8.decode(ev);
            if (ef === 3) ack.retryable = ev !== 0n;
            if (ef === 4) {
              const entry = {};
              for (const [kf, kv] of fields(ev)) entry[kf] = fromUtf8.decode(kv);
              if (entry[1] === "reason") ack.reason = entry[2] || "";
            }
          }
        }
      }
      return ack;
    }
    case TAG.DATA: {
      const frame = { tag, seq: 0n, data: new Uint8Array(0) };
      for (const [f, v] of fields(body)) {
        if (f === 2) frame.seq = v;
        if (f === 3) frame.data = v;
      }
      return frame;
    }
    case TAG.CLOSE: {
      const close = { tag, reason: "UNSPECIFIED", message: "" };
      for (const [f, v] of fields(body)) {
        if (f === 2) close.reason = CLOSE_REASON[Number(v)] || `reason ${v}`;
        if (f === 3) close.message = fromUtf8.decode(v);
      }
      return close;
    }
    default:
      return { tag };
  }
}
