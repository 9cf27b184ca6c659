//! Byte sizes as people write them in configs: `"32MiB"`, `"512KiB"`, `"64MB"` or a plain
//! integer number of bytes.
//!
//! Accepted units: `B`, `KiB`, `MiB`, `GiB` (1024-based) and `k`/`kB`, `M`/`MB`, `G`/`GB`
//! (1000-based). Only integers: no fractions, signs or whitespace, so every value has one
//! exact byte count. `K`/`KB` are refused because they mean 1000 to some readers and
//! 1024 to others. Overflow is an error, never a wrap. Display/serialization uses the exact
//! unit giving the smallest number (`"32MiB"`, `"64MB"`, `"12345B"`), which parses back.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", KIB),
    ("MiB", MIB),
    ("GiB", GIB),
    ("k", 1000),
    ("kB", 1000),
    ("M", 1_000_000),
    ("MB", 1_000_000),
    ("G", 1_000_000_000),
    ("GB", 1_000_000_000),
];

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    pub const fn kib(n: u64) -> Self {
        Self(n.saturating_mul(KIB))
    }

    pub const fn mib(n: u64) -> Self {
        Self(n.saturating_mul(MIB))
    }

    pub const fn gib(n: u64) -> Self {
        Self(n.saturating_mul(GIB))
    }
}

/// Why a byte-size string was refused; always quotes the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    #[error(
        "byte size `{text}` is not a whole number followed by a unit \
         (B, KiB, MiB, GiB, k, M, G), e.g. \"32MiB\""
    )]
    Malformed { text: String },
    #[error(
        "byte size `{text}`: unknown unit `{unit}`; use B, KiB, MiB, GiB (1024-based) \
         or k, M, G (1000-based)"
    )]
    UnknownUnit { text: String, unit: String },
    #[error("byte size `{text}` does not fit in 64 bits")]
    Overflow { text: String },
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        if digits.is_empty() {
            return Err(ByteSizeError::Malformed { text: text.into() });
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| ByteSizeError::Overflow { text: text.into() })?;
        let mult = if unit.is_empty() {
            1
        } else {
            match UNITS.iter().find(|(name, _)| *name == unit) {
                Some((_, mult)) => *mult,
                None if unit.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                    return Err(ByteSizeError::UnknownUnit {
                        text: text.into(),
                        unit: unit.into(),
                    });
                }
                None => return Err(ByteSizeError::Malformed { text: text.into() }),
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| ByteSizeError::Overflow { text: text.into() })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DISPLAY: &[(&str, u64)] = &[
            ("GiB", GIB),
            ("MiB", MIB),
            ("KiB", KIB),
            ("GB", 1_000_000_000),
            ("MB", 1_000_000),
            ("kB", 1000),
        ];
        let n = self.0;
        // The exact unit giving the smallest number: 32MiB, 64MB rather than 62500KiB.
        let best = DISPLAY
            .iter()
            .filter(|(_, m)| n != 0 && n.is_multiple_of(*m))
            .min_by_key(|(_, m)| n / m);
        match best {
            Some((unit, m)) => write!(f, "{}{unit}", n / m),
            None => write!(f, "{n}B"),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;

        impl Visitor<'_> for V {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as \"32MiB\" or a whole number of bytes")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format_args!("byte size {v} is negative")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(format_args!(
                    "byte size {v} is not a whole number of bytes; write e.g. \"1536KiB\""
                )))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }

        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<u64, ByteSizeError> {
        s.parse::<ByteSize>().map(ByteSize::bytes)
    }

    #[test]
    fn parses_units() {
        assert_eq!(p("32MiB"), Ok(32 * MIB));
        assert_eq!(p("8MiB"), Ok(8 * MIB));
        assert_eq!(p("1GiB"), Ok(GIB));
        assert_eq!(p("512KiB"), Ok(512 * KIB));
        assert_eq!(p("64MB"), Ok(64_000_000));
        assert_eq!(p("64M"), Ok(64_000_000));
        assert_eq!(p("3k"), Ok(3000));
        assert_eq!(p("3kB"), Ok(3000));
        assert_eq!(p("2G"), Ok(2_000_000_000));
        assert_eq!(p("7B"), Ok(7));
        assert_eq!(p("4096"), Ok(4096));
        assert_eq!(p("0"), Ok(0));
    }

    #[test]
    fn rejects_garbage_naming_the_text() {
        for bad in [
            "", "MiB", "-1MiB", "+1MiB", "1.5MiB", " 1MiB", "1 MiB", "1MiB ", "1mib", "1K", "1KB",
            "1Mi", "1XB", "0x10", "1e6",
        ] {
            let err = p(bad).unwrap_err();
            assert!(
                err.to_string().contains(&format!("`{bad}`")),
                "{bad}: {err}"
            );
        }
        assert!(matches!(p("1K"), Err(ByteSizeError::UnknownUnit { .. })));
    }

    #[test]
    fn rejects_overflow() {
        assert!(matches!(
            p("18446744073709551616"),
            Err(ByteSizeError::Overflow { .. })
        ));
        assert!(matches!(
            p("17179869184GiB"),
            Err(ByteSizeError::Overflow { .. })
        ));
        assert_eq!(p("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn display_round_trips() {
        for (n, s) in [
            (0, "0B"),
            (1000, "1kB"),
            (32 * MIB, "32MiB"),
            (GIB, "1GiB"),
            (64_000_000, "64MB"),
            (1536 * KIB, "1536KiB"),
            (12_345, "12345B"),
            (u64::MAX, "18446744073709551615B"),
        ] {
            let shown = ByteSize(n).to_string();
            assert_eq!(shown, s);
            assert_eq!(p(&shown), Ok(n), "{s}");
        }
        assert_eq!(ByteSize(2000 * 1000).to_string(), "2MB");
    }

    #[test]
    fn serde_forms() {
        let v: Vec<ByteSize> = serde_json::from_str(r#"["8MiB", 4096, "1024"]"#).unwrap();
        assert_eq!(v, [ByteSize::mib(8), ByteSize(4096), ByteSize(1024)]);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"["8MiB","4KiB","1KiB"]"#
        );
        for bad in [r#""12XB""#, "-1", "1.5", "true", "null"] {
            assert!(serde_json::from_str::<ByteSize>(bad).is_err(), "{bad}");
        }
        let err = serde_json::from_str::<ByteSize>(r#""12XB""#).unwrap_err();
        assert!(err.to_string().contains("`12XB`"), "{err}");
    }
}
