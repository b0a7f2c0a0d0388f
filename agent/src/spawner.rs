//! Every child of the agent is forked by one thread of its own. A child inherits the Landlock
//! domain of the thread that forked it, so a layer applied once to this thread costs nothing
//! per command: the network layer (tens of thousands of port rules, copied into a new domain
//! on every `landlock_restrict_self`, ~30 ms) is applied here once instead of in each child.
//! The thread only forks; it never connects anywhere, so the layer costs the agent nothing.
//! Forking off the async workers also keeps a slow fork (a large agent, a busy machine) from
//! stalling other requests.

use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Work run once on the spawning thread before its first fork (e.g. restricting it with a
/// Landlock layer every child then inherits). If it fails, every spawn fails with its error:
/// no child ever runs without what it was meant to carry.
pub type ThreadSetup = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

type Job = (Command, oneshot::Sender<io::Result<Child>>);

/// The spawning thread, started on first use on the runtime of the first caller.
#[derive(Default)]
pub struct Spawner {
    setup: Mutex<Option<ThreadSetup>>,
    jobs: OnceLock<Mutex<mpsc::Sender<Job>>>,
}

impl Spawner {
    /// Sets what the thread does before its first fork; only before the first spawn.
    pub fn set_thread_setup(&self, setup: ThreadSetup) {
        *self.setup.lock().unwrap_or_else(PoisonError::into_inner) = Some(setup);
    }

    /// Spawns `cmd` on the spawning thread; await the result (or `blocking_recv` it off the
    /// async workers). `cmd` is dropped there after the fork, closing what it held open.
    pub fn spawn(&self, cmd: Command) -> oneshot::Receiver<io::Result<Child>> {
        let (reply, result) = oneshot::channel();
        let jobs = self.jobs.get_or_init(|| Mutex::new(self.start()));
        let sent = jobs.lock().unwrap_or_else(PoisonError::into_inner).send((cmd, reply));
        if let Err(mpsc::SendError((_, reply))) = sent {
            let _ = reply.send(Err(io::Error::other("the agent's spawning thread is gone")));
        }
        result
    }

    fn start(&self) -> mpsc::Sender<Job> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let setup = self.setup.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let runtime = tokio::runtime::Handle::try_current();
        let started = std::thread::Builder::new().name("tether-spawner".into()).spawn(move || {
            let prepared = match (&runtime, setup) {
                (Err(e), _) => Err(io::Error::other(format!("spawning needs a tokio runtime: {e}"))),
                (Ok(_), Some(setup)) => setup().map_err(|e| io::Error::new(e.kind(), e.to_string())),
                (Ok(_), None) => Ok(()),
            };
            let _context = runtime.as_ref().ok().map(|r| r.enter());
            for (cmd, reply) in queue {
                let result = match &prepared {
                    Ok(()) => spawn_and_drop(cmd),
                    Err(e) => Err(io::Error::new(e.kind(), format!("preparing the spawning thread: {e}"))),
                };
                let _ = reply.send(result);
            }
        });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the spawning thread; commands will fail");
        }
        jobs
    }
}

fn spawn_and_drop(mut cmd: Command) -> io::Result<Child> {
    let child = cmd.spawn();
    drop(cmd);
    child
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn output_of(spawner: &Spawner, program: &str) -> io::Result<String> {
        let mut cmd = Command::new(program);
        cmd.stdout(std::process::Stdio::piped());
        let child = spawner.spawn(cmd).await.expect("an answer")?;
        let out = child.wait_with_output().await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[tokio::test]
    async fn children_come_from_one_thread_prepared_once() {
        let spawner = Spawner::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        spawner.set_thread_setup(Arc::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert_eq!(std::thread::current().name(), Some("tether-spawner"));
            Ok(())
        }));
        assert_eq!(output_of(&spawner, "/bin/echo").await.unwrap(), "\n");
        assert_eq!(output_of(&spawner, "/bin/echo").await.unwrap(), "\n");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_setup_fails_every_spawn_instead_of_running_unprepared() {
        let spawner = Spawner::default();
        spawner.set_thread_setup(Arc::new(|| Err(io::Error::other("no layer"))));
        for _ in 0..2 {
            let err = output_of(&spawner, "/bin/true").await.unwrap_err();
            assert!(err.to_string().contains("no layer"), "{err}");
        }
    }
}
