//! `tetherctl shell` in a real terminal: tmux gives it a pseudo-terminal like a user's, and the
//! test types into that pane. The remote shell runs through the real agent and relay; after
//! `exit`, the local terminal settings must be exactly what they were before.

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
        let out = self.cmd().args(["capture-pane", "-p", "-t", "0"]).output().expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

#[tokio::test]
async fn shell_under_tmux_runs_a_command_and_leaves_the_terminal_sane() {
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
            "export TETHER_NATS_URL='{nats}' TETHER_WORKSPACE_ID='{ws}' TETHER_AGENT_ID='{id}'\n\
             export TETHER_RELAY_URL='{relay}' TETHER_RELAY_VIEWER_SECRET='{secret}'\n\
             stty -g > '{d}/before'\n\
             '{ctl}' shell -- sh\n\
             echo \"exit=$?\" > '{d}/status.tmp'\n\
             stty -g > '{d}/after'\n\
             mv '{d}/status.tmp' '{d}/status'\n\
             sleep 60\n",
            nats = nats.url,
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
    let mut shown = false;
    for _ in 0..60 {
        tmux.type_line("echo shown-$((6*7))");
        tokio::time::sleep(Duration::from_millis(500)).await;
        if shows_line(&tmux.screen(), "shown-42") {
            shown = true;
            break;
        }
    }
    assert!(
        shown,
        "the command's output never appeared; screen:\n{}\nagent log:\n{}",
        tmux.screen(),
        agent.log()
    );
    tmux.type_line("exit 7");
    eventually("tetherctl to exit", || d.join("status").exists()).await;
    let status = std::fs::read_to_string(d.join("status")).unwrap();
    assert_eq!(status.trim(), "exit=7", "tetherctl exits with the remote shell's code");
    let before = std::fs::read_to_string(d.join("before")).unwrap();
    let after = std::fs::read_to_string(d.join("after")).unwrap();
    assert_eq!(before, after, "the local terminal settings are restored");
}
