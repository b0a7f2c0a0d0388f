//! The desktop stream (`desktop_ensure`): one channel per agent (kind DESKTOP, port 6080) fed by
//! one capture loop, however often it is ensured. The loop reuses the desktop ops' pieces
//! (capture on the desktop thread, encode on the blocking pool) and sends a frame only when
//! the screen changed (a byte compare of the capture, well under a millisecond), at most `fps`
//! a second, JPEG by default; where the display reports drawing (X11 DAMAGE), a tick with
//! nothing drawn captures nothing, so a static screen costs next to nothing. A viewer that joins
//! gets the current frame at once. The ensure
//! that opens the channel picks its frame encoding: WHOLE (every frame a whole image, so a
//! viewer never needs an older one) or TILES (key frames and deltas of changed rectangles; see
//! [`super::frames`]). While no viewer has been attached for [`PAUSE_AFTER`] the loop stops
//! capturing, until a viewer joins or the stream is ensured again. DesktopInput from viewers is
//! injected only with screen-control consent (the relay already drops it from view-mode
//! tokens); each refusal is counted. An epoch advance of the fence scope that opened the
//! channel closes it FENCED.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tether_proto::pb;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frames::{FrameEncoder, StreamFrame};
use super::pump::{Endpoint, Inbound, Pump};
use crate::config::RelayLink;
use crate::error::{OpError, OpResult};
use crate::fence::Fence;
use crate::ops::desktop::encode::Format;
use crate::ops::desktop::request;
use crate::ops::desktop::thread::ScreenThread;
use crate::ops::pty::FencedBy;

/// The logical port of the desktop stream.
pub const DESKTOP_PORT: u32 = 6080;
/// How long ensure waits for the relay to accept the channel.
const OPEN_WAIT: Duration = Duration::from_secs(15);
/// Bytes of recent frames kept to resend after a relay restart (WHOLE frames are whole images,
/// so little is needed: a viewer only wants the newest; TILES keeps a key frame and the deltas
/// after it, at most about two key frames).
const OUTBOX_BYTES: usize = 2 << 20;
const TILES_OUTBOX_BYTES: usize = 4 << 20;
/// Largest frame sent: under the relay's default message limit (1 MiB) with room for the
/// envelope. A larger image is downscaled until it fits, as screenshots are.
const MAX_FRAME_BYTES: usize = (1 << 20) - 4096;
/// With no viewer attached for this long, capturing stops until one joins (or an ensure).
pub const PAUSE_AFTER: Duration = Duration::from_secs(30);
/// Where the screen reports what is drawn (X11 DAMAGE), a tick with nothing drawn captures
/// nothing; still, one capture in this long is compared in case a change went unreported.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// How the stream encodes frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    pub fps: u32,
    pub format: Format,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { fps: 10, format: Format::Jpeg { quality: 70 } }
    }
}

struct Live {
    channel: pb::StreamChannel,
    encoding: pb::DesktopFrameEncoding,
    /// Fires when the channel has ended (the capture loop stopped).
    ended: CancellationToken,
    /// Wakes a paused capture loop.
    wake: Arc<Notify>,
}

/// The agent's one desktop stream.
pub struct DesktopStream {
    relay: Option<RelayLink>,
    ids: (String, String),
    options: StreamOptions,
    screen: ScreenThread,
    consent: bool,
    fence: Arc<Fence>,
    live: tokio::sync::Mutex<Option<Live>>,
    next_id: AtomicU64,
    pumps: TaskTracker,
    /// Viewer input refused for want of consent.
    pub refused_inputs: Arc<AtomicU64>,
}

impl DesktopStream {
    pub fn new(
        relay: Option<RelayLink>,
        (workspace_id, agent_id): (&str, &str),
        options: StreamOptions,
        screen: ScreenThread,
        consent: bool,
        fence: Arc<Fence>,
    ) -> Self {
        DesktopStream {
            relay,
            ids: (workspace_id.to_owned(), agent_id.to_owned()),
            options,
            screen,
            consent,
            fence,
            live: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(0),
            pumps: TaskTracker::new(),
            refused_inputs: Arc::default(),
        }
    }

    /// Returns the live channel and its frame encoding, or opens one (with the encoding the
    /// request asks for) and returns once the relay holds it.
    pub async fn ensure(
        &self,
        request: &pb::DesktopEnsureRequest,
        fenced: FencedBy,
    ) -> OpResult<(pb::StreamChannel, pb::DesktopFrameEncoding)> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref().filter(|l| !l.ended.is_cancelled()) {
            l.wake.notify_one();
            return Ok((l.channel.clone(), l.encoding));
        }
        let encoding = request.frame_encoding();
        let tiles = encoding == pb::DesktopFrameEncoding::Tiles;
        let relay = self.relay.clone().ok_or_else(|| {
            OpError::unsupported("no relay is configured (--relay-url): the desktop cannot stream")
        })?;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let channel = pb::StreamChannel {
            channel_id: format!("desktop-{}-{}-{n}", self.ids.1, std::process::id()),
            workspace_id: self.ids.0.clone(),
            agent_id: self.ids.1.clone(),
            kind: pb::StreamKind::Desktop as i32,
            port: DESKTOP_PORT,
        };
        let (out_tx, output) = mpsc::channel(2);
        let (inbound, in_rx) = mpsc::channel(256);
        let (end_tx, end) = oneshot::channel();
        let (viewers, viewers_rx) = watch::channel(0);
        let outbox = if tiles { TILES_OUTBOX_BYTES } else { OUTBOX_BYTES };
        let pump = Pump::new(relay, channel.clone(), Endpoint { output, inbound, end, viewers }, outbox);
        let (accepted_tx, accepted) = oneshot::channel();
        self.pumps.spawn(pump.run(accepted_tx));
        let ended = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let capture = Capture {
            screen: self.screen.clone(),
            fps: self.options.fps,
            encoder: FrameEncoder::new(
                tiles,
                self.options.format,
                (request.width, request.height),
                MAX_FRAME_BYTES,
            ),
            output: out_tx,
            viewers: viewers_rx,
            wake: wake.clone(),
        };
        let done = ended.clone();
        let fence = self.fence.clone();
        tokio::spawn(async move {
            let mut close = capture.run(fenced.cancel.clone()).await;
            if close.reason == pb::StreamCloseReason::Fenced as i32
                && !fence.is_stale(&fenced.scope, fenced.epoch).await
            {
                close = self::close(pb::StreamCloseReason::Normal, "the agent is stopping");
            }
            let _ = end_tx.send(close);
            done.cancel();
        });
        tokio::spawn(inject(in_rx, self.screen.clone(), self.consent, self.refused_inputs.clone()));
        match tokio::time::timeout(OPEN_WAIT, accepted).await {
            Ok(Ok(Ok(()))) => {}
            other => {
                ended.cancel();
                let why = match other {
                    Ok(Ok(Err(e))) => e.to_string(),
                    _ => format!("the relay did not accept the channel within {OPEN_WAIT:?}"),
                };
                return Err(OpError::new(pb::ErrorCode::Stream, why).retryable());
            }
        }
        tracing::info!(channel = %channel.channel_id, fps = self.options.fps, encoding = encoding.as_str_name(), "desktop stream open");
        *live = Some(Live { channel: channel.clone(), encoding, ended, wake });
        Ok((channel, encoding))
    }
}

/// The capture side of one channel.
struct Capture {
    screen: ScreenThread,
    fps: u32,
    encoder: FrameEncoder,
    output: mpsc::Sender<StreamFrame>,
    viewers: watch::Receiver<u32>,
    wake: Arc<Notify>,
}

impl Capture {
    /// Streams until `stop` (an epoch advance: FENCED, or shutdown) or the pump goes away;
    /// returns the channel's StreamClose.
    async fn run(mut self, stop: CancellationToken) -> pb::StreamClose {
        let period = Duration::from_secs(1) / self.fps.clamp(1, 60);
        // A blank copy to start over from should an encode panic (and take its state along).
        let blank = self.encoder.clone();
        let mut encoder = Some(self.encoder);
        let mut watched = 0u32;
        let mut unwatched_since = Instant::now();
        let mut next = Instant::now();
        // When the screen was last captured; `None` after a pause (the next tick must capture).
        let mut looked: Option<Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return close(pb::StreamCloseReason::Fenced, "the fence scope moved past the epoch that opened this stream"),
                () = tokio::time::sleep_until(next) => {}
            }
            next += period;
            let viewers = *self.viewers.borrow_and_update();
            if viewers > 0 {
                unwatched_since = Instant::now();
            } else if unwatched_since.elapsed() >= PAUSE_AFTER {
                tracing::debug!("no viewer for a while: desktop capture paused");
                tokio::select! {
                    () = stop.cancelled() => continue,
                    _ = self.viewers.changed() => {}
                    () = self.wake.notified() => {}
                }
                unwatched_since = Instant::now();
                next = Instant::now();
                looked = None;
                if let Some(e) = encoder.as_mut() {
                    e.reset();
                }
                continue;
            }
            // A viewer joined: it gets the current frame even if nothing changed.
            let joined = viewers > watched;
            watched = viewers;
            let must = joined || looked.is_none_or(|t| t.elapsed() >= RECHECK_AFTER);
            let captured = self.screen.run(move |s| match s.drawn_since_last_asked() {
                Some(false) if !must => Ok(None),
                _ => s.capture(false).map(Some),
            });
            let frame = match captured.await {
                Ok(Some(frame)) => {
                    looked = Some(Instant::now());
                    frame
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e.message, "desktop stream capture failed; retrying in a second");
                    next = Instant::now() + Duration::from_secs(1);
                    continue;
                }
            };
            let mut enc = encoder.take().unwrap_or_else(|| blank.clone());
            let encoded = tokio::task::spawn_blocking(move || {
                let out = enc.next(frame, joined);
                (enc, out)
            })
            .await;
            let sent = match encoded {
                Ok((enc, out)) => {
                    encoder = Some(enc);
                    out
                }
                Err(e) => {
                    // The encoder panicked and its state went with it: the next frame is a key.
                    tracing::warn!(error = %e, "desktop stream encode failed");
                    continue;
                }
            };
            let frame = match sent {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e.message, "desktop stream encode failed");
                    continue;
                }
            };
            if self.output.send(frame).await.is_err() {
                return close(pb::StreamCloseReason::TransportError, "the stream's pump stopped");
            }
            // Never fall behind by more than one period (a slow encode skips ticks).
            next = next.max(Instant::now());
        }
    }
}

fn close(reason: pb::StreamCloseReason, message: &str) -> pb::StreamClose {
    pb::StreamClose { channel_id: String::new(), reason: reason as i32, message: message.to_owned() }
}

/// Injects viewer input under the consent rule; refusals are counted, never injected.
async fn inject(
    mut inbound: mpsc::Receiver<Inbound>,
    screen: ScreenThread,
    consent: bool,
    refused: Arc<AtomicU64>,
) {
    use pb::desktop_input::Event;
    while let Some(message) = inbound.recv().await {
        let Inbound::Desktop(input) = message else { continue };
        if !consent {
            let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(refused = n, "viewer desktop input refused: no screen-control consent");
            continue;
        }
        let actions = match input.event {
            Some(Event::Pointer(p)) => request::pointer(&p),
            Some(Event::Key(k)) => request::key(&k),
            Some(Event::Scroll(s)) => request::scroll(&s),
            None => continue,
        };
        let result = match actions {
            Ok(actions) => screen.run(move |s| request::apply(s, &actions)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::info!(error = %e.message, "viewer desktop input failed");
        }
    }
}
