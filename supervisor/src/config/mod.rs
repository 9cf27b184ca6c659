//! The three configuration documents (DESIGN.md §1): `device.json` (provisioning),
//! `manifest.json` (what an agent asks for) and the policy (what the fleet grants).
//!
//! All three are untrusted or semi-trusted input, so every loader reads at most a fixed
//! number of bytes before parsing ([`read_capped`]), every struct rejects unknown keys (a
//! typo such as `"memroy"` must not silently fall back to a default), duplicate keys in maps
//! are refused (last-one-wins would let two readers disagree about a grant), and semantic
//! checks run right after parsing, so a [`ConfigError`] always names the file and the field.
//! Intersecting manifests with policies is the job of `crate::admission`, not of this module.

pub mod device;
mod diagnose;
pub mod layer;
pub mod manifest;
pub mod master;
pub mod policy;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

pub use device::DeviceConfig;
pub(crate) use diagnose::parse_unique as diagnose_parse;
pub use manifest::{
    Class, Destination, Endpoint, Health, Manifest, Mode, Proto, Requests, RestartPolicy,
    RestartSpec, SyscallProfile,
};
pub use policy::{
    BatteryAction, BatteryRule, Capability, Channel, DevicePolicy, Energy, Event, Grant, Policy,
    Signer, SignerTrust, Trigger, ViolationAction, ViolationRule,
};
pub use units::ByteSize;

/// Failure to load one configuration document. Every variant carries the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "{}: larger than the {limit}-byte limit for this kind of file; refusing to parse it",
        path.display()
    )]
    TooLarge { path: PathBuf, limit: u64 },
    /// Syntax or type error; serde_json's message carries the line and column.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// Parsed, but a value is out of range or inconsistent: the first problem, and the rest.
    #[error("{}: {source}{}", path.display(), more_text(more))]
    Invalid {
        path: PathBuf,
        source: FieldError,
        more: Vec<FieldError>,
    },
}

fn more_text(more: &[FieldError]) -> String {
    more.iter().map(|e| format!("; {e}")).collect()
}

impl ConfigError {
    pub(crate) fn json(path: &Path, source: serde_json::Error) -> Self {
        Self::Json {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(path: &Path, source: FieldError) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            source,
            more: Vec::new(),
        }
    }

    /// Every problem of a document (`errs` is never empty when this is called).
    pub(crate) fn invalid_all(path: &Path, errs: Vec<FieldError>) -> Self {
        let mut it = errs.into_iter();
        let source = it
            .next()
            .unwrap_or_else(|| FieldError::new("(document)", "invalid"));
        Self::Invalid {
            path: path.to_path_buf(),
            source,
            more: it.collect(),
        }
    }
}

/// A semantic validation failure, named by its JSON path (`requests.memory`,
/// `agents.sensor.cpus`, `exec[0]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Reads `path`, refusing anything that is not a regular file or holds more than
/// `max_bytes`. The limit is enforced on the bytes actually read (not only on the
/// metadata length), so a file that grows while being read cannot get past it.
pub fn read_capped(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let too_large = || ConfigError::TooLarge {
        path: path.to_path_buf(),
        limit: max_bytes,
    };
    if meta.len() > max_bytes {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok(buf)
}

/// The same cap for documents that arrive as bytes (over the air) rather than as files.
pub(crate) fn check_len(bytes: &[u8], origin: &Path, max_bytes: u64) -> Result<(), ConfigError> {
    if bytes.len() as u64 > max_bytes {
        return Err(ConfigError::TooLarge {
            path: origin.to_path_buf(),
            limit: max_bytes,
        });
    }
    Ok(())
}

/// Agent (and board) names: `[a-z0-9][a-z0-9_-]{0,63}`. They become cgroup directory
/// names, file names and audit keys, so no dots, slashes or upper case.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_first = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok_rest = |c: u8| ok_first(c) || c == b'_' || c == b'-';
    match name.as_bytes() {
        [] => Err("name is empty".into()),
        b if b.len() > 64 => Err(format!("name `{name}` is longer than 64 characters")),
        [first, rest @ ..] if ok_first(*first) && rest.iter().all(|c| ok_rest(*c)) => Ok(()),
        _ => Err(format!(
            "name `{}` is not allowed; use lower-case letters, digits, `_` and `-`, \
             starting with a letter or digit",
            name.escape_default()
        )),
    }
}

/// Deserializes a JSON object into a map, refusing duplicate keys (serde's default for
/// maps is last-one-wins, which would let two parsers read two different grants).
pub(crate) fn unique_map<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct UniqueMap<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueMap<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object with unique keys")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some(key) = access.next_key::<String>()? {
                if map.contains_key(&key) {
                    return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                }
                let value = access.next_value()?;
                map.insert(key, value);
            }
            Ok(map)
        }
    }

    d.deserialize_map(UniqueMap(PhantomData))
}

/// Resolves a path from a config file against the directory holding that file.
pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The directory of `origin`, against which its relative paths are resolved.
pub(crate) fn base_dir(origin: &Path) -> &Path {
    origin.parent().unwrap_or(Path::new(""))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Writes `contents` to `name` in a fresh directory that is removed when the
    /// returned guard drops (tests in the other config modules use it too).
    pub(crate) fn temp_file(name: &str, contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(contents)
            .unwrap();
        (dir, path)
    }

    #[test]
    fn read_capped_accepts_up_to_the_limit() {
        let (_dir_path, path) = temp_file("exact.json", &[b'x'; 16]);
        assert_eq!(read_capped(&path, 16).unwrap().len(), 16);
    }

    #[test]
    fn read_capped_refuses_oversize_naming_file_and_limit() {
        let (_dir_path, path) = temp_file("big.json", &[b'x'; 17]);
        let err = read_capped(&path, 16).unwrap_err();
        assert!(
            matches!(err, ConfigError::TooLarge { limit: 16, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("big.json") && msg.contains("16-byte limit"),
            "{msg}"
        );
    }

    #[test]
    fn read_capped_refuses_directories_and_missing_files() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            read_capped(&dir, 16),
            Err(ConfigError::NotAFile { .. })
        ));
        let missing = dir.join("nanoclaw-definitely-missing.json");
        let err = read_capped(&missing, 16).unwrap_err();
        assert!(err.to_string().contains("nanoclaw-definitely-missing.json"));
    }

    #[test]
    fn names() {
        for ok in ["sensor", "a", "0", "cam-2_x", &"a".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "Sensor",
            "-x",
            "_x",
            "a.b",
            "a/b",
            "a b",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn duplicate_map_keys_are_refused() {
        #[derive(Deserialize, Debug)]
        struct M {
            #[serde(deserialize_with = "unique_map")]
            m: BTreeMap<String, u32>,
        }
        let err = serde_json::from_str::<M>(r#"{"m": {"a": 1, "a": 2}}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate key `a`"), "{err}");
        assert_eq!(
            serde_json::from_str::<M>(r#"{"m": {"a": 1, "b": 2}}"#)
                .unwrap()
                .m
                .len(),
            2
        );
    }
}

/// Helpers shared by the parsers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// `doc` with one substring replaced (it must occur exactly once).
    pub fn replace_once(doc: &str, from: &str, to: &str) -> String {
        assert_eq!(doc.matches(from).count(), 1, "{from}");
        doc.replace(from, to)
    }

    /// The field a semantic validation error names (panics on any other outcome).
    pub fn invalid_field<T: std::fmt::Debug>(r: Result<T, super::ConfigError>) -> String {
        match r {
            Err(super::ConfigError::Invalid { source, .. }) => source.field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }
}

/// Mutation robustness: thousands of corrupted variants of each example document must all be
/// answered with a value or an error naming the file — never a panic.
#[cfg(test)]
mod mutation_tests {
    use std::path::Path;

    use super::{DeviceConfig, Manifest, Policy};
    use crate::fuzzing::mutate::{Rng, mutate};

    fn check<T>(
        name: &str,
        doc: &str,
        parse: impl Fn(&[u8], &Path) -> Result<T, super::ConfigError>,
    ) {
        let origin = Path::new("/etc/nanoclaw/under-test.json");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for case in 0..3000 {
            let bytes = mutate(&mut rng, doc.as_bytes());
            if let Err(e) = parse(&bytes, origin) {
                let msg = e.to_string();
                assert!(
                    msg.contains("under-test.json"),
                    "{name} case {case}: error does not name the file: {msg}"
                );
            }
        }
    }

    #[test]
    fn corrupted_documents_never_panic_and_errors_name_the_file() {
        check("manifest", super::manifest::tests::EXAMPLE, Manifest::parse);
        check("policy", super::policy::tests::EXAMPLE, Policy::parse);
        check("device", super::device::tests::EXAMPLE, DeviceConfig::parse);
    }
}
