//! Energy attribution, Kepler-style, for one sampling period (pure; docs/ENERGY.md).
//!
//! - Device power `P` is measured (battery discharge, hwmon, RAPL) or modelled:
//!   `P = idle_w + core_w × busy_cores + Σ bytes × j_per_byte / dt`.
//! - Network energy is charged directly: `E_net(a) = bytes(a) × j_per_byte`.
//! - Active CPU power is what is left above idle: `P_cpu = max(P − idle_w − E_net_all / dt, 0)`;
//!   each agent gets the share of it that its CPU time is of the whole device's busy CPU time
//!   (so work outside agents, the supervisor's included, keeps its share and is not charged to
//!   them): `E_cpu(a) = P_cpu × dt × cpu(a) / max(busy_all, Σ cpu)`.
//! - Idle power is the device's, not any agent's: it is not attributed (a budget then counts
//!   only what an agent's own activity costs, and an idle agent costs nothing).

/// One agent's use in the period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Use {
    /// CPU time, seconds.
    pub cpu_s: f64,
    /// Network bytes, both directions.
    pub bytes: u64,
}

/// The device in the period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Device {
    pub dt_s: f64,
    /// Busy CPU time of the whole device (all cores), seconds.
    pub busy_s: f64,
    /// Measured power, W, when a sensor gives one.
    pub measured_w: Option<f64>,
    pub idle_w: f64,
    pub core_w: f64,
    pub j_per_byte: f64,
}

impl Device {
    /// The power model's estimate for the period, W.
    pub fn modelled_w(&self, all_bytes: u64) -> f64 {
        let dt = self.dt_s.max(1e-9);
        self.idle_w + self.core_w * self.busy_s / dt + all_bytes as f64 * self.j_per_byte / dt
    }
}

/// Energy per agent for the period, in joules, in the order of `uses`, and the device power
/// used (W).
pub fn attribute(dev: &Device, uses: &[Use]) -> (Vec<f64>, f64) {
    let all_bytes: u64 = uses.iter().map(|u| u.bytes).sum();
    let power = dev.measured_w.unwrap_or_else(|| dev.modelled_w(all_bytes));
    let dt = dev.dt_s.max(0.0);
    let net_j = all_bytes as f64 * dev.j_per_byte;
    let cpu_w = (power - dev.idle_w - if dt > 0.0 { net_j / dt } else { 0.0 }).max(0.0);
    let sum_cpu: f64 = uses.iter().map(|u| u.cpu_s.max(0.0)).sum();
    let denom = dev.busy_s.max(sum_cpu);
    let out = uses
        .iter()
        .map(|u| {
            let cpu = if denom > 0.0 {
                cpu_w * dt * u.cpu_s.max(0.0) / denom
            } else {
                0.0
            };
            cpu + u.bytes as f64 * dev.j_per_byte
        })
        .collect();
    (out, power)
}

/// Joules to milliwatt-hours.
pub fn mwh(joules: f64) -> f64 {
    joules / 3.6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(measured: Option<f64>, busy: f64) -> Device {
        Device {
            dt_s: 1.0,
            busy_s: busy,
            measured_w: measured,
            idle_w: 2.0,
            core_w: 1.5,
            j_per_byte: 1e-6,
        }
    }

    #[test]
    fn cpu_share_with_the_model_is_core_watts_times_cpu_time() {
        let uses = [
            Use {
                cpu_s: 0.75,
                bytes: 0,
            },
            Use {
                cpu_s: 0.25,
                bytes: 0,
            },
        ];
        // Model: busy 1.2 s (0.2 s outside the agents), so P = 2 + 1.5 × 1.2.
        let (e, p) = attribute(&dev(None, 1.2), &uses);
        assert!((p - 3.8).abs() < 1e-12);
        assert!(
            (e[0] - 1.125).abs() < 1e-12 && (e[1] - 0.375).abs() < 1e-12,
            "{e:?}"
        );
        assert!((e[0] / e[1] - 3.0).abs() < 1e-12);
    }

    #[test]
    fn measured_power_is_split_above_idle_and_network_is_direct() {
        let uses = [
            Use {
                cpu_s: 0.5,
                bytes: 1_000_000,
            },
            Use {
                cpu_s: 0.5,
                bytes: 0,
            },
        ];
        // 5 W measured: 1 J of network, 2 W idle, 2 W of CPU shared by busy time 1 s.
        let (e, p) = attribute(&dev(Some(5.0), 1.0), &uses);
        assert_eq!(p, 5.0);
        assert!(
            (e[0] - 2.0).abs() < 1e-9 && (e[1] - 1.0).abs() < 1e-9,
            "{e:?}"
        );
        // Power below idle attributes no CPU energy; nothing goes negative.
        let (e, _) = attribute(&dev(Some(1.0), 1.0), &uses);
        assert!((e[0] - 1.0).abs() < 1e-9 && e[1] == 0.0, "{e:?}");
        // Agents reporting more CPU than the device (rounding): shares still sum to the CPU power.
        let (e, _) = attribute(
            &dev(Some(4.0), 0.5),
            &[
                Use {
                    cpu_s: 0.6,
                    bytes: 0,
                },
                Use {
                    cpu_s: 0.4,
                    bytes: 0,
                },
            ],
        );
        assert!((e.iter().sum::<f64>() - 2.0).abs() < 1e-9, "{e:?}");
        assert!((mwh(3.6) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn idle_device_attributes_nothing() {
        let (e, p) = attribute(&dev(None, 0.0), &[Use::default(), Use::default()]);
        assert_eq!(e, [0.0, 0.0]);
        assert_eq!(p, 2.0);
    }
}
