//! Where the agent's own secrets and state may lie. Commands and the fs API reach the workspace
//! root, and commands also the `--confine-read` / `--confine-write` paths: a credentials file
//! or the state directory (held epochs, the private temp directory) beneath any of them could
//! be read, rewritten or wiped by the very control plane they guard against. So the agent
//! refuses to start with such a layout, naming the path, instead of trusting the sandbox's
//! per-file exceptions to cover it.

use std::path::{Component, Path, PathBuf};

use anyhow::bail;

use crate::config::Config;

/// Refuses a configuration whose state directory or credential files lie inside the workspace
/// root or a path granted to commands. Paths are compared as given and with symlinks resolved.
pub fn check(config: &Config) -> anyhow::Result<()> {
    let granted = std::iter::once(("the workspace root", &config.workspace_root))
        .chain(config.confine.read.iter().map(|p| ("the --confine-read path", p)))
        .chain(config.confine.write.iter().map(|p| ("the --confine-write path", p)));
    let granted: Vec<(&str, &PathBuf)> = granted.collect();
    let held = std::iter::once(("state directory", &config.state_dir))
        .chain(config.secret_files.iter().map(|p| ("credentials file", p)));
    for (what, path) in held {
        for (name, area) in &granted {
            if inside(path, area) {
                bail!(
                    "the {what} {} lies inside {name} {}, where commands could reach it; \
                     move it elsewhere (or choose another --state-dir)",
                    path.display(),
                    area.display()
                );
            }
        }
    }
    Ok(())
}

/// Whether `path` is `area` or beneath it, lexically or once symlinks are resolved.
fn inside(path: &Path, area: &Path) -> bool {
    absolute_lexical(path).starts_with(absolute_lexical(area)) || resolved(path).starts_with(resolved(area))
}

/// `p` made absolute against the current directory, with `.` and `..` folded.
fn absolute_lexical(p: &Path) -> PathBuf {
    let joined = match std::env::current_dir() {
        Ok(cwd) if p.is_relative() => cwd.join(p),
        _ => p.to_owned(),
    };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `p` with symlinks resolved as far as it exists (a state directory may not exist yet).
fn resolved(p: &Path) -> PathBuf {
    let p = absolute_lexical(p);
    let mut existing = p.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RunArgs};

    fn config(root: &Path, state: &Path, extra: impl FnOnce(&mut RunArgs)) -> Config {
        let mut args = RunArgs {
            workspace_id: Some("ws".into()),
            agent_id: Some("a".into()),
            workspace_root: Some(root.to_owned()),
            state_dir: Some(state.to_owned()),
            ..RunArgs::default()
        };
        extra(&mut args);
        Config::resolve(args, |_| None).unwrap()
    }

    #[test]
    fn state_and_credentials_beneath_any_granted_path_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        check(&config(&root, &outside.join("state"), |_| {})).unwrap();

        let err = check(&config(&root, &root.join(".tether/state"), |_| {})).unwrap_err().to_string();
        assert!(err.contains("state directory") && err.contains(".tether/state"), "{err}");
        let sneaky = root.join("sub/../../root/state");
        assert!(check(&config(&root, &sneaky, |_| {})).is_err(), "`..` does not hide it");

        std::os::unix::fs::symlink(&root, outside.join("link")).unwrap();
        assert!(check(&config(&root, &outside.join("link/state"), |_| {})).is_err(), "nor a symlink");

        let token = outside.join("shared/nats.token");
        std::fs::create_dir_all(token.parent().unwrap()).unwrap();
        std::fs::write(&token, "t").unwrap();
        let cfg = config(&root, &outside.join("state"), |a| {
            a.nats_token_file = Some(token.clone());
            a.confine_read = vec![outside.join("shared")];
        });
        let err = check(&cfg).unwrap_err().to_string();
        assert!(err.contains("credentials file") && err.contains("--confine-read"), "{err}");
        let cfg = config(&root, &outside.join("state"), |a| a.confine_write = vec![outside.clone()]);
        assert!(check(&cfg).unwrap_err().to_string().contains("--confine-write"));
    }
}
