//! A runtime layer's `manifest.json`: `{"kind": "runtime", "name": "python3.11", "version":
//! "3.11.2"}`. A layer is a signed bundle like an agent's, but it never runs: its `rootfs/usr`
//! is mounted read-only at `/usr` for the agents whose manifest names it, so an interpreter is
//! installed once per device instead of once per agent (docs/RUNTIMES.md).

use std::path::Path;

use serde::Deserialize;

use super::manifest::{MAX_MANIFEST_BYTES, MAX_VERSION_LEN, check_runtime_name};
use super::{ConfigError, FieldError, check_len};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    Runtime,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub kind: LayerKind,
    pub name: String,
    pub version: String,
    /// What is in it, for people (`Debian python3.11-minimal 3.11.2-6`).
    #[serde(default)]
    pub description: String,
}

impl Layer {
    /// Whether a manifest's bytes describe a layer (they carry a top-level `kind`).
    pub fn is_layer(bytes: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
            .is_ok_and(|m| m.contains_key("kind"))
    }

    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Self, ConfigError> {
        check_len(bytes, origin, MAX_MANIFEST_BYTES)?;
        let l: Layer = serde_json::from_slice(bytes).map_err(|e| ConfigError::json(origin, e))?;
        check_runtime_name(&l.name)
            .map_err(|r| ConfigError::invalid(origin, FieldError::new("name", r)))?;
        if crate::daemon::installer::semver(&l.version).is_none()
            || l.version.len() > MAX_VERSION_LEN
        {
            return Err(ConfigError::invalid(
                origin,
                FieldError::new(
                    "version",
                    format!(
                        "`{}` is not MAJOR.MINOR.PATCH (layers are installed with anti-rollback)",
                        l.version.escape_default()
                    ),
                ),
            ));
        }
        if l.description.len() > 200 {
            return Err(ConfigError::invalid(
                origin,
                FieldError::new("description", "is longer than 200 bytes"),
            ));
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_parse_and_bad_ones_name_the_field() {
        let ok = br#"{"kind":"runtime","name":"python3.11","version":"3.11.2"}"#;
        assert!(Layer::is_layer(ok));
        assert_eq!(Layer::parse(ok, Path::new("m")).unwrap().name, "python3.11");
        assert!(!Layer::is_layer(br#"{"name":"a"}"#));
        for (bad, needle) in [
            (
                &br#"{"kind":"runtime","name":"Py","version":"1.0.0"}"#[..],
                "name",
            ),
            (
                br#"{"kind":"runtime","name":"py","version":"3.11"}"#,
                "version",
            ),
            (
                br#"{"kind":"agent","name":"py","version":"1.0.0"}"#,
                "unknown variant",
            ),
            (
                br#"{"kind":"runtime","name":"py","version":"1.0.0","x":1}"#,
                "unknown field",
            ),
        ] {
            let e = Layer::parse(bad, Path::new("m")).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
