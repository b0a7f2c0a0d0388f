//! `tetherctl shell` in a real terminal: tmux gives it a pseudo-terminal like a user's, and the
//! test types into that pane. The remote shell runs through the real agent and relay. While it
//! runs, the pane's terminal (read from outside with `stty -F`) must be raw and a resized window
//! must reach the remote terminal; after `exit`, the local settings must be exactly what they
//! were before.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tether_tests::relay::*;
use tether_tests::*;

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(script: &Path) -> Tmux {
        let tmux = Tmux { socket: format!("tether-test-{}", std::process::id()) };
        let status = tmux
            .cmd()
            .args(["-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40", "sh"])
            .arg(script)
            .status()
            .expect("tmux runs (scripts/setup.sh installs it)");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]);
        cmd
    }

    fn type_line(&self, text: &str) {
        let status = self.cmd().args(["send-keys", "-t", "0", "-l", text]).status().expect("send-keys");
        assert!(status.success());
        let status = self.cmd().args(["send-keys", "-t", "0", "Enter"]).status().expect("send-keys");
        assert!(status.success());
    }

    fn screen(&self) -> String {
        self.display("")
    }

    /// `tmux display -p FORMAT` for the pane, or the screen's text when `format` is empty.
    fn display(&self, format: &str) -> String {
        let mut cmd = self.cmd();
        match format {
            "" => cmd.args(["capture-pane", "-p", "-t", "0"]),
            _ => cmd.args(["display", "-p", "-t", "0", format]),
        };
        let out = cmd.output().expect("tmux runs");
        assert!(out.status.success(), "tmux {format:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// (columns, rows) of the pane.
    fn pane_size(&self) -> (u32, u32) {
        let text = self.display("#{pane_width} #{pane_height}");
        let mut numbers = text.split_whitespace().map(|n| n.parse().expect("a number"));
        (numbers.next().expect("width"), numbers.next().expect("height"))
    }

    /// The pane's terminal settings as `stty -a` words, read from outside the pane.
    fn pane_stty(&self) -> Vec<String> {
        let tty = self.display("#{pane_tty}");
        let out = Command::new("stty").args(["-F", tty.trim(), "-a"]).output().expect("stty runs");
        assert!(out.status.success(), "stty -F {tty}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).split([' ', ';', '\n']).map(str::to_owned).collect()
    }

    /// Types `command` (again, up to a bound: a keystroke may race a resize) until the screen
    /// shows `output` as a line of output.
    async fn type_until_shown(&self, command: &str, output: &str) -> bool {
        for _ in 0..30 {
            self.type_line(command);
            tokio::time::sleep(Duration::from_millis(500)).await;
            if shows_line(&self.screen(), output) {
                return true;
            }
        }
        false
    }
}

/// Asserts every one of `flags` is among the `stty -a` words.
fn assert_stty(words: &[String], flags: &[&str], when: &str) {
    for flag in flags {
        assert!(words.iter().any(|w| w == flag), "{when}: {flag} expected in `stty -a`: {words:?}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

#[tokio::test]
async fn shell_under_tmux_is_raw_follows_resizes_and_leaves_the_terminal_sane() {
    let relay = Relay::start(&[]).await;
    let nats = Nats::start().await;
    let opts = AgentOpts { relay_url: Some(relay.stream_url()), ..AgentOpts::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = d.join("session.sh");
    std::fs::write(
        &script,
        format!(
            "export TETHER_NATS_URL='{nats}' TETHER_NATS_TOKEN='{token}' TETHER_WORKSPACE_ID='{ws}' TETHER_AGENT_ID='{id}'\n\
             export TETHER_RELAY_URL='{relay}' TETHER_RELAY_VIEWER_SECRET='{secret}'\n\
             stty -g > '{d}/before'\n\
             '{ctl}' shell -- sh\n\
             echo \"exit=$?\" > '{d}/status.tmp'\n\
             stty -g > '{d}/after'\n\
             mv '{d}/status.tmp' '{d}/status'\n\
             sleep 60\n",
            nats = nats.url,
            token = nats.token.as_deref().unwrap_or_default(),
            ws = agent.ws,
            id = agent.id,
            relay = relay.stream_url(),
            secret = VIEWER_SECRET,
            d = d.display(),
            ctl = bin("tetherctl").display(),
        ),
    )
    .unwrap();
    let tmux = Tmux::start(&script);
    // The remote shell is up once typed commands come back with their output.
    let shown = tmux.type_until_shown("echo shown-$((6*7))", "shown-42").await;
    assert!(
        shown,
        "the command's output never appeared; screen:\n{}\nagent log:\n{}",
        tmux.screen(),
        agent.log()
    );

    // Live: the local terminal is raw (no line editing, no local echo, no signal keys).
    assert_stty(&tmux.pane_stty(), &["-icanon", "-echo", "-isig"], "during the session");

    // The remote terminal has the pane's size, and follows when the window is resized.
    let (cols, rows) = tmux.pane_size();
    let size = format!("{rows} {cols}");
    assert!(
        tmux.type_until_shown("stty size", &size).await,
        "remote size {size}; screen:\n{}",
        tmux.screen()
    );
    let status =
        tmux.cmd().args(["resize-window", "-t", "0", "-x", "100", "-y", "30"]).status().expect("tmux");
    assert!(status.success(), "tmux resize-window");
    eventually("the pane to be 100x30", || tmux.pane_size() == (100, 30)).await;
    assert!(
        tmux.type_until_shown("stty size", "30 100").await,
        "resize not forwarded; screen:\n{}",
        tmux.screen()
    );

    tmux.type_line("exit 7");
    eventually("tetherctl to exit", || d.join("status").exists()).await;
    let status = std::fs::read_to_string(d.join("status")).unwrap();
    assert_eq!(status.trim(), "exit=7", "tetherctl exits with the remote shell's code");
    assert_stty(&tmux.pane_stty(), &["icanon", "echo", "isig"], "after the session");
    let before = std::fs::read_to_string(d.join("before")).unwrap();
    let after = std::fs::read_to_string(d.join("after")).unwrap();
    assert_eq!(before, after, "the local terminal settings are restored");
}
