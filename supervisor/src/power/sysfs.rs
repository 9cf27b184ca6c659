//! Readers for the kernel's power interfaces, rooted at a configurable sysfs directory (tests
//! and the simulated board point it at a tree laid out like `/sys`):
//!
//! - `class/power_supply/*`: batteries (capacity, energy_now/energy_full or charge_now ×
//!   voltage, power_now or current_now × voltage_now, status) and mains/USB `online`;
//! - `class/hwmon/hwmon*/power1_input`: power sensors such as the INA2xx on UPS HATs (µW);
//! - `class/powercap/intel-rapl:N/energy_uj`: RAPL package energy, a counter that wraps at
//!   `max_energy_range_uj` (power comes from two readings, [`Rapl::power_w`]).
//!
//! Every file is small and read with a cap; a missing or garbled file is "not available", never
//! a guess. Units in sysfs: µW, µWh, µAh, µV, µA, µJ.

use std::path::{Path, PathBuf};

/// Battery charging state as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Charging,
    Discharging,
    Full,
    NotCharging,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Battery {
    /// The power_supply directory name (`BAT0`, `sim-battery`).
    pub name: String,
    pub capacity_pct: Option<f64>,
    pub energy_wh: Option<f64>,
    pub full_wh: Option<f64>,
    /// Power flowing out of (discharging) or into (charging) the battery, W, always ≥ 0.
    pub power_w: Option<f64>,
    pub voltage_v: Option<f64>,
    pub status: Status,
}

impl Battery {
    /// Charge in percent: `capacity`, else energy / full.
    pub fn percent(&self) -> Option<f64> {
        self.capacity_pct
            .or_else(|| match (self.energy_wh, self.full_wh) {
                (Some(e), Some(f)) if f > 0.0 => Some((e / f * 100.0).clamp(0.0, 100.0)),
                _ => None,
            })
    }
}

/// One look at the power supplies.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Supplies {
    pub batteries: Vec<Battery>,
    /// Whether any mains/USB supply is online (`None`: the device reports none).
    pub external_online: Option<bool>,
}

impl Supplies {
    /// Whether the device is on external power or charging.
    pub fn powered(&self) -> bool {
        self.external_online == Some(true)
            || self
                .batteries
                .iter()
                .any(|b| matches!(b.status, Status::Charging | Status::Full))
    }
}

const FILE_MAX: u64 = 4096;

fn read_str(p: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(p).ok()?;
    let mut s = String::new();
    f.take(FILE_MAX).read_to_string(&mut s).ok()?;
    Some(s.trim().to_owned())
}

fn read_num(p: &Path) -> Option<f64> {
    read_str(p)?.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).take(64).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Reads every power supply under `sysfs/class/power_supply`.
pub fn supplies(sysfs: &Path) -> Supplies {
    let mut out = Supplies::default();
    for dir in entries(&sysfs.join("class/power_supply")) {
        let kind = read_str(&dir.join("type")).unwrap_or_default();
        let num = |f: &str| read_num(&dir.join(f));
        match kind.as_str() {
            "Battery" => {
                let volts = num("voltage_now").map(|uv| uv / 1e6);
                let energy = num("energy_now")
                    .map(|uwh| uwh / 1e6)
                    .or_else(|| Some(num("charge_now")? / 1e6 * volts?));
                let full = num("energy_full")
                    .map(|uwh| uwh / 1e6)
                    .or_else(|| Some(num("charge_full")? / 1e6 * volts?));
                let power = num("power_now")
                    .map(|uw| uw / 1e6)
                    .or_else(|| Some(num("current_now")? / 1e6 * volts?))
                    .map(f64::abs);
                let status = match read_str(&dir.join("status")).as_deref() {
                    Some("Charging") => Status::Charging,
                    Some("Discharging") => Status::Discharging,
                    Some("Full") => Status::Full,
                    Some("Not charging") => Status::NotCharging,
                    _ => Status::Unknown,
                };
                out.batteries.push(Battery {
                    name: dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    capacity_pct: num("capacity").map(|c| c.clamp(0.0, 100.0)),
                    energy_wh: energy,
                    full_wh: full,
                    power_w: power,
                    voltage_v: volts,
                    status,
                });
            }
            "Mains" | "USB" | "USB_C" | "USB_PD" | "Wireless" => {
                if let Some(o) = num("online") {
                    let on = o > 0.0;
                    out.external_online = Some(out.external_online.unwrap_or(false) || on);
                }
            }
            _ => {}
        }
    }
    out
}

/// The total of the hwmon power sensors (`power1_input`, µW), W, and their names.
pub fn hwmon_power(sysfs: &Path) -> Option<(f64, String)> {
    let mut total = 0.0;
    let mut names = Vec::new();
    for dir in entries(&sysfs.join("class/hwmon")) {
        if let Some(uw) = read_num(&dir.join("power1_input")) {
            total += uw / 1e6;
            names.push(read_str(&dir.join("name")).unwrap_or_else(|| "hwmon".into()));
        }
    }
    (!names.is_empty()).then(|| (total, names.join("+")))
}

/// RAPL package counters (top-level `intel-rapl:N` zones only, so sub-zones are not counted
/// twice).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rapl {
    /// (energy µJ, wrap range µJ) per package.
    pub zones: Vec<(u64, u64)>,
}

impl Rapl {
    pub fn read(sysfs: &Path) -> Option<Rapl> {
        let mut zones = Vec::new();
        for dir in entries(&sysfs.join("class/powercap")) {
            let name = dir.file_name()?.to_string_lossy().into_owned();
            // `intel-rapl:0` yes, `intel-rapl:0:1` (a sub-zone) and `intel-rapl` (the control
            // type) no.
            if name.matches(':').count() != 1 {
                continue;
            }
            let e = read_num(&dir.join("energy_uj"))?;
            let range = read_num(&dir.join("max_energy_range_uj")).unwrap_or(f64::from(u32::MAX));
            zones.push((e as u64, range as u64));
        }
        (!zones.is_empty()).then_some(Rapl { zones })
    }

    /// Average power between `self` (earlier) and `now`, `dt_s` apart, counting a wrap of each
    /// counter at its range.
    pub fn power_w(&self, now: &Rapl, dt_s: f64) -> Option<f64> {
        if self.zones.len() != now.zones.len() || dt_s <= 0.0 {
            return None;
        }
        let uj: u64 = self
            .zones
            .iter()
            .zip(&now.zones)
            .map(|(&(a, range), &(b, _))| energy_delta(a, b, range))
            .sum();
        Some(uj as f64 / 1e6 / dt_s)
    }
}

/// `b − a` for a counter that wraps to 0 after `range`.
pub fn energy_delta(a: u64, b: u64, range: u64) -> u64 {
    if b >= a {
        b - a
    } else {
        range.saturating_sub(a).saturating_add(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (p, v) in files {
            let p = t.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        t
    }

    #[test]
    fn laptop_battery_with_energy_and_power() {
        // As a ThinkPad reports it (energy_* in µWh, power_now in µW).
        let t = tree(&[
            ("class/power_supply/AC/type", "Mains\n"),
            ("class/power_supply/AC/online", "0\n"),
            ("class/power_supply/BAT0/type", "Battery\n"),
            ("class/power_supply/BAT0/status", "Discharging\n"),
            ("class/power_supply/BAT0/capacity", "57\n"),
            ("class/power_supply/BAT0/energy_now", "28790000\n"),
            ("class/power_supply/BAT0/energy_full", "50480000\n"),
            ("class/power_supply/BAT0/power_now", "7318000\n"),
            ("class/power_supply/BAT0/voltage_now", "11862000\n"),
        ]);
        let s = supplies(t.path());
        assert_eq!(s.external_online, Some(false));
        assert!(!s.powered());
        let b = &s.batteries[0];
        assert_eq!(b.percent(), Some(57.0));
        assert!((b.energy_wh.unwrap() - 28.79).abs() < 1e-9);
        assert!((b.power_w.unwrap() - 7.318).abs() < 1e-9);
        assert_eq!(b.status, Status::Discharging);
    }

    #[test]
    fn fuel_gauge_with_charge_and_current() {
        // A MAX17048-style gauge on a UPS HAT: charge in µAh, current in µA (negative when
        // discharging on some drivers), no capacity file.
        let t = tree(&[
            ("class/power_supply/ups-battery/type", "Battery\n"),
            ("class/power_supply/ups-battery/status", "Charging\n"),
            ("class/power_supply/ups-battery/charge_now", "1500000\n"),
            ("class/power_supply/ups-battery/charge_full", "3000000\n"),
            ("class/power_supply/ups-battery/current_now", "-500000\n"),
            ("class/power_supply/ups-battery/voltage_now", "3900000\n"),
        ]);
        let s = supplies(t.path());
        let b = &s.batteries[0];
        assert!((b.energy_wh.unwrap() - 5.85).abs() < 1e-9);
        assert_eq!(b.percent(), Some(50.0));
        assert!((b.power_w.unwrap() - 1.95).abs() < 1e-9);
        assert!(s.powered());
    }

    #[test]
    fn hwmon_and_rapl_with_wraparound() {
        let t = tree(&[
            ("class/hwmon/hwmon0/name", "ina219\n"),
            ("class/hwmon/hwmon0/power1_input", "2450000\n"),
            ("class/hwmon/hwmon1/name", "cpu_thermal\n"),
            ("class/powercap/intel-rapl/enabled", "1\n"),
            ("class/powercap/intel-rapl:0/energy_uj", "262143000000\n"),
            (
                "class/powercap/intel-rapl:0/max_energy_range_uj",
                "262143328850\n",
            ),
            ("class/powercap/intel-rapl:0:0/energy_uj", "5\n"),
        ]);
        assert_eq!(hwmon_power(t.path()), Some((2.45, "ina219".into())));
        let before = Rapl::read(t.path()).unwrap();
        assert_eq!(before.zones.len(), 1, "sub-zones are not counted");
        std::fs::write(
            t.path().join("class/powercap/intel-rapl:0/energy_uj"),
            "671150\n",
        )
        .unwrap();
        let after = Rapl::read(t.path()).unwrap();
        // 328850 µJ to the wrap plus 671150 after it: 1 J in 0.5 s.
        assert!((before.power_w(&after, 0.5).unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(energy_delta(10, 30, 100), 20);
        assert_eq!(energy_delta(90, 5, 100), 15);
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/sysfs")
            .join(name)
    }

    /// Captured layouts (docs/BOARDS.md says how to add one).
    #[test]
    fn captured_layouts() {
        let s = supplies(&fixture("thinkpad-x1"));
        assert_eq!(s.external_online, Some(false));
        let b = &s.batteries[0];
        assert_eq!((b.name.as_str(), b.percent()), ("BAT0", Some(62.0)));
        assert!((b.energy_wh.unwrap() - 31.802).abs() < 1e-9);
        assert!((b.full_wh.unwrap() - 51.23).abs() < 1e-9);
        assert!((b.power_w.unwrap() - 6.302).abs() < 1e-9);

        let pi = fixture("rpi4-ups-hat");
        let s = supplies(&pi);
        assert_eq!(s.external_online, Some(false), "USB input offline");
        let b = &s.batteries[0];
        assert_eq!(b.percent(), Some(48.0));
        // charge (µAh) × voltage: 1.44 Ah × 3.8425 V.
        assert!((b.energy_wh.unwrap() - 1.44 * 3.8425).abs() < 1e-9);
        assert_eq!(b.power_w, None, "this gauge reports no current");
        assert_eq!(hwmon_power(&pi), Some((3.128, "ina219".into())));

        let rapl = Rapl::read(&fixture("intel-rapl")).unwrap();
        assert_eq!(rapl.zones, [(262_142_950_000, 262_143_328_850)]);
        let later = Rapl {
            zones: vec![(621_150, 262_143_328_850)],
        };
        // 378 850 µJ before the wrap + 621 150 after: 1 J in 0.25 s.
        assert!((rapl.power_w(&later, 0.25).unwrap() - 4.0).abs() < 1e-9);
    }

    #[test]
    fn garbage_and_absence_are_not_guesses() {
        let t = tree(&[
            ("class/power_supply/BAT1/type", "Battery\n"),
            ("class/power_supply/BAT1/capacity", "lots\n"),
            ("class/power_supply/BAT1/energy_now", "NaN\n"),
        ]);
        let s = supplies(t.path());
        assert_eq!(s.batteries[0].percent(), None);
        assert_eq!(s.batteries[0].status, Status::Unknown);
        assert_eq!(hwmon_power(t.path()), None);
        assert_eq!(Rapl::read(t.path()), None);
        assert_eq!(supplies(Path::new("/nonexistent")), Supplies::default());
    }
}
