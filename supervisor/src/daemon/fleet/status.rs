//! The snapshot a device sends the fleet (protocol 2, `DeviceMsg::Status`): battery, posture
//! and each agent's state, memory, energy, trust and denials. It is taken when a session
//! starts, so the session borrows it without touching the daemon again, and sent only when
//! it differs from the last one sent in a way an operator would notice, or when the last is
//! `fleet.status_s` old: an idle check-in stays a few dozen bytes.

use std::time::{Duration, Instant};

use nanoclaw_proto::sync::{AgentStatus, NO_BATTERY, Status, records};

use crate::config::policy::Event;
use crate::daemon::Daemon;
use crate::daemon::now_ms;

/// Agents' records are cut off beyond this (a frame carries at most 64 KiB).
const AGENTS_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq)]
struct Agent {
    name: String,
    state: &'static str,
    restarts: u32,
    memory_bytes: u64,
    memory_limit_bytes: u64,
    energy_mwh: u64,
    energy_budget_mwh: u64,
    trust: u8,
    denials: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    battery_pct: u8,
    external_power: bool,
    posture: String,
    degraded: bool,
    agents: Vec<Agent>,
    /// `agents` encoded: `n` length-prefixed postcard records.
    n: u16,
    encoded: Vec<u8>,
}

/// The last snapshot the server received, and when (monotonic: boards without a real-time
/// clock step their wall clock at boot).
pub type Sent = Option<(Snapshot, Instant)>;

impl Snapshot {
    pub fn take(d: &Daemon) -> Snapshot {
        let (battery_pct, external_power) = d.energy.as_ref().map_or((NO_BATTERY, true), |e| {
            let pct = e.last.supplies.batteries.first().and_then(|b| b.percent());
            // A device without a battery runs on external power, whatever sysfs says.
            (
                pct.map_or(NO_BATTERY, |p| p.clamp(0.0, 100.0) as u8),
                e.last.supplies.powered() || e.last.supplies.batteries.is_empty(),
            )
        });
        let posture = d
            .posture
            .levels()
            .iter()
            .map(|(m, l)| format!("{m}={l}"))
            .collect::<Vec<_>>()
            .join(" ");
        let now = now_ms();
        let agents: Vec<Agent> = d
            .agents
            .iter()
            .map(|(name, a)| Agent {
                name: name.clone(),
                state: a.state.as_str(),
                restarts: a.restarts,
                memory_bytes: a
                    .instance
                    .as_ref()
                    .and_then(|_| d.cgroups.memory(name).ok())
                    .map_or(0, |m| m.current),
                memory_limit_bytes: a.admission.as_ref().map_or(0, |e| e.memory_max),
                energy_mwh: a.energy.window.used_mwh as u64,
                energy_budget_mwh: d
                    .policy
                    .agents
                    .get(name)
                    .and_then(|g| g.energy)
                    .map_or(0, |b| b.budget_mwh),
                trust: a.rules.trust.score(now),
                denials: [
                    Event::DeniedConnect,
                    Event::DeniedExec,
                    Event::DeniedOperation,
                ]
                .iter()
                .map(|e| a.events[*e as usize])
                .sum::<u64>()
                .min(u64::from(u32::MAX)) as u32,
            })
            .collect();
        let (mut n, mut used, mut encoded) = (0u16, 0, vec![0u8; AGENTS_BYTES]);
        let mut one = [0u8; 512];
        for a in &agents {
            let rec = AgentStatus {
                name: &a.name,
                state: a.state,
                restarts: a.restarts,
                memory_bytes: a.memory_bytes,
                memory_limit_bytes: a.memory_limit_bytes,
                energy_mwh: a.energy_mwh,
                energy_budget_mwh: a.energy_budget_mwh,
                trust: a.trust,
                denials: a.denials,
            };
            let Ok(bytes) = postcard::to_slice(&rec, &mut one) else {
                continue;
            };
            if n == u16::MAX || !records::push(&mut encoded, &mut used, bytes) {
                break;
            }
            n += 1;
        }
        encoded.truncate(used);
        Snapshot {
            battery_pct,
            external_power,
            posture,
            degraded: d.posture.degraded(),
            agents,
            n,
            encoded,
        }
    }

    pub fn status(&self) -> Status<'_> {
        Status {
            battery_pct: self.battery_pct,
            external_power: self.external_power,
            posture: &self.posture,
            degraded: self.degraded,
            n: self.n,
            agents: &self.encoded,
        }
    }

    /// Whether this snapshot should go out, given the last one sent: something changed
    /// that the dashboard shows, or the last one is `refresh_ms` old.
    pub fn due(&self, sent: &Sent, now: Instant, refresh: Duration) -> bool {
        let Some((last, at)) = sent else {
            return true;
        };
        now.saturating_duration_since(*at) >= refresh || self.differs(last)
    }

    fn differs(&self, o: &Snapshot) -> bool {
        // A quarter up or down, ignoring the noise of small numbers.
        let moved = |a: u64, b: u64, floor: u64| a.abs_diff(b) > (a.max(b) / 4).max(floor);
        self.battery_pct.abs_diff(o.battery_pct) >= 5
            || self.external_power != o.external_power
            || self.degraded != o.degraded
            || self.posture != o.posture
            || self.agents.len() != o.agents.len()
            || self.agents.iter().zip(&o.agents).any(|(a, b)| {
                a.name != b.name
                    || a.state != b.state
                    || a.restarts != b.restarts
                    || a.denials != b.denials
                    || a.memory_limit_bytes != b.memory_limit_bytes
                    || a.energy_budget_mwh != b.energy_budget_mwh
                    || a.trust.abs_diff(b.trust) >= 5
                    || moved(a.memory_bytes, b.memory_bytes, 1 << 20)
                    || moved(a.energy_mwh, b.energy_mwh, 10)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(memory: u64, state: &'static str) -> Snapshot {
        Snapshot {
            battery_pct: 80,
            external_power: false,
            posture: "seccomp=enforced".into(),
            degraded: false,
            agents: vec![Agent {
                name: "sensor".into(),
                state,
                restarts: 0,
                memory_bytes: memory,
                memory_limit_bytes: 16 << 20,
                energy_mwh: 5,
                energy_budget_mwh: 0,
                trust: 100,
                denials: 0,
            }],
            n: 1,
            encoded: Vec::new(),
        }
    }

    #[test]
    fn sent_on_change_or_when_due() {
        let refresh = Duration::from_secs(900);
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(1);
        let first = snap(8 << 20, "running");
        assert!(first.due(&None, t0, refresh), "the first one always goes");
        let sent: Sent = Some((first.clone(), t0));
        // Noise is not news.
        assert!(!snap(9 << 20, "running").due(&sent, soon, refresh));
        let mut s = first.clone();
        s.battery_pct = 77;
        s.agents[0].trust = 97;
        s.agents[0].energy_mwh = 12;
        assert!(!s.due(&sent, soon, refresh));
        // Changes an operator would see are.
        assert!(snap(12 << 20, "running").due(&sent, soon, refresh));
        assert!(snap(8 << 20, "failed").due(&sent, soon, refresh));
        let mut s = first.clone();
        s.agents[0].denials = 1;
        assert!(s.due(&sent, soon, refresh));
        let mut s = first.clone();
        s.battery_pct = 75;
        assert!(s.due(&sent, soon, refresh));
        let mut s = first.clone();
        s.agents.clear();
        assert!(s.due(&sent, soon, refresh));
        // And everything is, once the last report is old.
        assert!(first.due(&sent, t0 + refresh, refresh));
    }
}
