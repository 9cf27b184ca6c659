//! Power: reading what the device's power sources say, attributing energy to agents, and the
//! pure rules for energy budgets and battery tiers (docs/ENERGY.md). `daemon::energy` samples
//! and acts on them.

pub mod attribution;
pub mod budget;
pub mod sim;
pub mod sysfs;
pub mod tiers;

use std::path::PathBuf;
use std::time::Instant;

use crate::board::Source;

/// What the power sources say at one sample.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Reading {
    pub supplies: sysfs::Supplies,
    /// Device power from a sensor, W (`None`: the power model is used).
    pub measured_w: Option<f64>,
    /// Where `measured_w` came from (`power_supply:BAT0`, `hwmon:ina219`, `rapl`) or `model`.
    pub source: String,
}

/// The readers of one device, in the board's order of preference.
pub struct Sensor {
    sysfs: PathBuf,
    sources: Vec<Source>,
    rapl: Option<(sysfs::Rapl, Instant)>,
}

impl Sensor {
    pub fn new(sysfs: PathBuf, sources: Vec<Source>) -> Sensor {
        Sensor {
            sysfs,
            sources,
            rapl: None,
        }
    }

    pub fn root(&self) -> &std::path::Path {
        &self.sysfs
    }

    pub fn read(&mut self, now: Instant) -> Reading {
        let supplies = sysfs::supplies(&self.sysfs);
        let mut measured = None;
        for s in &self.sources {
            if measured.is_some() {
                break;
            }
            measured = match s {
                // A discharging battery's output is what the whole device draws.
                Source::PowerSupply => supplies
                    .batteries
                    .iter()
                    .find(|b| b.status == sysfs::Status::Discharging && b.power_w.is_some())
                    .and_then(|b| Some((b.power_w?, format!("power_supply:{}", b.name)))),
                Source::Hwmon => {
                    sysfs::hwmon_power(&self.sysfs).map(|(w, names)| (w, format!("hwmon:{names}")))
                }
                Source::Rapl => {
                    let cur = sysfs::Rapl::read(&self.sysfs);
                    let w = match (&self.rapl, &cur) {
                        (Some((prev, t)), Some(c)) => {
                            prev.power_w(c, now.duration_since(*t).as_secs_f64())
                        }
                        _ => None,
                    };
                    self.rapl = cur.map(|c| (c, now));
                    w.map(|w| (w, "rapl".to_owned()))
                }
            };
        }
        let (measured_w, source) = match measured {
            Some((w, s)) => (Some(w), s),
            None => (None, "model".to_owned()),
        };
        Reading {
            supplies,
            measured_w,
            source,
        }
    }
}
