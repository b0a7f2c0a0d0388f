//! The release archive and its installer: `scripts/release.sh` packages the built binaries with a
//! SHA-256 file, `packaging/install.sh` installs them after checking it, refuses an archive whose
//! checksum does not match (installing nothing), and is shellcheck-clean where shellcheck is.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_installer_checks_the_archive_then_installs_it_and_refuses_a_tampered_one() {
    let dir = tempfile::tempdir().unwrap();
    let dist = dir.path().join("dist");
    let bins = tether_tests::bin("tetherctl");
    let made = ok(&Command::new("bash")
        .arg(repo().join("scripts/release.sh"))
        .env("BIN_DIR", bins.parent().unwrap())
        .env("OUT", &dist)
        .output()
        .unwrap());
    let archive = PathBuf::from(made.trim());
    assert!(
        archive.exists()
            && dist.join(format!("{}.sha256", archive.file_name().unwrap().to_str().unwrap())).exists()
    );

    let prefix = dir.path().join("bin");
    let out = ok(&Command::new("sh")
        .arg(repo().join("packaging/install.sh"))
        .arg(&archive)
        .arg("--prefix")
        .arg(&prefix)
        .env("HOME", dir.path())
        .output()
        .unwrap());
    assert!(out.contains("installed"), "{out}");
    let version = ok(&Command::new(prefix.join("tetherctl")).arg("--version").output().unwrap());
    assert!(version.starts_with("tetherctl "), "{version}");
    assert!(prefix.join("tether-agent").exists() && prefix.join("tether-relay").exists());

    // One byte more: the checksum no longer matches, and nothing is installed.
    let tampered = dist.join("tampered").join(archive.file_name().unwrap());
    std::fs::create_dir_all(tampered.parent().unwrap()).unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes.push(0);
    std::fs::write(&tampered, bytes).unwrap();
    let sha = PathBuf::from(format!("{}.sha256", archive.display()));
    let elsewhere = dir.path().join("other-bin");
    let refused = Command::new("sh")
        .arg(repo().join("packaging/install.sh"))
        .arg(&tampered)
        .arg("--sha256")
        .arg(&sha)
        .arg("--prefix")
        .arg(&elsewhere)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("checksum mismatch"), "{said}");
    assert!(!elsewhere.exists(), "a refused archive installs nothing");
}

#[test]
fn the_installer_is_shellcheck_clean() {
    if Command::new("shellcheck").arg("--version").output().is_err() {
        eprintln!("shellcheck is not installed here (scripts/setup.sh installs it): skipped");
        return;
    }
    let out = Command::new("shellcheck")
        .arg("-s")
        .arg("sh")
        .arg(repo().join("packaging/install.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
