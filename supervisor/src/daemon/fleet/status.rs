//! The snapshot a device sends the fleet once per session (protocol 2, `DeviceMsg::Status`):
//! battery, posture and each agent's state, memory, energy, trust and denials. It is taken
//! when the session starts, so the session borrows it without touching the daemon again.

use nanoclaw_proto::sync::{AgentStatus, NO_BATTERY, Status, records};

use crate::config::policy::Event;
use crate::daemon::Daemon;
use crate::daemon::now_ms;

/// Agents' records are cut off beyond this (a frame carries at most 64 KiB).
const AGENTS_BYTES: usize = 32 * 1024;

pub struct Snapshot {
    battery_pct: u8,
    external_power: bool,
    posture: String,
    degraded: bool,
    n: u16,
    agents: Vec<u8>,
}

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
        let levels = d.posture.levels();
        let posture = levels
            .iter()
            .map(|(m, l)| format!("{m}={l}"))
            .collect::<Vec<_>>()
            .join(" ");
        let degraded = d.posture.degraded();
        let (now, mut n, mut agents) = (now_ms(), 0u16, vec![0u8; AGENTS_BYTES]);
        let mut used = 0;
        let mut one = [0u8; 512];
        for (name, a) in &d.agents {
            let mem = a
                .instance
                .as_ref()
                .and_then(|_| d.cgroups.memory(name).ok());
            let rec = AgentStatus {
                name,
                state: a.state.as_str(),
                restarts: a.restarts,
                memory_bytes: mem.map_or(0, |m| m.current),
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
            };
            let Ok(bytes) = postcard::to_slice(&rec, &mut one) else {
                continue;
            };
            if !records::push(&mut agents, &mut used, bytes) || n == u16::MAX {
                break;
            }
            n += 1;
        }
        agents.truncate(used);
        Snapshot {
            battery_pct,
            external_power,
            posture,
            degraded,
            n,
            agents,
        }
    }

    pub fn status(&self) -> Status<'_> {
        Status {
            battery_pct: self.battery_pct,
            external_power: self.external_power,
            posture: &self.posture,
            degraded: self.degraded,
            n: self.n,
            agents: &self.agents,
        }
    }
}
