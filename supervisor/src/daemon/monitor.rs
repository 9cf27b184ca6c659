//! Syscall monitoring: a learned baseline per agent version and an anomaly rule.
//!
//! The eBPF raw tracepoint `sys_enter` counts every syscall of nanoclaw's agents by
//! (cgroup, number). During the first `syscall_baseline_s` seconds of an agent version's first
//! run the daemon records which syscalls it makes and their highest rate per interval; the
//! baseline is saved under `<state_dir>/baselines/<agent>.json`. Afterwards a syscall outside
//! the baseline, or a rate above ten times (and at least 100 more than) the learned maximum,
//! is audited as `syscall_anomaly`, once per syscall per instance. Syscalls that seccomp
//! refuses never reach the tracepoint; they are seccomp's to report.
//!
//! While the tracepoint is attached every syscall on the device takes the kernel's slower
//! entry path. With `syscall_sampling` in device.json the tracepoint is attached only while
//! an agent learns and for `on_s` seconds of every `every_s` otherwise: the cost shrinks by
//! that share, and anomalies outside the windows go unseen (docs/SECURITY.md).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nanoclaw_proto::audit::AuditKind;
use serde::{Deserialize, Serialize};

use super::{CtxRef, Daemon, now_ms};

/// How often counts are read.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Largest baseline file accepted.
const BASELINE_MAX: u64 = 256 * 1024;

/// A learned baseline: syscall number → highest count seen in one interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub version: String,
    pub syscalls: BTreeMap<u32, u64>,
}

/// Per-agent monitoring state.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub baseline: Baseline,
    /// Learning ends at this time (ms); 0 = the baseline is complete.
    pub learn_until_ms: u64,
    /// Counts at the last read (per instance).
    pub last: BTreeMap<u32, u64>,
    /// Syscalls already reported for this instance.
    pub alerted: BTreeSet<u32>,
}

fn baseline_path(d: &Daemon, agent: &str) -> std::path::PathBuf {
    d.cfg
        .state_dir
        .join("baselines")
        .join(format!("{agent}.json"))
}

/// A manifest's `syscall_profile` (name → calls per second, 0 = any rate) as a baseline of
/// this architecture (most calls per `INTERVAL`), and the names this architecture lacks.
pub fn profile_baseline(profile: &BTreeMap<String, u64>) -> (BTreeMap<u32, u64>, Vec<String>) {
    let mut known = BTreeMap::new();
    let mut unknown = Vec::new();
    for (name, per_s) in profile {
        match crate::sandbox::seccomp::syscall_number(name) {
            Some(nr) => {
                let max = match per_s {
                    0 => u64::MAX,
                    n => n.saturating_mul(INTERVAL.as_secs()),
                };
                known.insert(nr, max);
            }
            None => unknown.push(name.clone()),
        }
    }
    (known, unknown)
}

/// Called when an instance starts: loads the saved baseline of this version, or starts
/// learning one.
pub fn on_start(d: &mut Daemon, agent: &str) {
    let path = baseline_path(d, agent);
    let learn_ms = u64::from(d.cfg.syscall_baseline_s) * 1000;
    let Some(a) = d.agents.get_mut(agent) else {
        return;
    };
    let version = a.manifest.version.clone();
    a.syscalls.last.clear();
    a.syscalls.alerted.clear();
    if let Some(profile) = &a.manifest.syscall_profile {
        // The bundle states its baseline: nothing to learn.
        let (known, unknown) = profile_baseline(profile);
        a.syscalls.baseline = Baseline {
            version,
            syscalls: known,
        };
        a.syscalls.learn_until_ms = 0;
        let text = format!(
            "syscall baseline from the manifest's syscall_profile: {} syscalls{}",
            a.syscalls.baseline.syscalls.len(),
            if unknown.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} unknown on {}: {})",
                    unknown.len(),
                    std::env::consts::ARCH,
                    unknown.join(", ")
                )
            }
        );
        d.audit(agent, AuditKind::Posture, &text, false);
        return;
    }
    let saved = std::fs::metadata(&path)
        .ok()
        .filter(|m| m.len() <= BASELINE_MAX)
        .and_then(|_| std::fs::read(&path).ok())
        .and_then(|b| serde_json::from_slice::<Baseline>(&b).ok())
        .filter(|b| b.version == version);
    match saved {
        Some(b) => {
            a.syscalls.baseline = b;
            a.syscalls.learn_until_ms = 0;
        }
        None if a.syscalls.baseline.version == version && a.syscalls.learn_until_ms == 0 => {}
        None => {
            a.syscalls.baseline = Baseline {
                version,
                syscalls: BTreeMap::new(),
            };
            a.syscalls.learn_until_ms = now_ms() + learn_ms;
        }
    }
}

/// Reads every monitored agent's counts once per `INTERVAL`.
pub fn spawn(ctx: &CtxRef) {
    let monitored = ctx
        .d
        .borrow()
        .egress
        .as_ref()
        .is_some_and(|e| e.monitor().is_ok());
    if !monitored {
        return;
    }
    let c = ctx.clone();
    ctx.ex
        .spawn(async move {
            loop {
                smol::Timer::after(INTERVAL).await;
                tick(&c);
            }
        })
        .detach();
}

fn name_of(nr: u32) -> String {
    crate::sandbox::seccomp::syscall_name(nr).map_or_else(|| format!("#{nr}"), str::to_owned)
}

/// Whether the tracepoint should count during the next interval: always without
/// `syscall_sampling`; with it, while any agent is learning its baseline, and in the first
/// `on_s` seconds of every `every_s`.
fn wanted_active(d: &Daemon, now: u64) -> bool {
    let Some(s) = d.cfg.syscall_sampling else {
        return true;
    };
    let learning = d
        .agents
        .values()
        .any(|a| a.instance.is_some() && a.syscalls.learn_until_ms != 0);
    learning || in_window(now, s.on_s, s.every_s)
}

fn in_window(now_ms: u64, on_s: u32, every_s: u32) -> bool {
    (now_ms / 1000) % u64::from(every_s.max(1)) < u64::from(on_s)
}

fn tick(ctx: &CtxRef) {
    let mut guard = ctx.d.borrow_mut();
    let d = &mut *guard;
    let now = now_ms();
    let mut all = d
        .egress
        .as_ref()
        .map(crate::bpf::Egress::all_syscall_counts)
        .unwrap_or_default();
    let names: Vec<String> = d.agents.keys().cloned().collect();
    for name in names {
        let Some(cgid) = d
            .agents
            .get(&name)
            .and_then(|a| a.instance.as_ref())
            .and_then(|i| i.monitor_cgid)
        else {
            continue;
        };
        let counts = all.remove(&cgid).unwrap_or_default();
        let Some(a) = d.agents.get_mut(&name) else {
            continue;
        };
        let w = &mut a.syscalls;
        let mut findings = Vec::new();
        let learning = w.learn_until_ms != 0;
        for (nr, total) in counts {
            let delta = total.saturating_sub(w.last.get(&nr).copied().unwrap_or(0));
            w.last.insert(nr, total);
            if learning {
                let m = w.baseline.syscalls.entry(nr).or_insert(0);
                *m = (*m).max(delta);
                continue;
            }
            if delta == 0 || w.alerted.contains(&nr) {
                continue;
            }
            match w.baseline.syscalls.get(&nr) {
                None => {
                    w.alerted.insert(nr);
                    findings.push(format!(
                        "syscall {} ({nr}) outside the learned baseline of version {} ({delta} calls in {} s)",
                        name_of(nr),
                        w.baseline.version,
                        INTERVAL.as_secs()
                    ));
                }
                Some(&max) if delta > max.saturating_mul(10).max(max.saturating_add(100)) => {
                    w.alerted.insert(nr);
                    findings.push(format!(
                        "rate of syscall {} ({nr}) jumped: {delta} calls in {} s, at most {max} while learning",
                        name_of(nr),
                        INTERVAL.as_secs()
                    ));
                }
                Some(_) => {}
            }
        }
        let finished = learning && now >= w.learn_until_ms;
        if finished {
            w.learn_until_ms = 0;
        }

        let baseline = w.baseline.clone();
        for f in findings {
            d.audit(&name, AuditKind::SyscallAnomaly, &f, true);
            d.event(&name, crate::config::policy::Event::Anomaly);
        }
        if finished {
            let path = baseline_path(d, &name);
            let saved = crate::agents::persist::write_json_atomic(&path, &baseline, false);
            let text = match saved {
                Ok(()) => format!(
                    "learned the syscall baseline of version {}: {} syscalls",
                    baseline.version,
                    baseline.syscalls.len()
                ),
                Err(e) => format!("learned a syscall baseline but could not save it: {e}"),
            };
            d.audit(&name, AuditKind::Posture, &text, false);
        }
    }
    // The counts of the interval that just ended are in; choose the next one's mode.
    let active = wanted_active(d, now);
    if let Some(e) = d.egress.as_mut()
        && let Err(err) = e.set_monitor_active(active)
    {
        crate::log!("nanoclaw: syscall monitoring: switching the tracepoint: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::in_window;

    #[test]
    fn manifest_profiles_become_baselines() {
        let p: std::collections::BTreeMap<String, u64> = [
            ("read".to_owned(), 100),
            ("write".to_owned(), 0),
            ("no_such_call".to_owned(), 1),
        ]
        .into();
        let (known, unknown) = super::profile_baseline(&p);
        let read = crate::sandbox::seccomp::syscall_number("read").unwrap();
        let write = crate::sandbox::seccomp::syscall_number("write").unwrap();
        assert_eq!(known[&read], 200, "per second → per 2 s interval");
        assert_eq!(known[&write], u64::MAX, "0 = any rate");
        assert_eq!(unknown, ["no_such_call"]);
    }

    #[test]
    fn sampling_windows() {
        // 2 s of every 30 s: seconds 0 and 1 of each cycle.
        let on: Vec<u64> = (0..90)
            .filter(|s| in_window(s * 1000 + 500, 2, 30))
            .collect();
        assert_eq!(on, [0, 1, 30, 31, 60, 61]);
    }
}
