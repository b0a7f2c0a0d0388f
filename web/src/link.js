// One channel of the relay, kept open: dials `stream` beside the page (same origin, so the CSP's
// connect-src 'self' holds), sends StreamOpen with the token from the fragment, and after a
// lost connection (a relay restart, TRANSPORT_ERROR) dials again with backoff and resumes from
// the next agent-to-viewer seq it wants. Frames below that cursor are dropped, so nothing is
// shown twice. Terminal input typed while the relay is away waits (bounded) and goes first on
// the next connection.

import { TAG, decode, encodeData, encodeOpen, encodeResize } from "./wire.js";

const MIN_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 5000;
/** Terminal input held while the relay is away; more is refused (the user sees "reconnecting"). */
const MAX_WAITING_BYTES = 1 << 20;

export class Link {
  /**
   * @param channel {ws, agent, port, channel, kind}
   * @param token the viewer (ogs_) token
   * @param handlers {data(bytes), live(), state(name, detail)}
   */
  constructor(channel, token, handlers) {
    this.channel = channel;
    this.token = token;
    this.handlers = handlers;
    this.nextSeq = 0n;
    // The relay drops a viewer's input below the seq it last saw from the same token identity,
    // and remembers that across reconnects: a reloaded page must not start below it.
    this.inputSeq = BigInt(Date.now()) * 1000n;
    this.waiting = [];
    this.waitingBytes = 0;
    this.socket = null;
    this.live = false;
    this.over = false;
    this.backoff = MIN_BACKOFF_MS;
  }

  url() {
    const url = new URL("stream", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    url.search = new URLSearchParams({
      ws: this.channel.ws,
      agent: this.channel.agent,
      port: String(this.channel.port),
      channel: this.channel.channel,
    }).toString();
    return url.toString();
  }

  start() {
    this.handlers.state("connecting", "");
    const socket = new WebSocket(this.url());
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    let acked = false;
    socket.onopen = () => socket.send(encodeOpen(this.channel, this.token, this.nextSeq));
    socket.onmessage = (event) => {
      if (typeof event.data === "string") return;
      let msg;
      try {
        msg = decode(event.data);
      } catch (e) {
        return this.lost(socket, `bad frame from the relay: ${e.message}`);
      }
      if (!acked) {
        if (msg.tag !== TAG.OPEN_ACK) return this.lost(socket, "the relay did not acknowledge the open");
        acked = true;
        return this.onAck(socket, msg);
      }
      this.onFrame(socket, msg);
    };
    socket.onclose = () => this.lost(socket, "the connection to the relay was lost");
  }

  onAck(socket, ack) {
    if (!ack.accepted) {
      // The relay calls an expired token retryable (a caller may mint a new one); this page
      // cannot, so it stops and says so.
      if (ack.reason === "expired") return this.end("the token in this URL expired: ask for a new URL");
      if (ack.retryable) return this.lost(socket, ack.error);
      return this.end(`refused: ${ack.error}`);
    }
    if (ack.resumeFromSeq > this.nextSeq) {
      this.handlers.state("gap", `output ${this.nextSeq}..${ack.resumeFromSeq} is no longer held by the relay`);
      this.nextSeq = ack.resumeFromSeq;
    }
    this.live = true;
    this.backoff = MIN_BACKOFF_MS;
    this.handlers.state("live", "");
    this.handlers.live();
    for (const msg of this.waiting) socket.send(msg);
    this.waiting = [];
    this.waitingBytes = 0;
  }

  onFrame(socket, msg) {
    if (msg.tag === TAG.DATA) {
      if (msg.seq < this.nextSeq) return; // already shown (replayed after a resume)
      if (msg.seq > this.nextSeq) this.handlers.state("gap", `output ${this.nextSeq}..${msg.seq} was lost`);
      this.nextSeq = msg.seq + 1n;
      this.handlers.data(msg.data);
    } else if (msg.tag === TAG.CLOSE) {
      if (msg.reason === "TRANSPORT_ERROR") return this.lost(socket, msg.message);
      this.end(`closed (${msg.reason})${msg.message ? `: ${msg.message}` : ""}`);
    }
  }

  /** The connection `socket` ended: dial again after a pause (once per socket). */
  lost(socket, why) {
    if (this.over || socket !== this.socket) return;
    this.socket = null;
    this.live = false;
    socket.onclose = socket.onmessage = null;
    socket.close();
    this.handlers.state("reconnecting", why);
    setTimeout(() => this.start(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
  }

  /** The channel is over for good (closed by the producer, or the token was refused). */
  end(why) {
    this.over = true;
    this.live = false;
    if (this.socket) {
      this.socket.onclose = this.socket.onmessage = null;
      this.socket.close();
      this.socket = null;
    }
    this.handlers.state("closed", why);
  }

  /** Terminal input: numbered, sent now or on the next connection. False when refused. */
  sendInput(bytes) {
    if (this.over || bytes.length === 0) return false;
    if (!this.live && this.waitingBytes + bytes.length > MAX_WAITING_BYTES) return false;
    const msg = encodeData(this.channel.channel, this.inputSeq, bytes);
    this.inputSeq += 1n;
    this.queue(msg, bytes.length);
    return true;
  }

  /** A terminal size: only the newest matters; the view sends it again on every `live()`. */
  sendResize(cols, rows) {
    if (this.live) this.socket.send(encodeResize(cols, rows));
  }

  /** A desktop input event: sent when live, dropped otherwise (a stale pointer move is noise). */
  sendNow(msg) {
    if (this.live) this.socket.send(msg);
  }

  queue(msg, size) {
    if (this.live) {
      this.socket.send(msg);
    } else {
      this.waiting.push(msg);
      this.waitingBytes += size;
    }
  }
}
