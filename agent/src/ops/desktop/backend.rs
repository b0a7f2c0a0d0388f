//! Which [`Screen`](super::screen::Screen) implementation the desktop opens. On Linux it is
//! x11rb (MIT-SHM capture, XTEST input) unless `TETHER_DESKTOP_BACKEND=portable` asks for
//! xcap/enigo, which Linux builds carry only with the `portable-desktop` cargo feature: on X11
//! they are slower and lose typed characters (BENCHMARKS.md), so they are there to test and
//! measure the path macOS and Windows take, not to serve. Off Linux xcap/enigo is the only
//! backend.

use crate::error::OpResult;
use crate::ops::desktop::thread::ScreenThread;

/// The variable that picks the backend (`x11` or `portable`; unset = the platform's default).
pub const ENV: &str = "TETHER_DESKTOP_BACKEND";

/// A backend this build can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    #[cfg(target_os = "linux")]
    X11,
    #[cfg(any(not(target_os = "linux"), feature = "portable-desktop"))]
    Portable,
}

/// The backend `value` (of [`ENV`]) names, or why this build cannot honour it. Case and
/// surrounding blanks are ignored; unset or empty means the platform's default.
pub fn choose(value: Option<&str>) -> Result<Choice, String> {
    let name = value.map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
    match name.as_deref() {
        #[cfg(target_os = "linux")]
        None | Some("x11") => Ok(Choice::X11),
        #[cfg(not(target_os = "linux"))]
        None => Ok(Choice::Portable),
        #[cfg(not(target_os = "linux"))]
        Some("x11") => Err(format!("{ENV}=x11: the x11 backend exists on Linux only")),
        #[cfg(any(not(target_os = "linux"), feature = "portable-desktop"))]
        Some("portable") => Ok(Choice::Portable),
        #[cfg(not(any(not(target_os = "linux"), feature = "portable-desktop")))]
        Some("portable") => {
            Err(format!("{ENV}=portable: this agent was built without the `portable-desktop` feature"))
        }
        Some(other) => Err(format!("{ENV}={other:?} is not a desktop backend (x11 or portable)")),
    }
}

/// The backend the agent's environment asks for.
pub fn from_env() -> Result<Choice, String> {
    choose(std::env::var(ENV).ok().as_deref())
}

/// Opens `choice` on `display` (`None` = the platform default) on the desktop thread.
pub fn open(choice: Choice, display: Option<String>) -> OpResult<ScreenThread> {
    match choice {
        #[cfg(target_os = "linux")]
        Choice::X11 => ScreenThread::spawn(move || super::x11::X11Screen::open(display.as_deref())),
        #[cfg(any(not(target_os = "linux"), feature = "portable-desktop"))]
        Choice::Portable => {
            ScreenThread::spawn(move || super::portable::PortableScreen::open(display.as_deref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_blank_is_the_platform_default() {
        let default = if cfg!(target_os = "linux") { "X11" } else { "Portable" };
        for value in [None, Some(""), Some("  ")] {
            assert_eq!(format!("{:?}", choose(value).expect("the default opens")), default);
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_choices() {
        let err = choose(Some("wayland")).expect_err("no such backend");
        assert!(err.contains("x11 or portable"), "{err}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn x11_is_named_in_any_case() {
        assert_eq!(choose(Some(" X11 ")), Ok(Choice::X11));
    }

    #[cfg(all(target_os = "linux", feature = "portable-desktop"))]
    #[test]
    fn portable_is_there_with_the_feature() {
        assert_eq!(choose(Some("Portable")), Ok(Choice::Portable));
    }

    #[cfg(all(target_os = "linux", not(feature = "portable-desktop")))]
    #[test]
    fn portable_without_the_feature_says_so() {
        let err = choose(Some("portable")).expect_err("not built");
        assert!(err.contains("portable-desktop"), "{err}");
    }
}
