//! The `sim` board's battery: a charge that the device's power (the power model driven by
//! the agents' real CPU and network use, plus a base load) drains and a simulated charger
//! refills, published as a `power_supply` tree (`sim-battery`, `sim-ac`) that the real sysfs
//! readers then read back — so the demo and the tests exercise the same code a device with a
//! battery runs. A clock speed-up lets hours of battery pass in seconds.

use std::path::{Path, PathBuf};

use crate::board::SimBattery as Spec;

#[derive(Debug, Clone)]
pub struct Sim {
    spec: Spec,
    root: PathBuf,
    pub energy_mwh: f64,
    pub charger: bool,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Power drawn (or, charging, delivered) at the last step, W.
    pub power_w: f64,
    /// What the files hold now: only changed values are written again (the writes are the
    /// simulation's cost, not the supervisor's, so keep them few).
    published: Vec<String>,
}

/// Open-circuit voltage of a Li-ion cell by state of charge (fraction), as (soc, fraction of
/// the way from empty_v to full_v): steep at both ends, flat in the middle.
const OCV: [(f64, f64); 6] = [
    (0.0, 0.0),
    (0.05, 0.30),
    (0.20, 0.50),
    (0.80, 0.75),
    (0.95, 0.90),
    (1.0, 1.0),
];

impl Sim {
    /// A battery at `percent`, publishing under `sysfs` (its `class/power_supply`).
    pub fn new(spec: Spec, sysfs: &Path, percent: f64, speed: f64) -> Sim {
        Sim {
            energy_mwh: spec.capacity_mwh * percent.clamp(0.0, 100.0) / 100.0,
            spec,
            root: sysfs.join("class/power_supply"),
            charger: false,
            speed: speed.max(0.0),
            power_w: 0.0,
            published: Vec::new(),
        }
    }

    pub fn percent(&self) -> f64 {
        (self.energy_mwh / self.spec.capacity_mwh * 100.0).clamp(0.0, 100.0)
    }

    pub fn set_percent(&mut self, p: f64) {
        self.energy_mwh = self.spec.capacity_mwh * p.clamp(0.0, 100.0) / 100.0;
    }

    /// The board's own load on top of the power model (radio, sensors).
    pub fn base_w(&self) -> f64 {
        self.spec.base_w
    }

    pub fn voltage(&self) -> f64 {
        let soc = self.percent() / 100.0;
        let frac = OCV.windows(2).find(|w| soc <= w[1].0).map_or(1.0, |w| {
            let ((s0, v0), (s1, v1)) = (w[0], w[1]);
            v0 + (v1 - v0) * (soc - s0) / (s1 - s0)
        });
        self.spec.empty_v + (self.spec.full_v - self.spec.empty_v) * frac
    }

    /// Advances `dt_s` real seconds with the device drawing `load_w`.
    pub fn step(&mut self, dt_s: f64, load_w: f64) {
        let hours = dt_s.max(0.0) * self.speed / 3600.0;
        if self.charger {
            self.power_w = self.spec.charger_w;
            self.energy_mwh += (self.spec.charger_w - load_w).max(0.0) * hours * 1000.0;
        } else {
            self.power_w = load_w.max(0.0);
            self.energy_mwh -= self.power_w * hours * 1000.0;
        }
        self.energy_mwh = self.energy_mwh.clamp(0.0, self.spec.capacity_mwh);
    }

    /// Writes the `power_supply` tree (µWh, µW, µV, as the kernel does).
    pub fn publish(&mut self) -> std::io::Result<()> {
        let bat = self.root.join("sim-battery");
        let ac = self.root.join("sim-ac");
        if self.published.is_empty() {
            std::fs::create_dir_all(&bat)?;
            std::fs::create_dir_all(&ac)?;
        }
        let full = self.percent() >= 100.0;
        let status = match (self.charger, full) {
            (true, true) => "Full",
            (true, false) => "Charging",
            (false, _) => "Discharging",
        };
        let files = [
            (bat.join("type"), "Battery".to_owned()),
            (bat.join("status"), status.to_owned()),
            (
                bat.join("capacity"),
                format!("{}", self.percent().floor() as u32),
            ),
            (
                bat.join("energy_now"),
                format!("{}", (self.energy_mwh * 1000.0) as u64),
            ),
            (
                bat.join("energy_full"),
                format!("{}", (self.spec.capacity_mwh * 1000.0) as u64),
            ),
            (
                bat.join("power_now"),
                format!("{}", (self.power_w * 1e6) as u64),
            ),
            (
                bat.join("voltage_now"),
                format!("{}", (self.voltage() * 1e6) as u64),
            ),
            (ac.join("type"), "Mains".to_owned()),
            (
                ac.join("online"),
                if self.charger { "1" } else { "0" }.to_owned(),
            ),
        ];
        let fresh = self.published.len() != files.len();
        let mut now = Vec::with_capacity(files.len());
        for (i, (p, v)) in files.into_iter().enumerate() {
            if fresh || self.published[i] != v {
                // Each file replaced whole, so a reader never sees half a number.
                crate::agents::persist::write_file_atomic(&p, format!("{v}\n").as_bytes(), false)?;
            }
            now.push(v);
        }
        self.published = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            capacity_mwh: 10_000.0,
            full_v: 4.2,
            empty_v: 3.0,
            charger_w: 10.0,
            base_w: 0.5,
        }
    }

    #[test]
    fn drains_charges_and_reads_back_through_the_real_readers() {
        let t = tempfile::tempdir().unwrap();
        let mut s = Sim::new(spec(), t.path(), 50.0, 3600.0);
        // 1 real second = 1 simulated hour: 2 W for an hour is 2000 mWh.
        s.step(1.0, 2.0);
        assert!((s.percent() - 30.0).abs() < 1e-9);
        s.publish().unwrap();
        let sup = crate::power::sysfs::supplies(t.path());
        let b = &sup.batteries[0];
        assert_eq!(b.capacity_pct, Some(30.0));
        assert!((b.energy_wh.unwrap() - 3.0).abs() < 1e-6);
        assert!((b.power_w.unwrap() - 2.0).abs() < 1e-6);
        assert_eq!(sup.external_online, Some(false));
        assert!(b.voltage_v.unwrap() > 3.0 && b.voltage_v.unwrap() < 4.2);
        s.charger = true;
        s.step(1.0, 2.0);
        assert!((s.percent() - 110.0_f64.min(100.0)).abs() < 1e-9);
        s.publish().unwrap();
        assert!(crate::power::sysfs::supplies(t.path()).powered());
        s.charger = false;
        s.step(100.0, 50.0);
        assert_eq!(s.percent(), 0.0, "clamped at empty");
    }

    #[test]
    fn voltage_curve_is_monotonic() {
        let t = tempfile::tempdir().unwrap();
        let mut s = Sim::new(spec(), t.path(), 0.0, 1.0);
        let mut last = 0.0;
        for p in 0..=100 {
            s.set_percent(f64::from(p));
            let v = s.voltage();
            assert!(v >= last, "{p}: {v} < {last}");
            last = v;
        }
        assert!((last - 4.2).abs() < 1e-9);
    }
}
