//! Mutual TLS to NATS: against a nats-server that verifies client certificates (and takes no
//! other credentials), the agent serves with `--nats-tls-cert/--nats-tls-key` (its credential
//! probe, presenting none, is refused, so the agent does not count the server as open), and
//! `tetherctl` with the same flags drives it while `tetherctl` without a certificate is refused.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tether_tests::{Nats, Proc, bin};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=tether-test-ca",
        ],
    );
    // X.509 v3 (with extensions) both: rustls refuses v1 certificates.
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        .expect("server.ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("client.ext");
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                ext,
            ],
        );
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("client.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn tetherctl(nats: &Nats, certs: &Path, with_cert: bool) -> Output {
    let mut cmd = Command::new(bin("tetherctl"));
    cmd.env_remove("TETHER_NATS_TOKEN")
        .args([
            "--nats-url",
            &nats.url,
            "--workspace-id",
            "w",
            "--agent-id",
            "a",
            "--timeout",
            "3s",
            "--retries",
            "0",
        ])
        .arg("--nats-tls-ca")
        .arg(certs.join("ca.pem"));
    if with_cert {
        cmd.arg("--nats-tls-cert")
            .arg(certs.join("client.pem"))
            .arg("--nats-tls-key")
            .arg(certs.join("client.key"));
    }
    cmd.arg("ping").stdin(Stdio::null()).output().expect("tetherctl")
}

#[tokio::test]
async fn a_client_certificate_is_the_credential_for_agent_and_tetherctl() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    make_certs(certs);
    let conf = certs.join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}\n",
            certs.join("server.pem"),
            certs.join("server.key"),
            certs.join("ca.pem")
        ),
    )
    .unwrap();
    let nats = Nats::start_including(&conf).await;

    let state = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let log = certs.join("agent.log");
    let _agent = Proc::spawn(
        "tether-agent",
        Command::new(bin("tether-agent"))
            .args(["run", "--nats-url", &nats.url, "--workspace-id", "w", "--agent-id", "a"])
            .arg("--workspace-root")
            .arg(root.path())
            .arg("--state-dir")
            .arg(state.path())
            .arg("--nats-tls-ca")
            .arg(certs.join("ca.pem"))
            .arg("--nats-tls-cert")
            .arg(certs.join("client.pem"))
            .arg("--nats-tls-key")
            .arg(certs.join("client.key"))
            .env_remove("TETHER_NATS_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();

    let mut pinged = tetherctl(&nats, certs, true);
    for _ in 0..100 {
        if pinged.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        pinged = tetherctl(&nats, certs, true);
    }
    assert!(
        pinged.status.success(),
        "tetherctl with a client certificate: {}\nagent log:\n{}",
        String::from_utf8_lossy(&pinged.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log_text.contains("UNPROTECTED"), "a server that verifies certificates is not open: {log_text}");

    let refused = tetherctl(&nats, certs, false);
    assert!(!refused.status.success(), "without a client certificate the server refuses tetherctl");
}
