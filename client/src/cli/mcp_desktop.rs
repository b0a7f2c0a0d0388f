//! The desktop side of `tetherctl mcp`: tool inputs for screenshot, click, type, keys, scroll
//! and act-then-look, and their requests. A model sees screenshots scaled down to a size it
//! handles well, so the coordinates it gives back are pixels of the latest screenshot: every
//! input carries that screenshot's size as its coordinate space (the `--space` of the CLI) and
//! the agent maps it to the screen.

use std::sync::Mutex;

use base64::Engine as _;
use rmcp::model::{CallToolResult, ContentBlock};
use schemars::JsonSchema;
use serde::Deserialize;
use tether_client::pb;
use tether_client::pb::desktop_action::Action;
use tether_client::pb::desktop_input_request::Event;

use super::desktop::{self, ButtonArg};
use super::mcp_text;

/// How screenshots are taken: scaled down to fit `max`, PNG or JPEG.
#[derive(Debug, Clone, Copy)]
pub struct ShotOptions {
    pub max: (u32, u32),
    pub jpeg: Option<u32>,
}

impl ShotOptions {
    pub fn request(self, cursor: bool) -> pb::DesktopScreenshotRequest {
        pb::DesktopScreenshotRequest {
            max_width: self.max.0,
            max_height: self.max.1,
            format: if self.jpeg.is_some() { pb::ImageFormat::Jpeg } else { pb::ImageFormat::Png } as i32,
            quality: self.jpeg.unwrap_or(0),
            cursor,
        }
    }
}

/// The size of the latest screenshot, which the coordinates of the next inputs refer to.
/// Before the first screenshot coordinates are screen pixels.
#[derive(Debug, Default)]
pub struct Space(Mutex<Option<(u32, u32)>>);

impl Space {
    pub fn get(&self) -> (u32, u32) {
        self.0.lock().map(|s| s.unwrap_or((0, 0))).unwrap_or((0, 0))
    }

    fn set(&self, shot: &pb::DesktopScreenshotResponse) {
        if let Ok(mut space) = self.0.lock() {
            *space = Some((shot.width, shot.height));
        }
    }

    /// The tool result of a screenshot (its description, then the image); later inputs refer
    /// to its pixels.
    pub fn shot_result(
        &self,
        shot: &pb::DesktopScreenshotResponse,
        before: Option<String>,
    ) -> CallToolResult {
        self.set(shot);
        let mime = if shot.format == pb::ImageFormat::Jpeg as i32 { "image/jpeg" } else { "image/png" };
        let data = base64::engine::general_purpose::STANDARD.encode(&shot.png);
        let mut text = mcp_text::screenshot_text(shot);
        if let Some(before) = before {
            text = format!("{before}\n{text}");
        }
        CallToolResult::success(vec![ContentBlock::text(text), ContentBlock::image(data, mime)])
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Button {
    #[default]
    Left,
    Right,
    Middle,
}

impl Button {
    fn proto(self) -> i32 {
        let button = match self {
            Button::Left => pb::PointerButton::Left,
            Button::Right => pb::PointerButton::Right,
            Button::Middle => pb::PointerButton::Middle,
        };
        button as i32
    }
}

impl From<Button> for ButtonArg {
    fn from(b: Button) -> ButtonArg {
        match b {
            Button::Left => ButtonArg::Left,
            Button::Right => ButtonArg::Right,
            Button::Middle => ButtonArg::Middle,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ScreenshotParams {
    /// Draw the mouse pointer into the image.
    #[serde(default)]
    pub cursor: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ClickParams {
    /// X in pixels of the latest screenshot.
    pub x: i32,
    /// Y in pixels of the latest screenshot.
    pub y: i32,
    /// Mouse button (default left).
    #[serde(default)]
    pub button: Button,
    /// Double-click instead of a single click.
    #[serde(default)]
    pub double: bool,
}

impl ClickParams {
    pub fn event(&self, space: (u32, u32)) -> Event {
        let action = if self.double { pb::PointerAction::DoubleClick } else { pb::PointerAction::Click };
        desktop::pointer_event(self.x, self.y, action, self.button.into(), space)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TypeTextParams {
    /// The text to type (any Unicode; newlines press Enter).
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PressKeysParams {
    /// A key or chord: `Enter`, `ctrl+c`, `shift+Tab`, `ctrl+alt+t`, `F5`, `PageDown`, `super`.
    pub keys: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ScrollParams {
    /// Wheel notches down (negative: up).
    #[serde(default)]
    pub dy: i32,
    /// Wheel notches right (negative: left).
    #[serde(default)]
    pub dx: i32,
    /// Scroll with the pointer at this X (pixels of the latest screenshot); needs `y` too.
    /// Without it the wheel turns where the pointer is.
    pub x: Option<i32>,
    /// Scroll with the pointer at this Y; needs `x` too.
    pub y: Option<i32>,
}

impl ScrollParams {
    /// The scroll event, or why the position is incomplete.
    pub fn event(&self, space: (u32, u32)) -> Result<Event, String> {
        let at = match (self.x, self.y) {
            (Some(x), Some(y)) => Some((x, y)),
            (None, None) => None,
            _ => return Err("give both x and y, or neither".into()),
        };
        Ok(desktop::scroll_event(self.dx, self.dy, at, space))
    }
}

/// One step of `desktop_act`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActStep {
    /// Click at x, y.
    Click {
        x: i32,
        y: i32,
        #[serde(default)]
        button: Button,
    },
    /// Double-click at x, y.
    DoubleClick { x: i32, y: i32 },
    /// Move the pointer to x, y.
    Move { x: i32, y: i32 },
    /// Press the left button at from_x, from_y, move to to_x, to_y, release.
    Drag { from_x: i32, from_y: i32, to_x: i32, to_y: i32 },
    /// Turn the wheel (dy > 0 down, dx > 0 right), at x, y if given.
    Scroll {
        #[serde(default)]
        dx: i32,
        #[serde(default)]
        dy: i32,
        x: Option<i32>,
        y: Option<i32>,
    },
    /// Press a key or chord, e.g. `ctrl+s`.
    Key { keys: String },
    /// Type text.
    Type { text: String },
    /// Pause this many milliseconds.
    Wait { ms: u32 },
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ActParams {
    /// The steps, run in order; coordinates are pixels of the latest screenshot.
    pub actions: Vec<ActStep>,
    /// Take the settled screenshot afterwards (default true).
    #[serde(default = "yes")]
    pub screenshot: bool,
    /// Longest wait for the screen to settle, in ms (default 2000, at most 10000).
    #[serde(default)]
    pub settle_timeout_ms: u32,
}

fn yes() -> bool {
    true
}

impl ActParams {
    pub fn request(&self, space: (u32, u32), shot: ShotOptions) -> Result<pb::DesktopActRequest, String> {
        let actions = self
            .actions
            .iter()
            .enumerate()
            .map(|(i, step)| step_action(step, space).map_err(|e| format!("action {i}: {e}")))
            .map(|a| a.map(|action| pb::DesktopAction { action: Some(action) }))
            .collect::<Result<_, _>>()?;
        Ok(pb::DesktopActRequest {
            actions,
            screenshot: self.screenshot.then(|| shot.request(false)),
            settle_timeout_ms: self.settle_timeout_ms,
            settle_quiet_ms: 0,
        })
    }
}

fn step_action(step: &ActStep, space: (u32, u32)) -> Result<Action, String> {
    let pointer = |x, y, action: pb::PointerAction, button: Button| {
        Action::Pointer(pb::PointerEvent {
            x,
            y,
            action: action as i32,
            button: button.proto(),
            space_width: space.0,
            space_height: space.1,
        })
    };
    let key = |key: &String, is_text| {
        Action::Key(pb::KeyEvent { key: key.clone(), is_text, action: pb::KeyAction::Press as i32 })
    };
    Ok(match step {
        ActStep::Click { x, y, button } => pointer(*x, *y, pb::PointerAction::Click, *button),
        ActStep::DoubleClick { x, y } => pointer(*x, *y, pb::PointerAction::DoubleClick, Button::Left),
        ActStep::Move { x, y } => pointer(*x, *y, pb::PointerAction::Move, Button::Left),
        ActStep::Drag { from_x, from_y, to_x, to_y } => Action::Drag(pb::DragAction {
            from_x: *from_x,
            from_y: *from_y,
            to_x: *to_x,
            to_y: *to_y,
            button: pb::PointerButton::Left as i32,
            space_width: space.0,
            space_height: space.1,
        }),
        ActStep::Scroll { dx, dy, x, y } => {
            let (x, y, at_pointer) = match (x, y) {
                (Some(x), Some(y)) => (*x, *y, false),
                (None, None) => (0, 0, true),
                _ => return Err("give both x and y, or neither".into()),
            };
            Action::Scroll(pb::ScrollEvent {
                x,
                y,
                delta_x: *dx,
                delta_y: *dy,
                space_width: space.0,
                space_height: space.1,
                at_pointer,
            })
        }
        ActStep::Key { keys } => key(keys, false),
        ActStep::Type { text } => key(text, true),
        ActStep::Wait { ms } => Action::WaitMs(*ms),
    })
}

/// The first line of an act result: how many actions ran and how the screen settled.
pub fn act_summary(reply: &pb::DesktopActResponse) -> String {
    let settle = pb::SettleOutcome::try_from(reply.settle).unwrap_or_default().as_str_name();
    let settle = settle.trim_start_matches("SETTLE_OUTCOME_").to_ascii_lowercase();
    match reply.screenshot {
        Some(_) => format!(
            "{} actions done; screen {settle} after {} ms.",
            reply.actions_done, reply.settle_waited_ms
        ),
        None => format!("{} actions done.", reply.actions_done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn act_steps_become_actions_in_the_screenshot_space() {
        let params: ActParams = serde_json::from_value(serde_json::json!({
            "actions": [
                {"action": "click", "x": 10, "y": 20, "button": "right"},
                {"action": "drag", "from_x": 1, "from_y": 2, "to_x": 3, "to_y": 4},
                {"action": "scroll", "dy": 3},
                {"action": "key", "keys": "ctrl+s"},
                {"action": "type", "text": "hé"},
                {"action": "wait", "ms": 50}
            ]
        }))
        .unwrap();
        let shot = ShotOptions { max: (1280, 800), jpeg: None };
        let request = params.request((640, 400), shot).unwrap();
        assert_eq!(request.actions.len(), 6);
        let Some(Action::Pointer(p)) = &request.actions[0].action else { panic!("pointer") };
        assert_eq!(
            (p.x, p.y, p.button, p.space_width, p.space_height),
            (10, 20, pb::PointerButton::Right as i32, 640, 400)
        );
        let Some(Action::Scroll(s)) = &request.actions[2].action else { panic!("scroll") };
        assert!(s.at_pointer);
        assert_eq!(request.screenshot.unwrap().max_width, 1280);
    }

    #[test]
    fn half_a_position_and_unknown_steps_are_refused() {
        let half = ScrollParams { dx: 0, dy: 1, x: Some(3), y: None };
        assert!(half.event((0, 0)).is_err());
        let bad = serde_json::from_value::<ActParams>(serde_json::json!({"actions": [{"action": "tap"}]}));
        assert!(bad.is_err());
    }

    #[test]
    fn the_latest_screenshot_sets_the_space() {
        let space = Space::default();
        assert_eq!(space.get(), (0, 0));
        let shot = pb::DesktopScreenshotResponse { width: 640, height: 400, ..Default::default() };
        let result = space.shot_result(&shot, None);
        assert_eq!(space.get(), (640, 400));
        assert_eq!(result.content.len(), 2);
    }
}
