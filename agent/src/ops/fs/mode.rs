//! The modes a file op may give what it creates (README "Security model"): permission bits
//! only. A request asking for setuid, setgid, sticky or file-type bits is refused, naming the
//! field, and modes carried over from an existing file (a rewrite keeps the old mode, a move
//! across filesystems copies it) are masked to the permission bits: the agent usually runs as
//! root, and a setuid file it creates or copies would be a root-owned setuid program planted
//! by whoever sent the request.

use nix::sys::stat::Mode;

use crate::error::{OpError, OpResult};

/// The only bits a file op sets: rwx for user, group and others.
pub const PERMISSION_BITS: u32 = 0o777;

/// The mode asked for in `field` (`op.mode`), or None for 0 (the op's default).
pub fn requested(field: &str, mode: u32) -> OpResult<Option<Mode>> {
    if mode & !PERMISSION_BITS != 0 {
        return Err(OpError::protocol(format!(
            "{field} {mode:#o} carries bits beyond the permission bits {PERMISSION_BITS:#o} \
             (setuid, setgid, sticky or a file type): only permission bits may be asked for"
        ))
        .with("field", field)
        .with("mode", format!("{mode:#o}")));
    }
    Ok((mode != 0).then(|| Mode::from_bits_truncate(mode)))
}

/// The permission bits of an existing file's `st_mode`, to give a file that replaces or copies it.
pub fn carried_over(st_mode: u32) -> Mode {
    Mode::from_bits_truncate(st_mode & PERMISSION_BITS)
}

#[cfg(test)]
mod tests {
    use tether_proto::pb::ErrorCode;

    use super::*;

    #[test]
    fn only_permission_bits_may_be_asked_for() {
        assert_eq!(requested("fs_write.mode", 0).unwrap(), None);
        assert_eq!(requested("fs_write.mode", 0o640).unwrap(), Some(Mode::from_bits_truncate(0o640)));
        for bad in [0o4755, 0o2755, 0o1777, 0o100644, 0o40755, 0o170000] {
            let err = requested("fs_mkdir.mode", bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::Protocol, "{bad:o}");
            assert_eq!(err.detail["field"], "fs_mkdir.mode");
            assert!(err.message.contains("fs_mkdir.mode"), "{err:?}");
        }
        assert_eq!(carried_over(0o104755).bits(), 0o755);
    }
}
