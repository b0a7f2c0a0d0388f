//! The managed virtual display: `--virtual-desktop` starts Xvfb, reports it in Hello, points
//! the commands the agent runs at it, and stops it when the agent stops (SIGTERM), and even
//! when the agent is killed (SIGKILL); a stale lock and socket are reclaimed; a display some
//! other X server holds is left alone; a GUI program a confined command starts draws on it with
//! screen-control consent, and cannot reach it without.

use std::time::Duration;

use nix::sys::signal::Signal;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::xvfb::{Xvfb, answers, free_display};
use tether_tests::{Agent, AgentOpts, Nats, eventually, exec_reply, op, pid_alive, read_pid, text};

fn virtual_opts(number: u32, geometry: &str) -> AgentOpts {
    AgentOpts {
        args: vec![
            "--virtual-desktop".into(),
            "--virtual-display".into(),
            format!(":{number}"),
            "--virtual-geometry".into(),
            geometry.into(),
            "--consent-screen-control".into(),
        ],
        env: vec![("DISPLAY".into(), String::new())],
        ..Default::default()
    }
}

#[tokio::test]
async fn the_agent_runs_its_own_xvfb_and_stops_it_when_it_stops() {
    let number = free_display();
    let nats = Nats::start().await;
    let mut agent = Agent::start_with(&nats, virtual_opts(number, "800x600")).await;
    let caps = agent.caps();
    assert!(caps.desktop, "{caps:?}\n{}", agent.log());
    let display = caps.display.as_ref().expect("display");
    assert_eq!(
        (display.id.clone(), display.width, display.height, display.r#virtual),
        (format!(":{number}"), 800, 600, true)
    );
    assert!(answers(number));
    let shot = match agent.call(Op::DesktopScreenshot(Default::default())).await {
        Ok(Reply::DesktopScreenshot(shot)) => shot,
        other => panic!("{other:?}"),
    };
    assert_eq!((shot.width, shot.height), (800, 600));
    let reply = exec_reply("exec", &agent, agent.call(Op::Exec(op::sh("echo \"$DISPLAY\""))).await);
    assert_eq!(
        text(&reply.stdout).trim(),
        format!("127.0.0.1:{number}"),
        "confined commands are pointed at the managed display's loopback bridge"
    );

    let xvfb = read_pid(&agent.state_dir.join("xvfb.pid"));
    assert!(pid_alive(xvfb));
    agent.proc.stop(Duration::from_secs(10));
    assert!(!pid_alive(xvfb), "Xvfb is gone after the agent stops");
    assert!(!std::path::Path::new(&format!("/tmp/.X{number}-lock")).exists(), "its lock is gone too");
}

#[tokio::test]
async fn a_killed_agent_leaves_no_xvfb_and_the_next_start_reclaims_the_display() {
    let number = free_display();
    let nats = Nats::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let opts = AgentOpts { state_dir: Some(state.path().to_owned()), ..virtual_opts(number, "640x480") };
    let mut agent = Agent::start_with(&nats, opts.clone()).await;
    assert!(agent.caps().desktop, "{}", agent.log());
    let xvfb = read_pid(&agent.state_dir.join("xvfb.pid"));
    agent.proc.signal(Signal::SIGKILL);
    let _ = agent.proc.wait_exit(Duration::from_secs(5));
    eventually("Xvfb to die with its agent", || !pid_alive(xvfb)).await;
    drop(agent);

    // Xvfb died by signal, leaving its lock and socket behind: the next start reclaims them.
    let again = Agent::start_with(&nats, opts).await;
    assert!(again.caps().desktop, "the display was reclaimed: {:?}\n{}", again.caps(), again.log());
}

#[tokio::test]
async fn a_stale_lock_is_reclaimed_but_a_live_foreign_display_is_left_alone() {
    // A lock naming a dead process and a socket nobody listens on: stale.
    let number = free_display();
    std::fs::create_dir_all("/tmp/.X11-unix").expect("socket dir");
    std::fs::write(format!("/tmp/.X{number}-lock"), "    999999\n").expect("lock");
    let socket = std::os::unix::net::UnixListener::bind(format!("/tmp/.X11-unix/X{number}")).expect("socket");
    drop(socket);
    let nats = Nats::start().await;
    let agent = Agent::start_with(&nats, virtual_opts(number, "640x480")).await;
    assert!(agent.caps().desktop, "stale files reclaimed: {:?}\n{}", agent.caps(), agent.log());
    drop(agent);

    // A display another X server answers on is not ours to take.
    let foreign = Xvfb::start(320, 240);
    let agent = Agent::start_with(&nats, virtual_opts(foreign.number, "640x480")).await;
    let caps = agent.caps();
    assert!(!caps.desktop);
    assert!(caps.desktop_unavailable_reason.contains("another X server"), "{caps:?}");
    assert!(answers(foreign.number), "the foreign display still answers");
}

/// The colour at the centre of a PNG screenshot of the agent's display.
async fn centre_colour(agent: &Agent) -> [u8; 3] {
    let shot = match agent.call(Op::DesktopScreenshot(Default::default())).await {
        Ok(Reply::DesktopScreenshot(shot)) => shot,
        other => panic!("{other:?}"),
    };
    let mut reader = png::Decoder::new(std::io::Cursor::new(shot.png)).read_info().expect("a PNG");
    let mut rgb = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut rgb).expect("PNG frame");
    let at = (((info.height / 2) * info.width + info.width / 2) * 3) as usize;
    [rgb[at], rgb[at + 1], rgb[at + 2]]
}

#[tokio::test]
async fn a_confined_command_draws_on_the_managed_display_only_with_consent() {
    let nats = Nats::start().await;
    let number = free_display();
    let agent = Agent::start_with(&nats, virtual_opts(number, "640x480")).await;
    assert!(agent.caps().commands_confined && agent.caps().desktop, "{:?}\n{}", agent.caps(), agent.log());
    // xsetroot is an ordinary X client: it opens $DISPLAY and paints the root window.
    let reply = exec_reply("exec", &agent, agent.call(Op::Exec(op::sh("xsetroot -solid '#00ff00'"))).await);
    assert_eq!(reply.exit_code, 0, "xsetroot under confinement: {}", text(&reply.stderr));
    assert_eq!(centre_colour(&agent).await, [0, 255, 0], "the command's drawing is on the screen");
    drop(agent);

    // Without consent there is no DISPLAY and no bridge: naming the display by hand fails too.
    let number = free_display();
    let mut opts = virtual_opts(number, "640x480");
    opts.args.retain(|a| a != "--consent-screen-control");
    let agent = Agent::start_with(&nats, opts).await;
    assert!(agent.caps().desktop);
    let script = format!(
        "test -z \"$DISPLAY\" || exit 7; xsetroot -display 127.0.0.1:{number} -solid '#ff0000' || \
         xsetroot -display :{number} -solid '#ff0000'"
    );
    let reply = exec_reply("exec", &agent, agent.call(Op::Exec(op::sh(&script))).await);
    assert_ne!(reply.exit_code, 7, "a confined command without consent was given a DISPLAY");
    assert_ne!(reply.exit_code, 0, "a confined command without consent reached the display");
    assert_ne!(centre_colour(&agent).await, [255, 0, 0]);
}
