//! The desktop subcommands: screenshot, click, move, drag, scroll, key, type, and act (a list
//! of actions from a JSON file, then one settled screenshot). Coordinates are native pixels,
//! or pixels of a screenshot of `--space WxH` that the agent maps back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde_json::json;
use tether_client::Client;
use tether_proto::pb;
use tether_proto::pb::desktop_action::Action;
use tether_proto::pb::desktop_input_request::Event;
use tether_proto::token::ViewerMode;

use super::credential::ViewerCredential;

#[derive(Debug, Clone, Copy, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ButtonArg {
    #[default]
    Left,
    Right,
    Middle,
}

impl ButtonArg {
    fn proto(self) -> i32 {
        match self {
            ButtonArg::Left => pb::PointerButton::Left as i32,
            ButtonArg::Right => pb::PointerButton::Right as i32,
            ButtonArg::Middle => pb::PointerButton::Middle as i32,
        }
    }
}

/// `WxH` of the screenshot the coordinates refer to.
pub fn parse_space(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not WIDTHxHEIGHT");
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

#[derive(Debug, Args)]
pub struct ScreenshotArgs {
    /// Where to save the image (`-` = stdout).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Scale down to at most this width, keeping the aspect ratio.
    #[arg(long, default_value_t = 0)]
    pub max_width: u32,
    /// Scale down to at most this height, keeping the aspect ratio.
    #[arg(long, default_value_t = 0)]
    pub max_height: u32,
    /// JPEG at this quality (1-100) instead of PNG.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub jpeg: Option<u32>,
    /// Draw the pointer into the image.
    #[arg(long)]
    pub cursor: bool,
}

impl ScreenshotArgs {
    fn request(&self) -> pb::DesktopScreenshotRequest {
        pb::DesktopScreenshotRequest {
            max_width: self.max_width,
            max_height: self.max_height,
            format: if self.jpeg.is_some() { pb::ImageFormat::Jpeg } else { pb::ImageFormat::Png } as i32,
            quality: self.jpeg.unwrap_or(0),
            cursor: self.cursor,
        }
    }
}

/// Coordinates in a screenshot of this size (`--space 1280x800`) instead of native pixels.
#[derive(Debug, Args, Clone, Copy)]
pub struct SpaceArg {
    #[arg(long, value_parser = parse_space)]
    pub space: Option<(u32, u32)>,
}

impl SpaceArg {
    pub fn get(self) -> (u32, u32) {
        self.space.unwrap_or((0, 0))
    }
}

fn save(output: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if output == Path::new("-") {
        use std::io::Write;
        return std::io::stdout().write_all(bytes).context("writing the image to stdout");
    }
    std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))
}

fn format_name(format: i32) -> &'static str {
    if format == pb::ImageFormat::Jpeg as i32 { "jpeg" } else { "png" }
}

fn report_shot(shot: &pb::DesktopScreenshotResponse, output: &Path, json: bool) -> serde_json::Value {
    let value = json!({
        "output": output.display().to_string(),
        "format": format_name(shot.format),
        "width": shot.width,
        "height": shot.height,
        "native_width": shot.native_width,
        "native_height": shot.native_height,
        "bytes": shot.png.len(),
    });
    if !json && output != Path::new("-") {
        eprintln!(
            "{} {}x{} (native {}x{}), {} bytes -> {}",
            format_name(shot.format),
            shot.width,
            shot.height,
            shot.native_width,
            shot.native_height,
            shot.png.len(),
            output.display()
        );
    }
    value
}

pub async fn screenshot(client: &Client, args: ScreenshotArgs, json: bool) -> anyhow::Result<ExitCode> {
    let shot = client.screenshot(args.request()).await.context("screenshot")?;
    save(&args.output, &shot.png)?;
    let value = report_shot(&shot, &args.output, json);
    if json {
        println!("{value}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pointer_event(
    x: i32,
    y: i32,
    action: pb::PointerAction,
    button: ButtonArg,
    space: (u32, u32),
) -> Event {
    Event::Pointer(pb::PointerEvent {
        x,
        y,
        action: action as i32,
        button: button.proto(),
        space_width: space.0,
        space_height: space.1,
    })
}

pub fn scroll_event(dx: i32, dy: i32, at: Option<(i32, i32)>, space: (u32, u32)) -> Event {
    let (x, y) = at.unwrap_or((0, 0));
    Event::Scroll(pb::ScrollEvent {
        x,
        y,
        delta_x: dx,
        delta_y: dy,
        space_width: space.0,
        space_height: space.1,
        at_pointer: at.is_none(),
    })
}

pub fn key_event(chord: &str, action: pb::KeyAction) -> Event {
    Event::Key(pb::KeyEvent { key: chord.to_owned(), is_text: false, action: action as i32 })
}

pub fn text_event(text: &str) -> Event {
    Event::Key(pb::KeyEvent { key: text.to_owned(), is_text: true, action: pb::KeyAction::Press as i32 })
}

/// Sends one input event; prints nothing on success (or `{"ok":true}` with --json).
pub async fn input(client: &Client, event: Event, json: bool) -> anyhow::Result<ExitCode> {
    client.desktop_input(event).await.context("desktop input")?;
    if json {
        println!("{}", json!({"ok": true}));
    }
    Ok(ExitCode::SUCCESS)
}

/// A drag as an act list of one (a drag holds the button across moves: one request).
pub async fn drag(
    client: &Client,
    (x1, y1, x2, y2): (i32, i32, i32, i32),
    button: ButtonArg,
    space: (u32, u32),
    json: bool,
) -> anyhow::Result<ExitCode> {
    let drag = pb::DragAction {
        from_x: x1,
        from_y: y1,
        to_x: x2,
        to_y: y2,
        button: button.proto(),
        space_width: space.0,
        space_height: space.1,
    };
    let request = pb::DesktopActRequest {
        actions: vec![pb::DesktopAction { action: Some(Action::Drag(drag)) }],
        ..Default::default()
    };
    client.desktop_act(request).await.context("drag")?;
    if json {
        println!("{}", json!({"ok": true}));
    }
    Ok(ExitCode::SUCCESS)
}

/// The `act` file: actions, then (unless `"screenshot": false`) one settled screenshot.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActFile {
    pub actions: Vec<ActStep>,
    /// `true` (the default), `false`, or options.
    #[serde(default)]
    pub screenshot: Option<ShotSpec>,
    /// Coordinates are in a screenshot of this size, `[w, h]`.
    #[serde(default)]
    pub space: Option<(u32, u32)>,
    #[serde(default)]
    pub settle_timeout_ms: u32,
    #[serde(default)]
    pub settle_quiet_ms: u32,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ShotSpec {
    Enabled(bool),
    Options {
        #[serde(default)]
        max_width: u32,
        #[serde(default)]
        max_height: u32,
        #[serde(default)]
        jpeg: Option<u32>,
        #[serde(default)]
        cursor: bool,
    },
}

/// One step: `{"click": [x, y]}`, `{"click": {"x": 1, "y": 2, "button": "right"}}`,
/// `{"double_click": [x, y]}`, `{"move": [x, y]}`, `{"drag": [x1, y1, x2, y2]}`,
/// `{"scroll": {"dy": 3, "at": [x, y]}}`, `{"key": "ctrl+s"}`, `{"type": "text"}`,
/// `{"wait_ms": 200}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ActStep {
    Click(PointSpec),
    DoubleClick(PointSpec),
    Move(PointSpec),
    Drag([i32; 4]),
    Scroll(ScrollSpec),
    Key(String),
    Type(String),
    WaitMs(u32),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PointSpec {
    Pair([i32; 2]),
    Full {
        x: i32,
        y: i32,
        #[serde(default)]
        button: ButtonArg,
    },
}

impl PointSpec {
    fn parts(&self) -> (i32, i32, ButtonArg) {
        match *self {
            PointSpec::Pair([x, y]) => (x, y, ButtonArg::Left),
            PointSpec::Full { x, y, button } => (x, y, button),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrollSpec {
    #[serde(default)]
    dx: i32,
    #[serde(default)]
    dy: i32,
    #[serde(default)]
    at: Option<[i32; 2]>,
}

/// The act request an act file describes.
pub fn act_request(file: &ActFile) -> pb::DesktopActRequest {
    let space = file.space.unwrap_or((0, 0));
    let pointer = |p: &PointSpec, action| {
        let (x, y, button) = p.parts();
        let Event::Pointer(p) = pointer_event(x, y, action, button, space) else { unreachable!() };
        Action::Pointer(p)
    };
    let actions = file
        .actions
        .iter()
        .map(|step| {
            let action = match step {
                ActStep::Click(p) => pointer(p, pb::PointerAction::Click),
                ActStep::DoubleClick(p) => pointer(p, pb::PointerAction::DoubleClick),
                ActStep::Move(p) => pointer(p, pb::PointerAction::Move),
                ActStep::Drag([x1, y1, x2, y2]) => Action::Drag(pb::DragAction {
                    from_x: *x1,
                    from_y: *y1,
                    to_x: *x2,
                    to_y: *y2,
                    button: ButtonArg::Left.proto(),
                    space_width: space.0,
                    space_height: space.1,
                }),
                ActStep::Scroll(s) => match scroll_event(s.dx, s.dy, s.at.map(|[x, y]| (x, y)), space) {
                    Event::Scroll(s) => Action::Scroll(s),
                    _ => unreachable!(),
                },
                ActStep::Key(chord) => Action::Key(pb::KeyEvent {
                    key: chord.clone(),
                    is_text: false,
                    action: pb::KeyAction::Press as i32,
                }),
                ActStep::Type(text) => Action::Key(pb::KeyEvent {
                    key: text.clone(),
                    is_text: true,
                    action: pb::KeyAction::Press as i32,
                }),
                ActStep::WaitMs(ms) => Action::WaitMs(*ms),
            };
            pb::DesktopAction { action: Some(action) }
        })
        .collect();
    let screenshot = match &file.screenshot {
        None | Some(ShotSpec::Enabled(true)) => Some(pb::DesktopScreenshotRequest::default()),
        Some(ShotSpec::Enabled(false)) => None,
        Some(ShotSpec::Options { max_width, max_height, jpeg, cursor }) => {
            Some(pb::DesktopScreenshotRequest {
                max_width: *max_width,
                max_height: *max_height,
                format: if jpeg.is_some() { pb::ImageFormat::Jpeg } else { pb::ImageFormat::Png } as i32,
                quality: jpeg.unwrap_or(0),
                cursor: *cursor,
            })
        }
    };
    pb::DesktopActRequest {
        actions,
        screenshot,
        settle_timeout_ms: file.settle_timeout_ms,
        settle_quiet_ms: file.settle_quiet_ms,
    }
}

pub async fn act(
    client: &Client,
    file: &Path,
    output: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: ActFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let request = act_request(&parsed);
    let reply = client.desktop_act(request).await.context("act")?;
    let settle = pb::SettleOutcome::try_from(reply.settle).unwrap_or_default().as_str_name();
    let settle = settle.trim_start_matches("SETTLE_OUTCOME_").to_ascii_lowercase();
    let mut value = json!({
        "actions_done": reply.actions_done,
        "settle": settle,
        "settle_waited_ms": reply.settle_waited_ms,
    });
    if let Some(shot) = &reply.screenshot {
        let output = match output {
            Some(output) => output,
            None => PathBuf::from(format!("act.{}", format_name(shot.format))),
        };
        save(&output, &shot.png)?;
        value["screenshot"] = report_shot(shot, &output, json);
    } else if output.is_some() {
        bail!("the act file asks for no screenshot, but -o was given");
    }
    if json {
        println!("{value}");
    } else {
        eprintln!("{} actions done; screen {settle} after {} ms", reply.actions_done, reply.settle_waited_ms);
    }
    Ok(ExitCode::SUCCESS)
}

/// Ensures the desktop stream and prints its channel, the relay URL a viewer dials and the
/// command that mints that viewer's token.
pub async fn ensure(
    client: &Client,
    relay_url: Option<&str>,
    request: pb::DesktopEnsureRequest,
    page: Option<PageToken>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if page.is_some() && relay_url.is_none() {
        bail!("--print-url needs the relay's URL: --relay-url or TETHER_RELAY_URL");
    }
    let asked = request.frame_encoding();
    let reply = client.desktop_ensure(request).await.context("desktop_ensure")?;
    let encoding = reply.frame_encoding();
    let channel = reply.channel.context("the agent named no channel")?;
    if encoding != asked {
        eprintln!(
            "note: the desktop stream was already open with the {} encoding; that is what it sends",
            encoding_name(encoding)
        );
    }
    let url = relay_url.map(|base| tether_proto::stream::stream_url(base, &channel));
    if let (Some(page), Some(base)) = (page, relay_url) {
        let token = page.credential.token_with_mode(&channel, "tetherctl-desktop", page.ttl, page.mode);
        let page_url = super::page::page_url(base, &channel, &token)?;
        match json {
            true => println!("{}", json!({ "channel_id": channel.channel_id, "page_url": page_url })),
            false => println!("{page_url}"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mint = format!(
        "tetherctl mint-token viewer --port {} --channel {} --mode control",
        channel.port, channel.channel_id
    );
    let display = reply.display.unwrap_or_default();
    if json {
        let value = json!({
            "channel_id": channel.channel_id,
            "workspace_id": channel.workspace_id,
            "agent_id": channel.agent_id,
            "port": channel.port,
            "display": {"id": display.id, "width": display.width, "height": display.height, "virtual": display.r#virtual},
            "viewer_url": url,
            "viewer_token_command": mint,
            "frame_encoding": encoding_name(encoding),
        });
        println!("{value}");
    } else {
        println!(
            "channel {} (port {}), display {} {}x{}",
            channel.channel_id, channel.port, display.id, display.width, display.height
        );
        match url {
            Some(url) => println!("viewer URL: {url}"),
            None => println!("viewer URL: give --relay-url (or TETHER_RELAY_URL) to print it"),
        }
        println!("viewer token (the relay's viewer secret in TETHER_RELAY_VIEWER_SECRET): {mint}");
        match encoding {
            pb::DesktopFrameEncoding::Tiles => println!(
                "frames: whole JPEG (or PNG) key frames, and delta frames (StreamFrame.delta) of changed rectangles in the TTI1 layout; input is DesktopInput"
            ),
            pb::DesktopFrameEncoding::Whole => {
                println!("frames are whole JPEG (or PNG) images, one per StreamFrame; input is DesktopInput")
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn encoding_name(encoding: pb::DesktopFrameEncoding) -> &'static str {
    match encoding {
        pb::DesktopFrameEncoding::Whole => "whole",
        pb::DesktopFrameEncoding::Tiles => "tiles",
    }
}

/// `tetherctl desktop --print-url`: how to make the page's token.
pub struct PageToken {
    pub credential: ViewerCredential,
    pub ttl: std::time::Duration,
    pub mode: ViewerMode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_act_file_becomes_one_request() {
        let file: ActFile = serde_json::from_str(
            r#"{"actions": [{"click": [10, 20]}, {"click": {"x": 1, "y": 2, "button": "right"}},
                {"drag": [1, 2, 3, 4]}, {"scroll": {"dy": 3}}, {"key": "ctrl+s"}, {"type": "hé"},
                {"wait_ms": 50}], "space": [640, 400], "screenshot": {"jpeg": 70}}"#,
        )
        .unwrap();
        let request = act_request(&file);
        assert_eq!(request.actions.len(), 7);
        let Some(Action::Pointer(p)) = &request.actions[1].action else { panic!("pointer") };
        assert_eq!((p.x, p.y, p.button, p.space_width), (1, 2, pb::PointerButton::Right as i32, 640));
        let Some(Action::Scroll(s)) = &request.actions[3].action else { panic!("scroll") };
        assert!(s.at_pointer);
        let shot = request.screenshot.unwrap();
        assert_eq!((shot.format, shot.quality), (pb::ImageFormat::Jpeg as i32, 70));
        let none: ActFile = serde_json::from_str(r#"{"actions": [], "screenshot": false}"#).unwrap();
        assert!(act_request(&none).screenshot.is_none());
        assert!(serde_json::from_str::<ActFile>(r#"{"actions": [{"tap": [1, 2]}]}"#).is_err());
    }
}
