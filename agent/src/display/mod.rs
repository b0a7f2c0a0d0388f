//! Which display the desktop ops drive: a managed virtual one (`--virtual-desktop`: the agent
//! starts Xvfb and stops it with itself), or `$DISPLAY` when one answers. Settings come from
//! flags, `TETHER_*` variables or the config file's `[desktop]` table.

pub mod bridge;
#[cfg(target_os = "linux")]
pub mod xvfb;

use std::path::Path;

use clap::Args;
use serde::Deserialize;

use crate::ops::desktop::Desktop;

pub const DEFAULT_VIRTUAL_DISPLAY: &str = ":99";
pub const DEFAULT_VIRTUAL_GEOMETRY: (u32, u32) = (1280, 800);

/// `tether-agent run` desktop flags.
#[derive(Debug, Default, Clone, Args)]
pub struct DesktopArgs {
    /// Consent to screen control: desktop_input and desktop_act may move the pointer and type.
    /// Without it they answer CONSENT_REQUIRED and never touch the screen.
    #[arg(long, env = "TETHER_CONSENT_SCREEN_CONTROL", num_args = 0..=1, default_missing_value = "true")]
    pub consent_screen_control: Option<bool>,
    /// Start a virtual X display (Xvfb) for the desktop ops and the commands the agent runs,
    /// and stop it with the agent.
    #[arg(long, env = "TETHER_VIRTUAL_DESKTOP", num_args = 0..=1, default_missing_value = "true")]
    pub virtual_desktop: Option<bool>,
    /// The virtual display's name [default: :99].
    #[arg(long, env = "TETHER_VIRTUAL_DISPLAY")]
    pub virtual_display: Option<String>,
    /// The virtual display's size, WIDTHxHEIGHT [default: 1280x800].
    #[arg(long, env = "TETHER_VIRTUAL_GEOMETRY", value_parser = parse_geometry)]
    pub virtual_geometry: Option<(u32, u32)>,
    /// Most frames a second the desktop stream sends (1-60) [default: 10].
    #[arg(long, env = "TETHER_DESKTOP_FPS", value_parser = clap::value_parser!(u32).range(1..=60))]
    pub desktop_fps: Option<u32>,
    /// JPEG quality of the desktop stream (1-100) [default: 70].
    #[arg(long, env = "TETHER_DESKTOP_QUALITY", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub desktop_quality: Option<u8>,
    /// Stream lossless PNG frames instead of JPEG.
    #[arg(long, env = "TETHER_DESKTOP_STREAM_PNG", num_args = 0..=1, default_missing_value = "true")]
    pub desktop_stream_png: Option<bool>,
}

/// The config file's `[desktop]` table: the same settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesktopFile {
    consent_screen_control: Option<bool>,
    virtual_desktop: Option<bool>,
    virtual_display: Option<String>,
    virtual_geometry: Option<String>,
    desktop_fps: Option<u32>,
    desktop_quality: Option<u8>,
    desktop_stream_png: Option<bool>,
}

/// The desktop settings, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesktopConfig {
    pub consent_screen_control: bool,
    /// `Some((display number, width, height))` when the agent manages a virtual display.
    pub virtual_display: Option<VirtualSpec>,
    /// How `desktop_ensure`'s stream encodes and paces frames.
    #[cfg(feature = "desktop")]
    pub stream: crate::stream::desktop::StreamOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualSpec {
    pub number: u32,
    pub width: u32,
    pub height: u32,
}

impl VirtualSpec {
    pub fn name(&self) -> String {
        format!(":{}", self.number)
    }
}

impl DesktopConfig {
    /// Flags and environment (`args`) over the file.
    pub fn resolve(args: DesktopArgs, file: DesktopFile) -> anyhow::Result<DesktopConfig> {
        let geometry = match (args.virtual_geometry, file.virtual_geometry) {
            (Some(g), _) => g,
            (None, Some(text)) => parse_geometry(&text).map_err(anyhow::Error::msg)?,
            (None, None) => DEFAULT_VIRTUAL_GEOMETRY,
        };
        let name = args.virtual_display.or(file.virtual_display);
        let virtual_display = match args.virtual_desktop.or(file.virtual_desktop).unwrap_or(false) {
            true => {
                let name = name.as_deref().unwrap_or(DEFAULT_VIRTUAL_DISPLAY);
                let number = parse_display(name).map_err(anyhow::Error::msg)?;
                Some(VirtualSpec { number, width: geometry.0, height: geometry.1 })
            }
            false if name.is_some() => anyhow::bail!("--virtual-display needs --virtual-desktop"),
            false => None,
        };
        let fps = args.desktop_fps.or(file.desktop_fps).unwrap_or(10);
        let quality = args.desktop_quality.or(file.desktop_quality).unwrap_or(70);
        if !(1..=60).contains(&fps) || !(1..=100).contains(&quality) {
            anyhow::bail!("desktop_fps must be 1..60 and desktop_quality 1..100");
        }
        let png = args.desktop_stream_png.or(file.desktop_stream_png).unwrap_or(false);
        #[cfg(not(feature = "desktop"))]
        let _ = png;
        Ok(DesktopConfig {
            consent_screen_control: args
                .consent_screen_control
                .or(file.consent_screen_control)
                .unwrap_or(false),
            virtual_display,
            #[cfg(feature = "desktop")]
            stream: crate::stream::desktop::StreamOptions {
                fps,
                format: match png {
                    true => crate::ops::desktop::encode::Format::Png,
                    false => crate::ops::desktop::encode::Format::Jpeg { quality },
                },
            },
        })
    }
}

/// `1280x800` -> (1280, 800); each edge 16..=8192.
pub fn parse_geometry(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("geometry {text:?} must be WIDTHxHEIGHT, each 16..8192 pixels");
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h) = (w.trim().parse::<u32>().map_err(|_| bad())?, h.trim().parse::<u32>().map_err(|_| bad())?);
    let ok = |v: u32| (16..=8192).contains(&v);
    if ok(w) && ok(h) { Ok((w, h)) } else { Err(bad()) }
}

/// `:99` (or `:99.0`) -> 99: only local displays can be managed.
pub fn parse_display(text: &str) -> Result<u32, String> {
    let number = text.strip_prefix(':').map(|rest| rest.split('.').next().unwrap_or(rest));
    number
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|&n| n < 10_000)
        .ok_or_else(|| format!("virtual display {text:?} must be a local display like :99"))
}

/// The desktop the agent serves, and the virtual display it keeps alive (dropped at the end
/// of `run`, which stops Xvfb).
pub struct DisplaySetup {
    pub desktop: Desktop,
    /// `DISPLAY` for the commands the agent runs, when the agent manages the display.
    pub display_env: Option<String>,
    #[cfg(target_os = "linux")]
    pub xvfb: Option<xvfb::Xvfb>,
}

/// Starts the virtual display when configured, else looks at `$DISPLAY`; then opens the
/// desktop on it. Never fails the agent: a desktop that cannot be had is reported in Hello.
/// Blocking (starting Xvfb waits for it to answer).
pub fn setup(config: &DesktopConfig, state_dir: &Path) -> DisplaySetup {
    let consent = config.consent_screen_control;
    #[cfg(target_os = "linux")]
    if let Some(spec) = &config.virtual_display {
        return match xvfb::Xvfb::start(spec, state_dir) {
            Ok(xvfb) => DisplaySetup {
                desktop: open(Some(spec.name()), true, consent),
                display_env: Some(spec.name()),
                xvfb: Some(xvfb),
            },
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the virtual display did not start");
                DisplaySetup {
                    desktop: Desktop::unavailable(
                        format!("the virtual display did not start: {e:#}"),
                        consent,
                    ),
                    display_env: None,
                    xvfb: None,
                }
            }
        };
    }
    let _ = state_dir;
    let desktop = match std::env::var("DISPLAY") {
        Ok(display) if !display.is_empty() => open(Some(display), false, consent),
        _ if cfg!(target_os = "linux") => Desktop::unavailable(
            "no display: $DISPLAY is not set and --virtual-desktop was not given",
            consent,
        ),
        _ => open(None, false, consent),
    };
    DisplaySetup {
        desktop,
        display_env: None,
        #[cfg(target_os = "linux")]
        xvfb: None,
    }
}

#[cfg(feature = "desktop")]
fn open(display: Option<String>, is_virtual: bool, consent: bool) -> Desktop {
    Desktop::open(display, is_virtual, consent)
}

#[cfg(not(feature = "desktop"))]
fn open(_: Option<String>, _: bool, consent: bool) -> Desktop {
    Desktop::unavailable("this agent was built without the `desktop` feature", consent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_and_display_names_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_geometry("1280x800"), Ok((1280, 800)));
        assert!(parse_geometry("1280").is_err() && parse_geometry("0x0").is_err());
        assert_eq!(parse_display(":99"), Ok(99));
        assert_eq!(parse_display(":7.0"), Ok(7));
        assert!(parse_display("host:1").is_err() && parse_display("99").is_err());
    }

    #[test]
    fn flags_override_the_file_and_a_display_without_virtual_desktop_is_refused() {
        let file = DesktopFile {
            virtual_desktop: Some(true),
            virtual_geometry: Some("800x600".into()),
            ..Default::default()
        };
        let args = DesktopArgs { virtual_display: Some(":42".into()), ..Default::default() };
        let config = DesktopConfig::resolve(args, file).unwrap();
        assert_eq!(config.virtual_display, Some(VirtualSpec { number: 42, width: 800, height: 600 }));
        assert!(!config.consent_screen_control);
        let args = DesktopArgs { virtual_display: Some(":42".into()), ..Default::default() };
        assert!(DesktopConfig::resolve(args, DesktopFile::default()).is_err());
    }
}
