//! Key names and chords ("ctrl+c", "shift+Tab", "ctrl+alt+t", "F5", "PageDown") to X keysyms,
//! and characters to keysyms. Pure functions: every backend presses keysyms, so this is the
//! one place that knows what a name means.

use crate::error::{OpError, OpResult};

pub const SHIFT: u32 = 0xffe1;
pub const CONTROL: u32 = 0xffe3;
pub const ALT: u32 = 0xffe9;
pub const SUPER: u32 = 0xffeb;

/// A parsed chord: modifiers held in order, then the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chord {
    pub modifiers: Vec<u32>,
    pub key: u32,
}

impl Chord {
    /// Every keysym in press order (release goes in reverse).
    pub fn keysyms(&self) -> impl DoubleEndedIterator<Item = u32> + '_ {
        self.modifiers.iter().copied().chain(std::iter::once(self.key))
    }
}

/// Parses `ctrl+shift+t`-style chords. Names are case-insensitive; a single character names
/// its own key; `+` alone (or as the last part, `ctrl++`) is the plus key.
pub fn parse_chord(chord: &str) -> OpResult<Chord> {
    let bad = |why: &str| OpError::protocol(format!("bad key chord {chord:?}: {why}")).with("key", chord);
    if chord.is_empty() {
        return Err(bad("empty"));
    }
    let mut parts: Vec<&str> = chord.split('+').collect();
    // "ctrl++" splits as ["ctrl", "", ""]: the key is '+'.
    if chord.ends_with('+') {
        parts.truncate(parts.len().saturating_sub(2));
        parts.push("+");
    }
    let Some((key, modifiers)) = parts.split_last() else { return Err(bad("empty")) };
    let modifiers = modifiers
        .iter()
        .map(|m| {
            modifier(m).ok_or_else(|| bad(&format!("{m:?} is not a modifier (ctrl, shift, alt, super)")))
        })
        .collect::<OpResult<Vec<u32>>>()?;
    let key = named_key(key).ok_or_else(|| bad(&format!("unknown key {key:?}")))?;
    Ok(Chord { modifiers, key })
}

fn modifier(name: &str) -> Option<u32> {
    Some(match name.to_ascii_lowercase().as_str() {
        "ctrl" | "control" | "ctl" => CONTROL,
        "shift" => SHIFT,
        "alt" | "option" | "opt" => ALT,
        "super" | "meta" | "cmd" | "command" | "win" | "windows" | "logo" => SUPER,
        _ => return None,
    })
}

/// The keysym of one key name, or of a single character.
pub fn named_key(name: &str) -> Option<u32> {
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return Some(char_keysym(c));
    }
    let lower = name.to_ascii_lowercase();
    if let Some(n) = lower.strip_prefix('f').and_then(|n| n.parse::<u32>().ok()) {
        return (1..=24).contains(&n).then(|| 0xffbe + n - 1);
    }
    Some(match lower.as_str() {
        "enter" | "return" | "kp_enter" => 0xff0d,
        "tab" => 0xff09,
        "escape" | "esc" => 0xff1b,
        "backspace" | "back_space" => 0xff08,
        "delete" | "del" => 0xffff,
        "insert" | "ins" => 0xff63,
        "home" => 0xff50,
        "end" => 0xff57,
        "pageup" | "page_up" | "pgup" | "prior" => 0xff55,
        "pagedown" | "page_down" | "pgdn" | "next" => 0xff56,
        "left" | "arrowleft" => 0xff51,
        "up" | "arrowup" => 0xff52,
        "right" | "arrowright" => 0xff53,
        "down" | "arrowdown" => 0xff54,
        "space" => 0x20,
        "plus" => 0x2b,
        "minus" => 0x2d,
        "menu" => 0xff67,
        "print" | "printscreen" => 0xff61,
        "capslock" | "caps_lock" => 0xffe5,
        "shift" | "shift_l" => SHIFT,
        "ctrl" | "control" | "control_l" => CONTROL,
        "alt" | "alt_l" => ALT,
        "super" | "super_l" | "meta" | "cmd" | "win" => SUPER,
        _ => return None,
    })
}

/// The keysym of a character: Latin-1 keysyms equal their code point; the rest of Unicode is
/// `0x0100_0000 + code point`; control characters typed as text map to their keys.
pub fn char_keysym(c: char) -> u32 {
    match c {
        '\n' | '\r' => 0xff0d,
        '\t' => 0xff09,
        '\u{8}' => 0xff08,
        '\u{1b}' => 0xff1b,
        c if (' '..='~').contains(&c) || ('\u{a0}'..='\u{ff}').contains(&c) => c as u32,
        c => 0x0100_0000 + c as u32,
    }
}

/// The character a keysym types, if it types one (the inverse of [`char_keysym`] for text).
pub fn keysym_char(keysym: u32) -> Option<char> {
    match keysym {
        0xff0d => Some('\n'),
        0xff09 => Some('\t'),
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        k if k & 0xff00_0000 == 0x0100_0000 => char::from_u32(k & 0x00ff_ffff),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chords_parse_to_modifiers_and_a_key() {
        assert_eq!(parse_chord("ctrl+c").unwrap(), Chord { modifiers: vec![CONTROL], key: 'c' as u32 });
        assert_eq!(parse_chord("shift+Tab").unwrap(), Chord { modifiers: vec![SHIFT], key: 0xff09 });
        assert_eq!(parse_chord("Ctrl+Alt+T").unwrap().modifiers, vec![CONTROL, ALT]);
        assert_eq!(parse_chord("F1").unwrap().key, 0xffbe);
        assert_eq!(parse_chord("f12").unwrap().key, 0xffc9);
        assert_eq!(parse_chord("PageDown").unwrap().key, 0xff56);
        assert_eq!(parse_chord("super").unwrap().key, SUPER);
        assert_eq!(parse_chord("ctrl++").unwrap(), Chord { modifiers: vec![CONTROL], key: '+' as u32 });
        assert_eq!(parse_chord("+").unwrap().key, '+' as u32);
        assert_eq!(parse_chord("é").unwrap().key, 0xe9);
        for bad in ["", "hyper+x", "ctrl+nosuchkey", "F25"] {
            assert!(parse_chord(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn characters_round_trip_through_keysyms() {
        for c in ['a', 'Z', '~', ' ', 'é', 'ß', '→', '中', '\n'] {
            assert_eq!(keysym_char(char_keysym(c)), Some(c), "{c:?}");
        }
        assert_eq!(char_keysym('→'), 0x0100_2192);
    }
}
