//! Enrollment end to end on loopback: `tetherctl credentials control-plane` and `tetherctl
//! enrollment create` write the nats-server authorization file the server runs with, `tether-agent
//! enroll` turns the printed line into a config in a fresh HOME, `tether-agent run --config` serves
//! with the enrolled NKey, `tetherctl --nats-nkey` drives it as the control plane; agent A's
//! identity can neither read nor answer nor impersonate agent B (the server itself refuses);
//! damaged bundles and a too-open credentials file are refused with a message saying why; SIGTERM
//! still says going_offline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use prost::Message;
use tether_tests::relay::{PRODUCER_SECRET, Relay, VIEWER_SECRET};
use tether_tests::{Nats, Proc, bin, pb};

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tetherctl() -> Command {
    let mut cmd = Command::new(bin("tetherctl"));
    for var in ["TETHER_NATS_TOKEN", "TETHER_NATS_CREDS", "TETHER_NATS_USER", "TETHER_NATS_PASSWORD"] {
        cmd.env_remove(var);
    }
    cmd
}

/// The bundle `tetherctl enrollment create` printed for agent `id` of workspace `w` (with the
/// relay's URL and a producer token signed with its secret).
fn create(nats: &Nats, relay: &Relay, auth: &Path, id: &str) -> String {
    let out = ok(&run(tetherctl()
        .args(["enrollment", "create", "--workspace-id", "w", "--agent-id", id, "--nats-url", &nats.url])
        .args(["--relay-url", &relay.stream_url()])
        .env("TETHER_RELAY_PRODUCER_SECRET", PRODUCER_SECRET)
        .arg("--server-config")
        .arg(auth)));
    let line = out.trim();
    line.strip_prefix("tether-agent enroll ").unwrap_or_else(|| panic!("{line}")).to_owned()
}

fn enroll(home: &Path, bundle: &str) -> Output {
    run(Command::new(bin("tether-agent"))
        .args(["enroll", bundle])
        .env("HOME", home)
        .env("TETHER_CONFIG_DIR", home.join("config")))
}

/// A NATS client of the identity whose seed is in `seed_file`, and the server errors it is told.
async fn connect_as(
    nats: &Nats,
    seed_file: &Path,
) -> (async_nats::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let seed = std::fs::read_to_string(seed_file).expect("seed").trim().to_owned();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_nkey(seed)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(&nats.url)
        .await
        .expect("connect with the enrolled identity");
    (client, rx)
}

async fn refused(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>, subject: &str) {
    let error =
        tokio::time::timeout(Duration::from_secs(10), errors.recv()).await.expect("the server's refusal");
    let error = error.expect("error");
    assert!(error.to_lowercase().contains("permissions violation") && error.contains(subject), "{error}");
}

#[tokio::test]
async fn an_enrolled_agent_serves_with_least_privilege_and_bad_bundles_or_open_credentials_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.conf");
    let control_seed = dir.path().join("control.nk");
    ok(&run(tetherctl()
        .args(["credentials", "control-plane", "--workspace-id", "w", "--server-config"])
        .arg(&auth)
        .arg("-o")
        .arg(&control_seed)));
    let nats = Nats::start_including(&auth).await;
    let relay = Relay::start(&[]).await;
    let bundle_a = create(&nats, &relay, &auth, "a");
    let bundle_b = create(&nats, &relay, &auth, "b");
    nats.reload();

    // Damaged bundles are refused, each with its reason, and write nothing.
    let home = tempfile::tempdir().unwrap();
    let truncated = enroll(home.path(), &bundle_a[..bundle_a.len() - 40]);
    assert!(String::from_utf8_lossy(&truncated.stderr).contains("truncated"), "{truncated:?}");
    let at = bundle_a.len() / 2;
    let swapped = if &bundle_a[at..=at] == "A" { "B" } else { "A" };
    let altered = enroll(home.path(), &format!("{}{swapped}{}", &bundle_a[..at], &bundle_a[at + 1..]));
    assert!(String::from_utf8_lossy(&altered.stderr).contains("altered"), "{altered:?}");
    assert!(!home.path().join("config").exists(), "a refused bundle wrote nothing");

    // The reload is asynchronous: enrolling retries until the server knows the new identity.
    let mut out = enroll(home.path(), &bundle_a);
    for _ in 0..50 {
        if out.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        out = enroll(home.path(), &bundle_a);
    }
    let said = ok(&out);
    let config: PathBuf = home.path().join("config/w-a/agent.toml");
    assert!(said.contains(&config.display().to_string()), "{said}");
    let seed_a = home.path().join("config/w-a/nats.nk");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&seed_a).unwrap().permissions().mode() & 0o777, 0o600);
    let server_file = std::fs::read_to_string(&auth).unwrap();
    for seed in [&seed_a, &control_seed] {
        let seed = std::fs::read_to_string(seed).unwrap();
        assert!(seed.starts_with("SU") && !server_file.contains(seed.trim()), "no seed in the server's file");
    }
    assert_eq!(
        std::fs::metadata(home.path().join("config/w-a")).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // The agent runs as its service would: only the config file on its command line.
    let log = dir.path().join("agent.log");
    let mut agent = Proc::spawn(
        "tether-agent",
        Command::new(bin("tether-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("HOME", home.path())
            .env("TETHER_LOG_FORMAT", "json")
            .env("TETHER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    let (control, _) = connect_as(&nats, &control_seed).await;
    let mut events = control.subscribe("agent.w.a.events").await.unwrap();
    let ctl = |args: &[&str]| {
        let mut cmd = tetherctl();
        cmd.args(["--nats-url", &nats.url, "--workspace-id", "w", "--agent-id", "a", "--nats-nkey"])
            .arg(&control_seed)
            .args(["--timeout", "5s"])
            .args(args);
        run(&mut cmd)
    };
    let mut pinged = ctl(&["ping"]);
    for _ in 0..100 {
        if pinged.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        pinged = ctl(&["ping"]);
    }
    ok(&pinged);
    let out = ok(&ctl(&["exec", "--", "sh", "-c", "echo enrolled-and-serving; env"]));
    assert!(out.contains("enrolled-and-serving"), "{out}");
    let seed = std::fs::read_to_string(home.path().join("config/w-a/nats.nk")).unwrap();
    let token = std::fs::read_to_string(home.path().join("config/w-a/relay.token")).unwrap();
    assert!(
        !out.contains(seed.trim()) && !out.contains(token.trim()) && !out.contains("nats.nk"),
        "a command's environment names no credential: {out}"
    );

    // A long-running command streams its output to the control plane under least privilege.
    let out = ok(&ctl(&["run", "--", "sh", "-c", "echo streamed-$((6*7))"]));
    assert!(out.contains("streamed-42"), "{out}");

    // A terminal through the relay, with the producer token that came in the bundle.
    let mut shell = tetherctl();
    shell
        .args(["--nats-url", &nats.url, "--workspace-id", "w", "--agent-id", "a", "--nats-nkey"])
        .arg(&control_seed)
        .args(["shell", "--", "sh", "-c", "echo term-$((6*7))"])
        .env("TETHER_RELAY_URL", relay.stream_url())
        .env("TETHER_RELAY_VIEWER_SECRET", VIEWER_SECRET);
    let out = run(&mut shell);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("term-42"),
        "{out:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // `tether-agent status` reads what the running agent keeps in its state directory.
    // As an operator would ask: by the config file (the state directory is the default one).
    let status = || {
        ok(&run(Command::new(bin("tether-agent"))
            .args(["status", "--config"])
            .arg(&config)
            .env("HOME", home.path())))
    };
    let shown = status();
    assert!(
        shown.contains("w/a") && shown.contains("running    yes") && shown.contains("(connected"),
        "{shown}"
    );
    assert!(shown.contains("commands   confined") || shown.contains("NOT confined"), "{shown}");

    // Agent A's identity cannot read B's requests, answer or impersonate B: the server refuses.
    let (as_a, mut errors) = connect_as(&nats, &seed_a).await;
    let _sub = as_a.subscribe("agent.w.b.rpc").await.unwrap();
    refused(&mut errors, "agent.w.b.rpc").await;
    as_a.publish("agent.w.b.hello", "forged".into()).await.unwrap();
    refused(&mut errors, "agent.w.b.hello").await;
    as_a.publish("agent.w2.a.rpc", "elsewhere".into()).await.unwrap();
    refused(&mut errors, "agent.w2.a.rpc").await;
    drop(bundle_b);

    // A credentials file others can read is refused, with the command that fixes it.
    let home2 = tempfile::tempdir().unwrap();
    std::fs::copy(&config, home2.path().join("agent.toml")).unwrap();
    std::fs::set_permissions(&seed_a, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = run(Command::new(bin("tether-agent"))
        .args(["run", "--config"])
        .arg(home2.path().join("agent.toml"))
        .arg("--state-dir")
        .arg(home2.path()));
    let err = String::from_utf8_lossy(&open.stderr);
    assert!(!open.status.success() && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&seed_a, std::fs::Permissions::from_mode(0o600)).unwrap();

    // SIGTERM: the running agent says going_offline before it exits.
    agent.signal(Signal::SIGTERM);
    let offline = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(msg) = events.next().await {
            let event = pb::AgentEvent::decode(msg.payload).expect("event");
            if matches!(event.event, Some(pb::agent_event::Event::GoingOffline(_))) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(offline, Ok(true), "going_offline\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    agent.wait_exit(Duration::from_secs(15)).unwrap();
    let shown = status();
    assert!(shown.contains("running    no"), "{shown}");
    let logs = std::fs::read_to_string(&log).unwrap();
    let seed = std::fs::read_to_string(&seed_a).unwrap();
    let relay_token = std::fs::read_to_string(home.path().join("config/w-a/relay.token")).unwrap();
    for (what, text) in [("agent", &logs), ("relay", &relay.log_text())] {
        for secret in [seed.trim(), relay_token.trim(), PRODUCER_SECRET, VIEWER_SECRET] {
            assert!(!text.contains(secret), "a secret appears in the {what} log");
        }
    }
    for line in logs.lines() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok_and(|v| v["level"].is_string()), "--log-format json: one object a line: {line}");
    }
}

#[test]
fn the_rendered_service_runs_the_enrolled_config_and_restarts_always() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "workspace_id = \"w\"\n").unwrap();
    let out = ok(&run(Command::new(bin("tether-agent"))
        .args(["service", "install", "--print", "--name", "w-a", "--config"])
        .arg(&config)
        .env("HOME", dir.path())));
    let (path, unit) = out.split_once('\n').expect("a path line, then the unit");
    assert!(path.ends_with("/systemd/user/tether-agent-w-a.service"), "{path}");
    let exec =
        format!("ExecStart=\"{}\" run --config \"{}\"", bin("tether-agent").display(), config.display());
    assert!(unit.contains(&exec), "{unit}");
    assert!(unit.contains("Restart=always") && unit.contains("KillMode=mixed"), "{unit}");
    assert!(!dir.path().join(".config/systemd").exists(), "--print writes nothing");
    // Where systemd is installed, it checks the unit too.
    if Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let file = dir.path().join("tether-agent-w-a.service");
        std::fs::write(&file, unit).unwrap();
        let verify = run(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&file));
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(!said.contains("tether-agent-w-a.service:"), "systemd-analyze: {said}");
    }
}

#[test]
fn the_packaged_nats_example_is_a_valid_server_config() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/nats/nats-server.conf");
    let out = run(Command::new("nats-server").arg("-c").arg(&conf).arg("-t"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let auth = std::fs::read_to_string(conf.with_file_name("tether-auth.conf")).unwrap();
    assert_eq!(auth.matches("# tether: agent acme/").count(), 2, "{auth}");
    assert_eq!(auth.matches("# tether: control-plane acme").count(), 1, "{auth}");
}
