//! Board profiles (`boards/*.json`), embedded at build time so a device needs no extra files.
//! `device.json` names its board or says `"auto"`: detection matches the device-tree model or
//! the DMI vendor/product against the profiles and fails, naming what it read, when none
//! matches — an unknown board is a configuration error, not a guess.
//!
//! A profile carries the power model energy attribution falls back on when the board has no
//! power sensor (docs/ENERGY.md), and, for `sim`, the simulated battery.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    pub description: String,
    pub arch: Vec<String>,
    #[serde(default)]
    pub detect: Detect,
    pub kernel_floor: String,
    pub power: Power,
    #[serde(default)]
    pub notes: String,
}

/// Strings that identify the board: any one matching (as a substring) selects it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    #[serde(default)]
    pub device_tree_model: Vec<String>,
    #[serde(default)]
    pub dmi_sys_vendor: Vec<String>,
    #[serde(default)]
    pub dmi_product: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Power {
    /// Readers to try, best first: `power_supply`, `hwmon`, `rapl`.
    pub sources: Vec<Source>,
    pub model: Model,
    /// The simulated battery (`sim` only).
    #[serde(default)]
    pub battery: Option<SimBattery>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    PowerSupply,
    Hwmon,
    Rapl,
}

/// Device power when nothing measures it: `idle_w + core_w × busy cores`, plus
/// `j_per_byte` per network byte (by interface name, or `default`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub idle_w: f64,
    pub core_w: f64,
    pub j_per_byte: BTreeMap<String, f64>,
}

impl Model {
    /// Joules per byte when the interface is not known (the agents' bytes are counted per
    /// cgroup, not per interface).
    pub fn default_j_per_byte(&self) -> f64 {
        self.j_per_byte.get("default").copied().unwrap_or(0.0)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimBattery {
    pub capacity_mwh: f64,
    pub full_v: f64,
    pub empty_v: f64,
    /// Charging power while the simulated charger is on.
    pub charger_w: f64,
    /// Load of the rest of the board (radio, sensors), on top of the power model.
    pub base_w: f64,
}

const PROFILES: &[(&str, &str)] = &[
    ("sim", include_str!("../../boards/sim.json")),
    (
        "raspberry-pi-4",
        include_str!("../../boards/raspberry-pi-4.json"),
    ),
    (
        "raspberry-pi-5",
        include_str!("../../boards/raspberry-pi-5.json"),
    ),
    ("x86-gateway", include_str!("../../boards/x86-gateway.json")),
    ("qemu-x86_64", include_str!("../../boards/qemu-x86_64.json")),
    (
        "qemu-aarch64-virt",
        include_str!("../../boards/qemu-aarch64-virt.json"),
    ),
];

fn parse(name: &str, json: &str) -> Result<Board, String> {
    let b: Board = serde_json::from_str(json).map_err(|e| format!("board profile {name}: {e}"))?;
    let m = &b.power.model;
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if !(ok(m.idle_w) && ok(m.core_w) && m.j_per_byte.values().all(|j| ok(*j))) {
        return Err(format!(
            "board profile {name}: power model values must be ≥ 0"
        ));
    }
    Ok(b)
}

/// Looks up a board by name and checks it supports this architecture.
pub fn profile(name: &str) -> Result<Board, String> {
    let known: Vec<&str> = PROFILES.iter().map(|(n, _)| *n).collect();
    let (_, json) = PROFILES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        format!(
            "board {name:?} is not known (known boards: {}, or \"auto\")",
            known.join(", ")
        )
    })?;
    let b = parse(name, json)?;
    let arch = std::env::consts::ARCH;
    if !b.arch.iter().any(|a| a == arch) {
        return Err(format!(
            "board {name} does not support this architecture ({arch})"
        ));
    }
    Ok(b)
}

/// What identifies this machine, read under `root` (`/` normally; tests pass a fixture).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identity {
    pub device_tree_model: Option<String>,
    pub dmi_sys_vendor: Option<String>,
    pub dmi_product: Option<String>,
}

impl Identity {
    pub fn read(root: &Path) -> Identity {
        let read = |p: &str| {
            std::fs::read(root.join(p)).ok().map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .chars()
                    .take(200)
                    .collect::<String>()
            })
        };
        Identity {
            device_tree_model: read("proc/device-tree/model")
                .or_else(|| read("sys/firmware/devicetree/base/model")),
            dmi_sys_vendor: read("sys/class/dmi/id/sys_vendor"),
            dmi_product: read("sys/class/dmi/id/product_name"),
        }
    }
}

/// The profile `id` matches (never `sim`), for `board: "auto"`.
pub fn detect(id: &Identity) -> Result<Board, String> {
    let hit = |wanted: &[String], have: &Option<String>| {
        have.as_deref().is_some_and(|h| {
            wanted
                .iter()
                .any(|w| !w.is_empty() && h.contains(w.as_str()))
        })
    };
    for (name, json) in PROFILES {
        let b = parse(name, json)?;
        let d = &b.detect;
        if hit(&d.device_tree_model, &id.device_tree_model)
            || hit(&d.dmi_sys_vendor, &id.dmi_sys_vendor)
            || hit(&d.dmi_product, &id.dmi_product)
        {
            return profile(name);
        }
    }
    Err(format!(
        "board \"auto\": no profile matches this machine (device-tree model {:?}, DMI vendor {:?}, product {:?}); set \"board\" in device.json (docs/BOARDS.md)",
        id.device_tree_model, id.dmi_sys_vendor, id.dmi_product
    ))
}

/// `name`, or detection when it is `auto`.
pub fn resolve(name: &str, root: &Path) -> Result<Board, String> {
    if name == "auto" {
        detect(&Identity::read(root))
    } else {
        profile(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_profiles_parse_and_unknown_is_refused() {
        for (n, j) in PROFILES {
            let b = parse(n, j).unwrap();
            assert_eq!(b.name, *n);
            assert!(b.power.model.idle_w > 0.0, "{n}");
        }
        assert!(profile("nope").unwrap_err().contains("known boards: sim"));
        assert!(profile("sim").unwrap().power.battery.is_some());
    }

    #[test]
    fn detection_by_device_tree_and_dmi() {
        let pi = Identity {
            device_tree_model: Some("Raspberry Pi 4 Model B Rev 1.4".into()),
            ..Default::default()
        };
        let qemu = Identity {
            dmi_sys_vendor: Some("QEMU".into()),
            dmi_product: Some("Standard PC (Q35 + ICH9, 2009)".into()),
            ..Default::default()
        };
        let arch = std::env::consts::ARCH;
        match arch {
            "aarch64" => assert_eq!(detect(&pi).unwrap().name, "raspberry-pi-4"),
            _ => assert!(
                detect(&pi)
                    .unwrap_err()
                    .contains("does not support this architecture")
            ),
        }
        if arch == "x86_64" {
            assert_eq!(detect(&qemu).unwrap().name, "qemu-x86_64");
        }
        let unknown = detect(&Identity::default()).unwrap_err();
        assert!(unknown.contains("no profile matches"), "{unknown}");
        // From files laid out like /proc and /sys.
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("proc/device-tree")).unwrap();
        std::fs::write(
            t.path().join("proc/device-tree/model"),
            b"Raspberry Pi 5 Model B Rev 1.0\0",
        )
        .unwrap();
        let id = Identity::read(t.path());
        assert_eq!(
            id.device_tree_model.as_deref(),
            Some("Raspberry Pi 5 Model B Rev 1.0")
        );
    }
}
