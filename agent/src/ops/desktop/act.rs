//! Act, then look: run a list of input actions, then wait until the screen settles and take
//! one screenshot, in one round trip. Settled means the screen changed from what it was before
//! the actions and two captures in a row are equal; or it stayed as it was for a quiet time
//! (the action had no visible effect); or the deadline passed. The reply says which, and how
//! long it waited, so a computer-use loop never sleeps a fixed two seconds.

use std::time::{Duration, Instant};

use tether_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::error::{OpError, OpResult};
use crate::ops::desktop::request::{self, Action};
use crate::ops::desktop::screen::Frame;
use crate::ops::desktop::thread::ScreenThread;

/// Pause between settle captures.
const SETTLE_POLL: Duration = Duration::from_millis(15);
const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_millis(2000);
const MAX_SETTLE_TIMEOUT: Duration = Duration::from_millis(10_000);
const DEFAULT_SETTLE_QUIET: Duration = Duration::from_millis(250);
/// Most entries one act request may carry.
pub const MAX_ACTIONS: usize = 1000;
/// Most time the `wait_ms` entries of one act request may add up to.
pub const MAX_TOTAL_WAIT: Duration = Duration::from_secs(60);

/// How the wait for a settled screen ended.
pub struct Settled {
    pub frame: Frame,
    pub outcome: pb::SettleOutcome,
    pub waited: Duration,
}

/// Parses every entry up front, so a malformed list is refused before anything is injected.
pub fn parse(request: &pb::DesktopActRequest) -> OpResult<Vec<Vec<Action>>> {
    if request.actions.len() > MAX_ACTIONS {
        return Err(OpError::protocol(format!("an act request carries at most {MAX_ACTIONS} actions")));
    }
    let parsed: Vec<Vec<Action>> = request
        .actions
        .iter()
        .enumerate()
        .map(|(i, a)| request::act(a).map_err(|e| e.with("action_index", i).with("actions_done", 0)))
        .collect::<OpResult<_>>()?;
    let waits: Duration = parsed
        .iter()
        .flatten()
        .map(|a| match a {
            Action::Wait(d) => *d,
            _ => Duration::ZERO,
        })
        .sum();
    if waits > MAX_TOTAL_WAIT {
        return Err(OpError::protocol(format!(
            "the waits of one act request add up to at most {MAX_TOTAL_WAIT:?} (these: {waits:?})"
        )));
    }
    Ok(parsed)
}

/// Runs the actions in order; a failing one stops the list and its error names its index.
/// An epoch advance (`cancel`) stops the list before its next action.
pub async fn run(
    screen: &ScreenThread,
    actions: Vec<Vec<Action>>,
    cancel: &CancellationToken,
) -> OpResult<()> {
    for (i, steps) in actions.into_iter().enumerate() {
        if cancel.is_cancelled() {
            // Plain, so dispatch reports it as FENCED.
            return Err(OpError::cancelled());
        }
        let result = match steps.as_slice() {
            [Action::Wait(pause)] => {
                tokio::select! {
                    _ = tokio::time::sleep(*pause) => Ok(()),
                    _ = cancel.cancelled() => Err(OpError::cancelled()),
                }
            }
            _ => screen.run(move |s| request::apply(s, &steps)).await,
        };
        match result {
            Err(e) if e == OpError::cancelled() => return Err(e),
            other => other.map_err(|e| e.with("action_index", i).with("actions_done", i))?,
        }
    }
    Ok(())
}

/// Captures until the screen settles (see the module doc); `before` is the screen as it was
/// before the actions.
pub async fn settle(
    screen: &ScreenThread,
    before: Frame,
    timeout_ms: u32,
    quiet_ms: u32,
) -> OpResult<Settled> {
    let timeout = match timeout_ms {
        0 => DEFAULT_SETTLE_TIMEOUT,
        ms => Duration::from_millis(ms.into()).min(MAX_SETTLE_TIMEOUT),
    };
    let quiet = match quiet_ms {
        0 => DEFAULT_SETTLE_QUIET,
        ms => Duration::from_millis(ms.into()).min(timeout),
    };
    let started = Instant::now();
    let mut previous = screen.run(|s| s.capture(false)).await?;
    loop {
        let waited = started.elapsed();
        if waited >= timeout {
            return Ok(Settled { frame: previous, outcome: pb::SettleOutcome::Deadline, waited });
        }
        tokio::time::sleep(SETTLE_POLL).await;
        let current = screen.run(|s| s.capture(false)).await?;
        let waited = started.elapsed();
        if current == previous {
            if current != before {
                return Ok(Settled { frame: current, outcome: pb::SettleOutcome::Changed, waited });
            }
            if waited >= quiet {
                return Ok(Settled { frame: current, outcome: pb::SettleOutcome::Unchanged, waited });
            }
        }
        previous = current;
    }
}
