//! From the wire's desktop events to actions on a [`Screen`]: validation (unset actions, text
//! with DOWN/UP), coordinates in a stated screenshot space mapped to native pixels, off-screen
//! points refused (never clamped), scroll deltas clamped. Platform-neutral.

use tether_proto::pb;

use crate::error::{OpError, OpResult};
use crate::ops::desktop::keys::{self, Chord};
use crate::ops::desktop::screen::{Button, Screen};

/// Most wheel notches one event scrolls in either direction.
pub const MAX_SCROLL_NOTCHES: i32 = 50;
/// Pointer moves between the ends of a drag, so applications see motion.
const DRAG_STEPS: i32 = 10;

/// A point as the request gave it: in native pixels, or in a screenshot of `space` size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub x: i32,
    pub y: i32,
    pub space: (u32, u32),
}

impl Point {
    pub fn new(x: i32, y: i32, space_width: u32, space_height: u32) -> OpResult<Point> {
        if (space_width == 0) != (space_height == 0) {
            return Err(OpError::protocol("space_width and space_height must be set together"));
        }
        Ok(Point { x, y, space: (space_width, space_height) })
    }

    /// Native pixel for a screen of `native` size: the centre of the screenshot pixel, scaled.
    /// A point outside the screen (or its screenshot) is an error.
    pub fn resolve(self, native: (u32, u32)) -> OpResult<(i32, i32)> {
        let space = if self.space.0 == 0 { native } else { self.space };
        let inside = |v: i32, limit: u32| v >= 0 && (v as u32) < limit;
        if !inside(self.x, space.0) || !inside(self.y, space.1) {
            return Err(OpError::protocol(format!(
                "point ({}, {}) is outside the {}x{} screen",
                self.x, self.y, space.0, space.1
            ))
            .with("x", self.x)
            .with("y", self.y)
            .with("width", space.0)
            .with("height", space.1));
        }
        if space == native {
            return Ok((self.x, self.y));
        }
        let map = |v: i32, from: u32, to: u32| {
            ((2 * i64::from(v) + 1) * i64::from(to) / (2 * i64::from(from))) as i32
        };
        Ok((map(self.x, space.0, native.0), map(self.y, space.1, native.1)))
    }
}

/// One step of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Move(Point),
    Button { button: Button, down: bool },
    Scroll { dx: i32, dy: i32 },
    Chord { chord: Chord, press: bool, release: bool },
    Text(String),
    Drag { from: Point, to: Point, button: Button },
    Wait(std::time::Duration),
}

fn button(raw: i32) -> OpResult<Button> {
    match pb::PointerButton::try_from(raw) {
        Ok(pb::PointerButton::Unspecified | pb::PointerButton::Left) => Ok(Button::Left),
        Ok(pb::PointerButton::Right) => Ok(Button::Right),
        Ok(pb::PointerButton::Middle) => Ok(Button::Middle),
        Err(_) => Err(OpError::protocol(format!("unknown pointer button {raw}"))),
    }
}

pub fn pointer(event: &pb::PointerEvent) -> OpResult<Vec<Action>> {
    let at = Action::Move(Point::new(event.x, event.y, event.space_width, event.space_height)?);
    let b = button(event.button)?;
    let press = |down| Action::Button { button: b, down };
    Ok(match pb::PointerAction::try_from(event.action) {
        Ok(pb::PointerAction::Move) => vec![at],
        Ok(pb::PointerAction::Down) => vec![at, press(true)],
        Ok(pb::PointerAction::Up) => vec![at, press(false)],
        Ok(pb::PointerAction::Click) => vec![at, press(true), press(false)],
        Ok(pb::PointerAction::DoubleClick) => vec![at, press(true), press(false), press(true), press(false)],
        Ok(pb::PointerAction::Unspecified) | Err(_) => {
            return Err(OpError::protocol(format!(
                "pointer action {} is not one of MOVE..DOUBLE_CLICK",
                event.action
            )));
        }
    })
}

pub fn key(event: &pb::KeyEvent) -> OpResult<Vec<Action>> {
    let action = pb::KeyAction::try_from(event.action)
        .map_err(|_| OpError::protocol(format!("unknown key action {}", event.action)))?;
    if event.is_text {
        if !matches!(action, pb::KeyAction::Unspecified | pb::KeyAction::Press) {
            return Err(OpError::protocol("text is typed with PRESS; DOWN and UP apply to keys"));
        }
        return Ok(vec![Action::Text(event.key.clone())]);
    }
    let chord = keys::parse_chord(&event.key)?;
    let (press, release) = match action {
        pb::KeyAction::Down => (true, false),
        pb::KeyAction::Up => (false, true),
        pb::KeyAction::Press | pb::KeyAction::Unspecified => (true, true),
    };
    Ok(vec![Action::Chord { chord, press, release }])
}

pub fn scroll(event: &pb::ScrollEvent) -> OpResult<Vec<Action>> {
    let clamp = |d: i32| d.clamp(-MAX_SCROLL_NOTCHES, MAX_SCROLL_NOTCHES);
    let wheel = Action::Scroll { dx: clamp(event.delta_x), dy: clamp(event.delta_y) };
    if event.at_pointer {
        return Ok(vec![wheel]);
    }
    Ok(vec![Action::Move(Point::new(event.x, event.y, event.space_width, event.space_height)?), wheel])
}

/// The actions of one `desktop_input` request.
pub fn input(request: &pb::DesktopInputRequest) -> OpResult<Vec<Action>> {
    use pb::desktop_input_request::Event;
    match &request.event {
        Some(Event::Pointer(p)) => pointer(p),
        Some(Event::Key(k)) => key(k),
        Some(Event::Scroll(s)) => scroll(s),
        None => Err(OpError::protocol("desktop_input carries no event")),
    }
}

/// Longest single `wait_ms` of an act list.
pub const MAX_WAIT_MS: u32 = 10_000;

/// The actions of one act-list entry.
pub fn act(action: &pb::DesktopAction) -> OpResult<Vec<Action>> {
    use pb::desktop_action::Action as A;
    match &action.action {
        Some(A::Pointer(p)) => pointer(p),
        Some(A::Key(k)) => key(k),
        Some(A::Scroll(s)) => scroll(s),
        Some(A::Drag(d)) => Ok(vec![Action::Drag {
            from: Point::new(d.from_x, d.from_y, d.space_width, d.space_height)?,
            to: Point::new(d.to_x, d.to_y, d.space_width, d.space_height)?,
            button: button(d.button)?,
        }]),
        Some(A::WaitMs(ms)) => {
            Ok(vec![Action::Wait(std::time::Duration::from_millis((*ms).min(MAX_WAIT_MS).into()))])
        }
        None => Err(OpError::protocol("act entry carries no action")),
    }
}

/// Applies `actions` (no waits) to `screen`, then waits until the display has processed them.
pub fn apply(screen: &mut dyn Screen, actions: &[Action]) -> OpResult<()> {
    let mut native = None;
    let mut size = |screen: &mut dyn Screen| -> OpResult<(u32, u32)> {
        if let Some(size) = native {
            return Ok(size);
        }
        let size = screen.size()?;
        native = Some(size);
        Ok(size)
    };
    for action in actions {
        match action {
            Action::Move(p) => {
                let (x, y) = p.resolve(size(screen)?)?;
                screen.pointer_move(x, y)?;
            }
            Action::Button { button, down } => screen.button(*button, *down)?,
            Action::Scroll { dx, dy } => screen.scroll(*dx, *dy)?,
            Action::Chord { chord, press, release } => {
                if *press {
                    chord.keysyms().try_for_each(|k| screen.key(k, true))?;
                }
                if *release {
                    chord.keysyms().rev().try_for_each(|k| screen.key(k, false))?;
                }
            }
            Action::Text(text) => screen.text(text)?,
            Action::Drag { from, to, button } => {
                let native = size(screen)?;
                let (fx, fy) = from.resolve(native)?;
                let (tx, ty) = to.resolve(native)?;
                screen.pointer_move(fx, fy)?;
                screen.button(*button, true)?;
                for step in 1..=DRAG_STEPS {
                    screen.pointer_move(
                        fx + (tx - fx) * step / DRAG_STEPS,
                        fy + (ty - fy) * step / DRAG_STEPS,
                    )?;
                }
                screen.button(*button, false)?;
            }
            Action::Wait(_) => {}
        }
    }
    screen.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_map_from_screenshot_space_and_off_screen_is_an_error() {
        assert_eq!(Point::new(100, 50, 0, 0).unwrap().resolve((1280, 800)).unwrap(), (100, 50));
        assert_eq!(Point::new(100, 50, 640, 400).unwrap().resolve((1280, 800)).unwrap(), (201, 101));
        assert_eq!(Point::new(639, 399, 640, 400).unwrap().resolve((1280, 800)).unwrap(), (1279, 799));
        assert!(Point::new(1280, 0, 0, 0).unwrap().resolve((1280, 800)).is_err());
        assert!(Point::new(-1, 0, 0, 0).unwrap().resolve((1280, 800)).is_err());
        assert!(Point::new(640, 0, 640, 400).unwrap().resolve((1280, 800)).is_err());
        assert!(Point::new(1, 1, 640, 0).is_err());
    }

    #[test]
    fn events_become_actions_and_bad_ones_are_refused() {
        let click = pb::PointerEvent {
            x: 1,
            y: 2,
            action: pb::PointerAction::DoubleClick as i32,
            ..Default::default()
        };
        assert_eq!(pointer(&click).unwrap().len(), 5);
        let unset = pb::PointerEvent { action: 0, ..Default::default() };
        assert!(pointer(&unset).is_err());
        let text_down = pb::KeyEvent { key: "x".into(), is_text: true, action: pb::KeyAction::Down as i32 };
        assert!(key(&text_down).is_err());
        let wheel = pb::ScrollEvent { delta_y: 1000, at_pointer: true, ..Default::default() };
        assert_eq!(scroll(&wheel).unwrap(), vec![Action::Scroll { dx: 0, dy: MAX_SCROLL_NOTCHES }]);
    }
}
