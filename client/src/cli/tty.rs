//! The local terminal while `tetherctl shell` runs: raw mode (every key goes to the remote
//! shell, Ctrl-C included) restored by a guard on every way out (return, error, panic), and the
//! window size for the remote PTY.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg, Termios};

/// Raw mode for stdin while alive; the previous settings come back on drop.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    /// Switches stdin to raw mode if it is a terminal (a pipe is left alone).
    pub fn enter() -> nix::Result<RawMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(RawMode { saved: None });
        }
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw)?;
        Ok(RawMode { saved: Some(saved) })
    }

    /// Whether a line on stderr needs an explicit carriage return.
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, saved);
        }
    }
}

nix::ioctl_read_bad!(get_window_size, libc::TIOCGWINSZ, libc::winsize);

/// (cols, rows) of the terminal on stdout (or stdin), if there is one.
pub fn window_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer we pass, which is valid.
        if unsafe { get_window_size(fd, &mut size) }.is_ok() && size.ws_col > 0 && size.ws_row > 0 {
            return Some((size.ws_col, size.ws_row));
        }
    }
    None
}
