//! Byte sizes as an operator writes them in a flag, the environment or the config file:
//! `4294967296`, `512M`, `4G`, `4GiB` (K, M, G, T are powers of 1024; an optional `iB` or `B`
//! follows). A config file may also give a plain integer.

/// Parses a size; see the module doc.
pub fn parse(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 512M, 4G)"))?;
    let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// Lets the config file give an optional size as a string (`"4G"`) or an integer.
pub mod serde_opt {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Bytes(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Written>::deserialize(d)? {
            None => Ok(None),
            Some(Written::Bytes(bytes)) => Ok(Some(bytes)),
            Some(Written::Text(text)) => super::parse(&text).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units_and_refuse_the_rest() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("512M"), Ok(512 << 20));
        assert_eq!(parse("4G"), Ok(4 << 30));
        assert_eq!(parse("4GiB"), Ok(4 << 30));
        assert_eq!(parse(" 2 kB"), Ok(2048));
        for bad in ["", "G", "4X", "-1", "1.5G", "99999999999T"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
