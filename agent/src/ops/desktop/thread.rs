//! The desktop thread: it owns the one [`Screen`] (so input is serialised through one
//! connection and X11 never blocks an async worker) and runs jobs sent from async code. When
//! no job has come for a while it lets the screen tidy up (X11 gives back remapped keys).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::Duration;

use crate::error::{OpError, OpResult};
use crate::ops::desktop::screen::Screen;

/// Quiet time after which the screen's `idle` runs.
const IDLE: Duration = Duration::from_secs(1);

type Job = Box<dyn FnOnce(&mut dyn Screen) + Send>;

/// A handle to the desktop thread; the thread ends when the last handle drops.
#[derive(Clone)]
pub struct ScreenThread {
    jobs: mpsc::Sender<Job>,
}

impl ScreenThread {
    /// Starts the thread and opens the screen on it with `open`; returns once it is open.
    pub fn spawn<S: Screen + 'static>(
        open: impl FnOnce() -> OpResult<S> + Send + 'static,
    ) -> OpResult<ScreenThread> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (opened_tx, opened) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("tether-desktop".into())
            .spawn(move || {
                let mut screen = match open() {
                    Ok(screen) => {
                        let _ = opened_tx.send(Ok(()));
                        screen
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                serve(&mut screen, inbox);
            })
            .map_err(|e| OpError::os(format!("starting the desktop thread failed: {e}")))?;
        opened.recv().map_err(|_| OpError::os("the desktop thread died while opening the screen"))??;
        Ok(ScreenThread { jobs })
    }

    /// Runs `f` on the screen and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Screen) -> OpResult<T> + Send + 'static,
    ) -> OpResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |screen| {
            let _ = tx.send(f(screen));
        });
        self.jobs.send(job).map_err(|_| OpError::os("the desktop thread has stopped"))?;
        rx.await.map_err(|_| OpError::os("a desktop job failed (the desktop thread caught a panic)"))?
    }

    /// [`ScreenThread::run`] from blocking code (startup checks).
    pub fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Screen) -> OpResult<T> + Send + 'static,
    ) -> OpResult<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |screen| {
            let _ = tx.send(f(screen));
        });
        self.jobs.send(job).map_err(|_| OpError::os("the desktop thread has stopped"))?;
        rx.recv().map_err(|_| OpError::os("a desktop job failed (the desktop thread caught a panic)"))?
    }
}

fn serve(screen: &mut dyn Screen, inbox: mpsc::Receiver<Job>) {
    loop {
        match inbox.recv_timeout(IDLE) {
            Ok(job) => {
                // A panicking job drops its reply sender (its caller sees an error); the
                // thread and the screen carry on.
                if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut *screen))).is_err() {
                    tracing::error!("a desktop job panicked");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => screen.idle(),
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
