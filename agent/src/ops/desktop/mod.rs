//! The desktop ops: `desktop_screenshot` (view only), `desktop_input` and the act-then-look op
//! (both gated on screen-control consent: without it the OS is never touched). The screen is
//! behind the small [`screen::Screen`] trait, owned by one thread; capture happens there and
//! encoding on the blocking pool, so a stream pump can reuse capture -> frame -> encode.
//! Without the `desktop` cargo feature every op answers UNSUPPORTED with the reason.

#[cfg(feature = "desktop")]
pub mod act;
#[cfg(feature = "desktop")]
pub mod backend;
#[cfg(feature = "desktop")]
pub mod encode;
#[cfg(feature = "desktop")]
pub mod jpeg;
pub mod keys;
#[cfg(all(feature = "desktop", any(not(target_os = "linux"), feature = "portable-desktop")))]
pub mod portable;
#[cfg(feature = "desktop")]
pub mod request;
pub mod screen;
#[cfg(feature = "desktop")]
pub mod thread;
#[cfg(all(feature = "desktop", target_os = "linux"))]
pub mod x11;
#[cfg(all(feature = "desktop", target_os = "linux"))]
pub use x11::X11Screen;

use tether_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::error::{OpError, OpResult};

/// What the agent knows of its display, for Hello.
#[derive(Debug, Clone, Default)]
pub struct DisplayInfo {
    pub id: String,
    pub width: u32,
    pub height: u32,
    pub is_virtual: bool,
    pub backend: &'static str,
    pub input: bool,
}

/// The desktop as the ops see it: a screen thread, or the reason there is none.
pub struct Desktop {
    #[cfg(feature = "desktop")]
    screen: Option<thread::ScreenThread>,
    info: Option<DisplayInfo>,
    unavailable: String,
    consent: bool,
    #[cfg(feature = "desktop")]
    stream: Option<crate::stream::desktop::DesktopStream>,
}

impl Desktop {
    /// No desktop, for `reason` (no display, no feature, capture failed).
    pub fn unavailable(reason: impl Into<String>, consent: bool) -> Desktop {
        Desktop {
            #[cfg(feature = "desktop")]
            screen: None,
            info: None,
            unavailable: reason.into(),
            consent,
            #[cfg(feature = "desktop")]
            stream: None,
        }
    }

    /// Opens `display` (`None` = the platform default) with the backend the environment picks
    /// (see [`backend`]) on the desktop thread and captures once: the desktop is claimed only
    /// when a capture really succeeds. Blocking.
    #[cfg(feature = "desktop")]
    pub fn open(display: Option<String>, is_virtual: bool, consent: bool) -> Desktop {
        let choice = match backend::from_env() {
            Ok(choice) => choice,
            Err(reason) => {
                tracing::warn!(%reason, "no desktop: the backend asked for is not available");
                return Desktop::unavailable(reason, consent);
            }
        };
        let opened = backend::open(choice, display.clone());
        let checked = opened.and_then(|screen| {
            let (frame, backend, input) = screen.run_blocking(|s| {
                let frame = s.capture(false)?;
                Ok(((frame.width, frame.height), s.backend(), s.can_inject()))
            })?;
            Ok((screen, frame, backend, input))
        });
        match checked {
            Ok((screen, (width, height), backend, input)) => {
                let id = display.unwrap_or_else(|| std::env::var("DISPLAY").unwrap_or_default());
                let info = DisplayInfo { id, width, height, is_virtual, backend, input };
                tracing::info!(display = %info.id, width, height, backend, input, "desktop ready");
                Desktop {
                    screen: Some(screen),
                    info: Some(info),
                    unavailable: String::new(),
                    consent,
                    stream: None,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.message, "no desktop: the screen cannot be captured");
                Desktop::unavailable(format!("capture failed: {}", e.message), consent)
            }
        }
    }

    pub fn info(&self) -> Option<&DisplayInfo> {
        self.info.as_ref()
    }

    /// Fills the desktop part of Hello's capabilities.
    pub fn fill(&self, caps: &mut pb::Capabilities) {
        caps.consented_screen_control = self.consent;
        caps.desktop = self.info.is_some();
        caps.desktop_unavailable_reason = self.unavailable.clone();
        if let Some(info) = &self.info {
            caps.display = Some(pb::Display {
                id: info.id.clone(),
                width: info.width,
                height: info.height,
                r#virtual: info.is_virtual,
            });
            caps.desktop_act = true;
            caps.desktop_backend = info.backend.to_owned();
            caps.desktop_input = info.input;
        }
    }

    #[cfg(feature = "desktop")]
    fn screen(&self) -> OpResult<&thread::ScreenThread> {
        self.screen.as_ref().ok_or_else(|| self.no_desktop())
    }

    fn no_desktop(&self) -> OpError {
        OpError::unsupported(format!("this agent has no desktop: {}", self.unavailable))
            .with("reason", &self.unavailable)
    }

    fn require_consent(&self) -> OpResult<()> {
        match self.consent {
            true => Ok(()),
            false => Err(OpError::new(
                pb::ErrorCode::ConsentRequired,
                "screen control needs consent: start the agent with --consent-screen-control",
            )),
        }
    }
}

#[cfg(not(feature = "desktop"))]
impl Desktop {
    pub async fn ensure(
        &self,
        _: pb::DesktopEnsureRequest,
        _: crate::ops::pty::FencedBy,
    ) -> OpResult<pb::DesktopEnsureResponse> {
        Err(self.no_desktop())
    }

    pub async fn screenshot(
        &self,
        _: pb::DesktopScreenshotRequest,
        _: usize,
    ) -> OpResult<pb::DesktopScreenshotResponse> {
        Err(self.no_desktop())
    }

    pub async fn input(&self, _: pb::DesktopInputRequest) -> OpResult<pb::DesktopInputResponse> {
        self.require_consent()?;
        Err(self.no_desktop())
    }

    pub async fn act(
        &self,
        _: pb::DesktopActRequest,
        _: usize,
        _: CancellationToken,
    ) -> OpResult<pb::DesktopActResponse> {
        self.require_consent()?;
        Err(self.no_desktop())
    }
}

/// How long one desktop_input may wait for the display.
#[cfg(feature = "desktop")]
const INPUT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes of a screenshot reply besides the image (sizes, format, tags).
#[cfg(feature = "desktop")]
const SHOT_OVERHEAD: usize = 64;

#[cfg(feature = "desktop")]
impl Desktop {
    /// Lets `desktop_ensure` stream this desktop through `relay` (without one it answers
    /// UNSUPPORTED).
    pub fn with_stream(
        mut self,
        relay: Option<crate::config::RelayLink>,
        ids: (&str, &str),
        options: crate::stream::desktop::StreamOptions,
        fence: std::sync::Arc<crate::fence::Fence>,
    ) -> Desktop {
        if let Some(screen) = &self.screen {
            let stream = crate::stream::desktop::DesktopStream::new(
                relay,
                ids,
                options,
                screen.clone(),
                self.consent,
                fence,
            );
            self.stream = Some(stream);
        }
        self
    }

    /// The one desktop stream channel (opened on first use; see `stream::desktop`).
    pub async fn ensure(
        &self,
        request: pb::DesktopEnsureRequest,
        fenced: crate::ops::pty::FencedBy,
    ) -> OpResult<pb::DesktopEnsureResponse> {
        let stream = self.stream.as_ref().ok_or_else(|| self.no_desktop())?;
        let (channel, encoding) = stream.ensure(&request, fenced).await?;
        let display = self.info.as_ref().map(|info| pb::Display {
            id: info.id.clone(),
            width: info.width,
            height: info.height,
            r#virtual: info.is_virtual,
        });
        Ok(pb::DesktopEnsureResponse { channel: Some(channel), display, frame_encoding: encoding as i32 })
    }

    pub async fn screenshot(
        &self,
        request: pb::DesktopScreenshotRequest,
        budget: usize,
    ) -> OpResult<pb::DesktopScreenshotResponse> {
        let screen = self.screen()?;
        let cursor = request.cursor;
        let frame = screen.run(move |s| s.capture(cursor)).await?;
        encode_shot(frame, &request, budget.saturating_sub(SHOT_OVERHEAD)).await
    }

    pub async fn input(&self, request: pb::DesktopInputRequest) -> OpResult<pb::DesktopInputResponse> {
        self.require_consent()?;
        let screen = self.screen()?;
        let actions = request::input(&request)?;
        // A wedged display must not hold the request (and its fence scope) forever.
        tokio::time::timeout(INPUT_DEADLINE, screen.run(move |s| request::apply(s, &actions)))
            .await
            .map_err(|_| {
                OpError::new(pb::ErrorCode::Timeout, "the display did not take the input in time")
            })??;
        Ok(pb::DesktopInputResponse {})
    }

    /// Runs the actions (stopping when `cancel` fires: an epoch advance), then the settled
    /// screenshot.
    pub async fn act(
        &self,
        request: pb::DesktopActRequest,
        budget: usize,
        cancel: CancellationToken,
    ) -> OpResult<pb::DesktopActResponse> {
        self.require_consent()?;
        let screen = self.screen()?;
        let actions = act::parse(&request)?;
        let done = actions.len() as u32;
        let Some(shot) = request.screenshot else {
            act::run(screen, actions, &cancel).await?;
            return Ok(pb::DesktopActResponse { actions_done: done, ..Default::default() });
        };
        let before = screen.run(|s| s.capture(false)).await?;
        act::run(screen, actions, &cancel).await?;
        let settled = act::settle(screen, before, request.settle_timeout_ms, request.settle_quiet_ms).await?;
        let frame = match shot.cursor {
            true => screen.run(|s| s.capture(true)).await?,
            false => settled.frame,
        };
        let shot = encode_shot(frame, &shot, budget.saturating_sub(2 * SHOT_OVERHEAD)).await?;
        Ok(pb::DesktopActResponse {
            screenshot: Some(shot),
            actions_done: done,
            settle: settled.outcome as i32,
            settle_waited_ms: settled.waited.as_millis() as u32,
        })
    }
}

/// Encodes a captured frame as the request asks, on the blocking pool, fitted to `budget`.
#[cfg(feature = "desktop")]
async fn encode_shot(
    frame: screen::Frame,
    request: &pb::DesktopScreenshotRequest,
    budget: usize,
) -> OpResult<pb::DesktopScreenshotResponse> {
    let (format, wire) = match pb::ImageFormat::try_from(request.format) {
        Ok(pb::ImageFormat::Unspecified | pb::ImageFormat::Png) => {
            (encode::Format::Png, pb::ImageFormat::Png)
        }
        Ok(pb::ImageFormat::Jpeg) => {
            let quality = match request.quality {
                0 => encode::DEFAULT_JPEG_QUALITY,
                q => q.min(100) as u8,
            };
            (encode::Format::Jpeg { quality }, pb::ImageFormat::Jpeg)
        }
        Err(_) => return Err(OpError::protocol(format!("unknown image format {}", request.format))),
    };
    let max = (request.max_width, request.max_height);
    let cursor = request.cursor;
    tokio::task::spawn_blocking(move || {
        let encoded = encode::fit(&frame, max, format, budget)?;
        Ok(pb::DesktopScreenshotResponse {
            png: encoded.bytes.into(),
            width: encoded.width,
            height: encoded.height,
            native_width: frame.width,
            native_height: frame.height,
            format: wire as i32,
            cursor,
        })
    })
    .await
    .map_err(|e| OpError::os(format!("encoding the screenshot failed: {e}")))?
}
