//! `tetherctl mcp`: one agent as Model Context Protocol tools, over stdin/stdout, for AI
//! assistants that speak MCP. Every tool is one call of the tether-client library, so what an
//! assistant can do is exactly what `tetherctl` can do, under the same flags, credentials and
//! fence scope; the agent keeps deciding what is allowed (confinement, screen-control consent).
//!
//! A failed call comes back as a tool result marked as an error with the agent's code and
//! message, which the model reads and can act on; only an unknown tool or malformed arguments
//! are protocol errors. stdout belongs to the protocol: logs go to stderr.
//!
//! Act-then-look (`desktop_act`) is listed only while the agent serves it. No request returns
//! an agent's Capabilities, so at start one empty act request (no actions, no screenshot: it
//! touches nothing) asks; afterwards every Hello the agent publishes (on each reconnect) says,
//! and the client is told when the tool list changes.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{NotificationContext, Peer, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use tether_client::{AgentMessage, Client, ClientError, Op, WriteOptions, pb};

use super::desktop::parse_space;
use super::mcp_desktop::{
    ActParams, ClickParams, PressKeysParams, ScreenshotParams, ScrollParams, ShotOptions, Space,
    TypeTextParams, act_summary,
};
use super::mcp_text;

/// The tool that is listed only while the agent serves it.
const ACT_TOOL: &str = "desktop_act";
/// How long the start-up question "is act-then-look served?" may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default and longest deadline of one `run_command`.
const DEFAULT_COMMAND_SECS: u32 = 120;
const MAX_COMMAND_SECS: u32 = 3600;

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Most bytes of each output stream (run_command) or file piece (read_file) handed to the
    /// assistant; longer output keeps its head and tail and says what was cut.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(256..=16 << 20))]
    pub max_output_bytes: u64,
    /// Screenshots are scaled down to fit WIDTHxHEIGHT (0x0 = native size).
    #[arg(long, default_value = "1280x800", value_parser = parse_space)]
    pub screenshot_size: (u32, u32),
    /// Screenshots as JPEG at this quality (1-100) instead of PNG.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub screenshot_jpeg: Option<u32>,
}

/// The MCP server: the agent's client and what the tools share.
pub struct TetherMcp {
    client: Client,
    max_output: usize,
    shot: ShotOptions,
    space: Space,
    act_served: AtomicBool,
    peer: Mutex<Option<Peer<RoleServer>>>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunCommandParams {
    /// A shell command line, run with `sh -c` on the agent's machine.
    pub command: String,
    /// Working directory (default: the agent's workspace root).
    pub cwd: Option<String>,
    /// Kill the command after this many seconds (default 120, at most 3600).
    pub timeout_seconds: Option<u32>,
    /// Text fed to the command's stdin.
    pub stdin: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadFileParams {
    /// The file's path (relative paths are under the workspace root).
    pub path: String,
    /// Start reading at this byte (default 0).
    #[serde(default)]
    pub offset: u64,
    /// Read at most this many bytes (default and cap: the server's output limit).
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WriteFileParams {
    /// The file's path (relative paths are under the workspace root).
    pub path: String,
    /// The whole new content of the file, as text.
    pub content: String,
    /// Create missing parent directories (default true).
    #[serde(default = "yes")]
    pub create_parents: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListDirectoryParams {
    /// The directory (default: the workspace root).
    #[serde(default)]
    pub path: String,
    /// Include subdirectories' contents.
    #[serde(default)]
    pub recursive: bool,
    /// Stop after this many entries (default 1000).
    pub max_entries: Option<u32>,
}

/// A finished call: its result, or the failure as a tool error the model reads.
fn outcome(result: Result<CallToolResult, ClientError>) -> CallToolResult {
    result.unwrap_or_else(|err| CallToolResult::error(vec![ContentBlock::text(mcp_text::error_text(&err))]))
}

fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

fn refused_input(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

#[tool_router]
impl TetherMcp {
    #[tool(description = "Run a shell command line (sh -c) on the agent's machine and wait for it. \
        Returns the exit code, stdout and stderr. Commands run confined as the agent's owner \
        configured (Landlock, resource limits). The command is killed after timeout_seconds \
        (default 120, at most 3600). Long output keeps its head and tail; the text says how many \
        bytes were cut. No terminal: interactive programs see no tty.")]
    async fn run_command(&self, Parameters(p): Parameters<RunCommandParams>) -> CallToolResult {
        let secs = p.timeout_seconds.unwrap_or(DEFAULT_COMMAND_SECS).clamp(1, MAX_COMMAND_SECS);
        let request = pb::ExecRequest {
            command: vec![p.command],
            shell: true,
            cwd: p.cwd.unwrap_or_default(),
            stdin: Bytes::from(p.stdin.unwrap_or_default()),
            timeout_ms: secs * 1000,
            ..Default::default()
        };
        outcome(self.client.exec(request).await.map(|r| text(mcp_text::exec_text(&r, self.max_output))))
    }

    #[tool(description = "Read a text file on the agent's machine. Returns at most max_bytes \
        (default and cap: the server's output limit, 64 KiB unless configured) from offset; \
        when more is left the text ends with the offset to continue from. A missing file is an error.")]
    async fn read_file(&self, Parameters(p): Parameters<ReadFileParams>) -> CallToolResult {
        let limit = p.max_bytes.unwrap_or(self.max_output as u64).clamp(1, self.max_output as u64);
        outcome(
            self.read_part(&p.path, p.offset, limit)
                .await
                .map(|(content, total)| text(mcp_text::read_text(&p.path, &content, p.offset, total))),
        )
    }

    #[tool(description = "Write a text file on the agent's machine, replacing it whole and \
        atomically (readers see the old or the new content, never a mix). Creates missing \
        parent directories unless create_parents is false.")]
    async fn write_file(&self, Parameters(p): Parameters<WriteFileParams>) -> CallToolResult {
        let options = WriteOptions { mode: 0, create_parents: p.create_parents };
        let written = self.client.write_file(&p.path, Bytes::from(p.content), options).await;
        outcome(written.map(|n| text(format!("wrote {n} bytes to {}", p.path))))
    }

    #[tool(description = "List a directory on the agent's machine: kind, permissions, size, \
        modification time and path of each entry (recursive on request). At most max_entries \
        (default 1000) entries; the text says when there were more.")]
    async fn list_directory(&self, Parameters(p): Parameters<ListDirectoryParams>) -> CallToolResult {
        let listed = self.client.list(&p.path, p.recursive, p.max_entries.unwrap_or(1000)).await;
        outcome(listed.map(|reply| text(mcp_text::list_text(&p.path, &reply))))
    }

    #[tool(description = "Take a screenshot of the agent's screen. The image is scaled down to \
        fit 1280x800 unless the server is configured otherwise; the text states its size, the \
        screen's size and the scale. Coordinates given to click, scroll and desktop_act are \
        pixels of the latest screenshot.")]
    async fn screenshot(&self, Parameters(p): Parameters<ScreenshotParams>) -> CallToolResult {
        let shot = self.client.screenshot(self.shot.request(p.cursor)).await;
        outcome(shot.map(|shot| self.space.shot_result(&shot, None)))
    }

    #[tool(description = "Click (or double-click) a mouse button at x, y: pixels of the latest \
        screenshot (screen pixels before any screenshot). Needs the machine owner's consent to \
        screen control; without it the agent refuses and the result says so.")]
    async fn click(&self, Parameters(p): Parameters<ClickParams>) -> CallToolResult {
        let done = self.client.desktop_input(p.event(self.space.get())).await;
        outcome(done.map(|()| text(format!("clicked at {}, {}", p.x, p.y))))
    }

    #[tool(description = "Type text as keystrokes into the focused window (any Unicode). Needs \
        screen-control consent; without it the agent refuses and the result says so.")]
    async fn type_text(&self, Parameters(p): Parameters<TypeTextParams>) -> CallToolResult {
        let done = self.client.desktop_input(super::desktop::text_event(&p.text)).await;
        outcome(done.map(|()| text(format!("typed {} characters", p.text.chars().count()))))
    }

    #[tool(description = "Press a key or a chord: Enter, Escape, Tab, ctrl+c, shift+Tab, \
        ctrl+alt+t, F5, PageDown, super. Needs screen-control consent; without it the agent \
        refuses and the result says so.")]
    async fn press_keys(&self, Parameters(p): Parameters<PressKeysParams>) -> CallToolResult {
        let event = super::desktop::key_event(&p.keys, pb::KeyAction::Press);
        outcome(self.client.desktop_input(event).await.map(|()| text(format!("pressed {}", p.keys))))
    }

    #[tool(description = "Turn the mouse wheel by notches: dy > 0 scrolls down, dx > 0 right; at \
        x, y (pixels of the latest screenshot) if given, else where the pointer is. Needs \
        screen-control consent; without it the agent refuses and the result says so.")]
    async fn scroll(&self, Parameters(p): Parameters<ScrollParams>) -> CallToolResult {
        let event = match p.event(self.space.get()) {
            Ok(event) => event,
            Err(message) => return refused_input(message),
        };
        outcome(self.client.desktop_input(event).await.map(|()| text(format!("scrolled {}, {}", p.dx, p.dy))))
    }

    #[tool(description = "Act, then look: run input steps in order (click, double_click, move, \
        drag, scroll, key, type, wait), then wait until the screen settles and return one \
        screenshot, in one round trip. Coordinates are pixels of the latest screenshot. At most \
        1000 steps and 60 s of waits; settle_timeout_ms bounds the settling (default 2000). Needs \
        screen-control consent; without it the agent refuses and the result says so.")]
    async fn desktop_act(&self, Parameters(p): Parameters<ActParams>) -> CallToolResult {
        let request = match p.request(self.space.get(), self.shot) {
            Ok(request) => request,
            Err(message) => return refused_input(message),
        };
        outcome(self.client.desktop_act(request).await.map(|reply| {
            let summary = act_summary(&reply);
            match &reply.screenshot {
                Some(shot) => self.space.shot_result(shot, Some(summary)),
                None => text(summary),
            }
        }))
    }
}

impl TetherMcp {
    pub fn new(client: Client, args: &McpArgs) -> TetherMcp {
        TetherMcp {
            client,
            max_output: usize::try_from(args.max_output_bytes).unwrap_or(usize::MAX),
            shot: ShotOptions { max: args.screenshot_size, jpeg: args.screenshot_jpeg },
            space: Space::default(),
            act_served: AtomicBool::new(false),
            peer: Mutex::new(None),
            tool_router: Self::tool_router(),
        }
    }

    /// Up to `limit` bytes from `offset`, in as many ranged reads as the agent needs; and the
    /// file's size.
    async fn read_part(&self, path: &str, offset: u64, limit: u64) -> Result<(Vec<u8>, u64), ClientError> {
        let mut content = Vec::new();
        let mut at = offset;
        loop {
            let want = (limit - content.len() as u64).min(self.client.chunk_size() as u64);
            let piece = self.client.read(path, at, want).await?;
            at += piece.content.len() as u64;
            content.extend_from_slice(&piece.content);
            if piece.content.is_empty() || content.len() as u64 >= limit || at >= piece.total_size {
                return Ok((content, piece.total_size));
            }
        }
    }

    /// Records whether act-then-look is served; tells the client when that changes.
    async fn set_act_served(&self, served: bool) {
        if self.act_served.swap(served, Ordering::Relaxed) == served {
            return;
        }
        tracing::info!(served, "desktop_act availability changed");
        let peer = self.peer.lock().ok().and_then(|p| p.clone());
        if let Some(peer) = peer
            && let Err(e) = peer.notify_tool_list_changed().await
        {
            tracing::warn!(error = %e, "could not tell the client the tool list changed");
        }
    }
}

/// Whether the agent serves act-then-look: an empty act (nothing injected, nothing captured)
/// is answered, or refused for consent only.
async fn probe_act(client: &Client) -> bool {
    let empty = Op::DesktopAct(pb::DesktopActRequest::default());
    match client.call_with_timeout(empty, PROBE_TIMEOUT.min(client.request_timeout())).await {
        Ok(_) => true,
        Err(err) => err.code() == Some(pb::ErrorCode::ConsentRequired),
    }
}

/// Follows the agent's Hellos: each says whether act-then-look is served.
async fn follow_hellos(server: Arc<TetherMcp>) {
    let mut events = match server.client.events().await {
        Ok(events) => events,
        Err(err) => {
            tracing::warn!(error = %err, "cannot follow the agent's Hello; desktop_act stays as probed");
            return;
        }
    };
    while let Some(message) = events.next().await {
        if let Ok(AgentMessage::Hello(hello)) = message {
            let served = hello.capabilities.as_ref().is_some_and(|c| c.desktop_act);
            server.set_act_served(served).await;
        }
    }
}

/// An `Arc` so the Hello follower and the service share one server.
#[derive(Clone)]
struct Shared(Arc<TetherMcp>);

impl ServerHandler for Shared {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build();
        let subject = self.0.client.subjects().rpc();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("tetherctl", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Tools act on one machine through its Tether agent ({subject}): run commands, read, \
                 write and list files, and see and drive its screen. Take a screenshot before \
                 clicking: coordinates are pixels of the latest screenshot."
            ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let served = self.0.act_served.load(Ordering::Relaxed);
        let tools =
            self.0.tool_router.list_all().into_iter().filter(|t| served || t.name != ACT_TOOL).collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name == ACT_TOOL && !self.0.act_served.load(Ordering::Relaxed) {
            let message = "desktop_act is not served by this agent; use screenshot and the input tools";
            return Ok(refused_input(message.to_owned()).into());
        }
        self.0.tool_router.call(ToolCallContext::new(self.0.as_ref(), request, context)).await
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        if let Ok(mut peer) = self.0.peer.lock() {
            *peer = Some(context.peer.clone());
        }
    }
}

/// Serves MCP on stdin/stdout until the client closes them.
pub async fn run(client: Client, args: McpArgs) -> anyhow::Result<ExitCode> {
    let server = Arc::new(TetherMcp::new(client, &args));
    let served = probe_act(&server.client).await;
    server.act_served.store(served, Ordering::Relaxed);
    let follower = tokio::spawn(follow_hellos(server.clone()));
    let service = Shared(server).serve(rmcp::transport::stdio()).await.context("starting the MCP session")?;
    let quit = service.waiting().await;
    follower.abort();
    quit.context("the MCP session failed")?;
    Ok(ExitCode::SUCCESS)
}
