//! Board profiles (`boards/*.json`), embedded at build time so a device needs no extra files.
//! `device.json` names its board; an unknown board is a configuration error, not a guess.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    pub description: String,
    pub arch: Vec<String>,
    pub kernel_floor: String,
    pub power: Power,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Power {
    pub sources: Vec<String>,
}

const PROFILES: &[(&str, &str)] = &[("sim", include_str!("../../boards/sim.json"))];

/// Looks up a board by name and checks it supports this architecture.
pub fn profile(name: &str) -> Result<Board, String> {
    let known: Vec<&str> = PROFILES.iter().map(|(n, _)| *n).collect();
    let (_, json) = PROFILES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        format!(
            "board {name:?} is not known (known boards: {})",
            known.join(", ")
        )
    })?;
    let b: Board = serde_json::from_str(json).map_err(|e| format!("board profile {name}: {e}"))?;
    let arch = std::env::consts::ARCH;
    if !b.arch.iter().any(|a| a == arch) {
        return Err(format!(
            "board {name} does not support this architecture ({arch})"
        ));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_profiles_parse_and_unknown_is_refused() {
        for (n, _) in PROFILES {
            assert_eq!(profile(n).unwrap().name, *n);
        }
        assert!(profile("nope").unwrap_err().contains("known boards: sim"));
    }
}
