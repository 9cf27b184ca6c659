//! Energy sampling and battery-aware control: every `energy_period_ms` the supervisor reads
//! each running agent's CPU time (cgroup) and network bytes (eBPF accounting), the device's
//! busy time (`/proc/stat`) and power (the board's sensors, else its power model; on `sim` the
//! simulated battery, stepped first), attributes the period's energy to the agents
//! (`power::attribution`), and acts:
//!
//! - an agent over its `energy` budget gets the budget's action (throttle, freeze, stop) until
//!   its window rolls over;
//! - the battery tier in force (`device.battery`, with hysteresis) applies its action per agent
//!   class; external power or charging lifts it.
//!
//! Holds from budgets, tiers and `on_violation` rules are combined per agent ([`apply`]): an
//! agent is frozen if any of them freezes it and throttled if any throttles it, so lifting one
//! never undoes another. Every transition is audited.

use std::time::{Duration, Instant};

use nanoclaw_proto::audit::AuditKind;
use serde::Serialize;
use serde_json::{Value, json};

use super::{CtxRef, Daemon, now_ms};
use crate::agents::State;
use crate::config::policy::BatteryAction;
use crate::power::attribution::{self, Use};
use crate::power::budget::{Change, Window};
use crate::power::{Reading, Sensor, sim::Sim, tiers};

/// Per-agent energy bookkeeping.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AgentEnergy {
    pub total_mwh: f64,
    pub window: Window,
    /// Power attributed in the last period, mW.
    pub power_mw: f64,
    #[serde(skip)]
    last_cpu_ns: Option<u64>,
    #[serde(skip)]
    last_bytes: Option<u64>,
    /// What the energy budget holds the agent to (until the window rolls over).
    pub hold: Option<BatteryAction>,
}

/// Device-wide state of the sampler.
pub struct Energy {
    pub sensor: Sensor,
    pub sim: Option<Sim>,
    pub last: Reading,
    /// Power used for attribution in the last period (measured or modelled), W.
    pub power_w: f64,
    pub tier: Option<usize>,
    last_busy_ns: Option<u64>,
    last_at: Option<Instant>,
    cores: usize,
}

impl Energy {
    pub fn new(sensor: Sensor, sim: Option<Sim>) -> Energy {
        Energy {
            sensor,
            sim,
            last: Reading::default(),
            power_w: 0.0,
            tier: None,
            last_busy_ns: None,
            last_at: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Busy CPU time of the whole device, ns (`/proc/stat` first line, USER_HZ ticks).
fn device_busy_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0);
    let hz = rustix::param::clock_ticks_per_second();
    Some(busy.saturating_mul(1_000_000_000) / hz.max(1))
}

pub fn spawn(ctx: &CtxRef) {
    let period = Duration::from_millis(ctx.d.borrow().cfg.energy_period_ms.into());
    let c = ctx.clone();
    ctx.ex
        .spawn(async move {
            loop {
                smol::Timer::after(period).await;
                sample(&c);
            }
        })
        .detach();
}

/// One sampling period: measure, attribute, act.
pub fn sample(ctx: &CtxRef) {
    let mut acts: Vec<(String, Act)> = Vec::new();
    {
        let mut guard = ctx.d.borrow_mut();
        let d = &mut *guard;
        let now = Instant::now();
        let busy = device_busy_ns();
        let Some(e) = d.energy.as_mut() else { return };
        let dt_s = e
            .last_at
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        let busy_s = match (e.last_busy_ns, busy) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => 0.0,
        };
        e.last_busy_ns = busy;
        e.last_at = Some(now);
        // Per-agent use in the period (an agent a budget stopped keeps its window running,
        // so it rolls over and the agent starts again).
        let names: Vec<String> = d
            .agents
            .iter()
            .filter(|(_, a)| a.instance.is_some() || a.power_stopped)
            .map(|(n, _)| n.clone())
            .collect();
        let mut uses = Vec::with_capacity(names.len());
        for n in &names {
            let cpu = d.cgroups.cpu_usage_ns(n).ok();
            let bytes = d
                .agents
                .get(n)
                .and_then(|a| a.instance.as_ref()?.egress_cgid)
                .and_then(|cgid| d.egress.as_ref()?.traffic(cgid))
                .map(|t| t.rx_bytes + t.tx_bytes);
            let Some(a) = d.agents.get_mut(n) else {
                continue;
            };
            let en = &mut a.energy;
            let u = Use {
                cpu_s: match (en.last_cpu_ns, cpu) {
                    (Some(x), Some(y)) if y >= x => (y - x) as f64 / 1e9,
                    _ => 0.0,
                },
                bytes: match (en.last_bytes, bytes) {
                    (Some(x), Some(y)) if y >= x => y - x,
                    _ => 0,
                },
            };
            en.last_cpu_ns = cpu;
            en.last_bytes = bytes;
            uses.push(u);
        }
        let model = &d.board.power.model;
        let Some(e) = d.energy.as_mut() else { return };
        let all_bytes: u64 = uses.iter().map(|u| u.bytes).sum();
        let mut dev = attribution::Device {
            dt_s,
            busy_s: busy_s.min(dt_s * e.cores as f64),
            measured_w: None,
            idle_w: model.idle_w,
            core_w: model.core_w,
            j_per_byte: model.default_j_per_byte(),
        };
        // The simulated battery is drained by the model (plus its base load) first, then
        // read back like a real one.
        if let Some(sim) = e.sim.as_mut() {
            if dt_s > 0.0 {
                sim.step(dt_s, dev.modelled_w(all_bytes) + sim.base_w());
            }
            if let Err(err) = sim.publish() {
                crate::log!("nanoclaw: simulated battery: {err}");
            }
            dev.idle_w += sim.base_w();
        }
        e.last = e.sensor.read(now);
        dev.measured_w = e.last.measured_w;
        if dt_s <= 0.0 {
            return;
        }
        let (joules, power) = attribution::attribute(&dev, &uses);
        e.power_w = power;
        let now_ms = now_ms();
        for (n, j) in names.iter().zip(joules) {
            let budget = d.policy.agents.get(n).and_then(|g| g.energy);
            let Some(a) = d.agents.get_mut(n) else {
                continue;
            };
            let mwh = attribution::mwh(j);
            a.energy.total_mwh += mwh;
            a.energy.power_mw = j / dt_s * 1000.0;
            let Some(b) = budget else { continue };
            for change in a.energy.window.add(now_ms, mwh, &b) {
                match change {
                    Change::Tripped => {
                        a.energy.hold = Some(b.action);
                        acts.push((
                            n.clone(),
                            Act::Energy(format!(
                                "energy budget used up: {:.1} mWh of {} mWh in its {} s window; {} until the window ends",
                                a.energy.window.used_mwh, b.budget_mwh, b.window_s, action_name(b.action)
                            )),
                        ));
                    }
                    Change::Released => {
                        a.energy.hold = None;
                        acts.push((
                            n.clone(),
                            Act::Energy(format!(
                                "energy window of {} s rolled over: released",
                                b.window_s
                            )),
                        ));
                    }
                }
            }
        }
        // Battery tiers.
        let rules = d.policy.device.battery.clone();
        let e = d.energy.as_mut().map(|e| (e.last.supplies.clone(), e.tier));
        if let Some((supplies, current)) = e
            && let Some(pct) = supplies.batteries.first().and_then(|b| b.percent())
        {
            let next = tiers::tier(&rules, pct, supplies.powered(), current);
            if next != current {
                if let Some(e) = d.energy.as_mut() {
                    e.tier = next;
                }
                let text = match next {
                    Some(t) => format!(
                        "battery {pct:.0} %: below {} %, tier {t} in force ({})",
                        rules[t].below_percent,
                        if supplies.powered() {
                            "on external power"
                        } else {
                            "on battery"
                        }
                    ),
                    None if supplies.powered() => {
                        format!("battery {pct:.0} %: external power or charging, tiers lifted")
                    }
                    None => format!(
                        "battery {pct:.0} %: above every tier (+{} % margin), tiers lifted",
                        tiers::MARGIN_PCT
                    ),
                };
                d.audit("", AuditKind::Battery, &text, true);
                for (n, a) in d.agents.iter_mut() {
                    let want = tiers::action(&rules, next, a.manifest.class);
                    if want != a.tier_hold {
                        a.tier_hold = want;
                        acts.push((n.clone(), Act::Tier(text.clone())));
                    }
                }
            }
        }
    }
    for (name, why) in acts {
        apply(ctx, &name, &why);
    }
}

/// Applies the holds in force to a freshly started instance.
pub fn reapply(ctx: &CtxRef, name: &str) {
    apply(
        ctx,
        name,
        &Act::Tier("battery tier or energy budget in force at start".into()),
    );
}

/// Why holds changed, for the audit record.
enum Act {
    Energy(String),
    Tier(String),
}

fn action_name(a: BatteryAction) -> &'static str {
    match a {
        BatteryAction::Freeze => "frozen",
        BatteryAction::Throttle => "throttled",
        BatteryAction::Stop => "stopped",
    }
}

/// Brings an agent's cgroup in line with its holds (energy budget, battery tier, rules).
fn apply(ctx: &CtxRef, name: &str, why: &Act) {
    let (kind, why) = match why {
        Act::Energy(w) => (AuditKind::Energy, w.as_str()),
        Act::Tier(w) => (AuditKind::Battery, w.as_str()),
    };
    let mut stop = None;
    let mut start = false;
    {
        let mut guard = ctx.d.borrow_mut();
        let d = &mut *guard;
        let Some(a) = d.agents.get(name) else { return };
        let holds = [a.energy.hold, a.tier_hold];
        let want_stop = holds.contains(&Some(BatteryAction::Stop));
        let want_freeze = holds.contains(&Some(BatteryAction::Freeze)) || a.frozen_by_rule;
        let want_throttle = holds.contains(&Some(BatteryAction::Throttle)) || a.throttled;
        let running = a.instance.is_some();
        let was_frozen = a.state == State::Frozen;
        let eff = a.admission.clone().ok();
        let mut done = Vec::new();
        if want_stop && running {
            stop = Some(format!("{why}: stopping"));
        } else if !want_stop && !running && a.power_stopped {
            start = true;
            done.push("started again");
        }
        if running && !want_stop {
            if want_freeze != was_frozen {
                match d.cgroups.freeze(name, want_freeze) {
                    Ok(()) => done.push(if want_freeze { "frozen" } else { "thawed" }),
                    Err(e) => crate::log!("nanoclaw: {name}: freeze: {e}"),
                }
            }
            if let Some(eff) = &eff {
                let limits = super::lifecycle::limits_for_agent(eff, want_throttle);
                match d.cgroups.set_limits(name, &limits) {
                    Ok(()) if want_throttle => done.push("CPU quota cut to a quarter"),
                    Ok(()) => {}
                    Err(e) => crate::log!("nanoclaw: {name}: throttle: {e}"),
                }
            }
            if let Some(a) = d.agents.get_mut(name) {
                a.state = if want_freeze {
                    State::Frozen
                } else if want_throttle {
                    State::Throttled
                } else {
                    State::Running
                };
            }
        }
        if let Some(a) = d.agents.get_mut(name) {
            if want_stop {
                a.power_stopped = true;
            } else if start {
                a.power_stopped = false;
                a.state = State::Stopped;
            }
        }
        if stop.is_none() {
            let text = if done.is_empty() {
                why.to_owned()
            } else {
                format!("{why}: {}", done.join(", "))
            };
            d.audit(name, kind, &text, true);
        }
    }
    if let Some(text) = stop {
        super::lifecycle::stop(ctx, name, &text, false);
    }
    if start {
        super::lifecycle::start(ctx, name);
    }
}

/// `nanoclaw battery --json`.
pub fn report(d: &Daemon) -> Value {
    let Some(e) = d.energy.as_ref() else {
        return json!({ "available": false });
    };
    let b = e.last.supplies.batteries.first();
    let pct = b.and_then(|b| b.percent());
    let discharging = !e.last.supplies.powered();
    let tte = match (b.and_then(|b| b.energy_wh), discharging) {
        (Some(wh), true) if e.power_w > 0.0 => Some(wh / e.power_w * 3600.0),
        _ => None,
    };
    let agents: Vec<Value> = d
        .agents
        .iter()
        .map(|(n, a)| {
            let budget = d.policy.agents.get(n).and_then(|g| g.energy);
            json!({
                "agent": n,
                "class": a.manifest.class,
                "state": a.state,
                "power_mw": a.energy.power_mw,
                "total_mwh": a.energy.total_mwh,
                "window_mwh": a.energy.window.used_mwh,
                "budget_mwh": budget.map(|b| b.budget_mwh),
                "window_s": budget.map(|b| b.window_s),
                "window_ends_ms": budget.map(|b| a.energy.window.ends_ms(&b)),
                "energy_hold": a.energy.hold,
                "tier_hold": a.tier_hold,
            })
        })
        .collect();
    let rules = &d.policy.device.battery;
    json!({
        "available": true,
        "board": d.board.name,
        "source": e.last.source,
        "measured_w": e.last.measured_w,
        "power_w": e.power_w,
        "battery": b,
        "percent": pct,
        "external_power": e.last.supplies.external_online,
        "charging_or_powered": e.last.supplies.powered(),
        "time_to_empty_s": tte,
        "tier": e.tier.map(|t| json!({"index": t, "below_percent": rules.get(t).map(|r| r.below_percent)})),
        "simulated": e.sim.as_ref().map(|s| json!({"charger": s.charger, "speed": s.speed})),
        "agents": agents,
    })
}

/// `nanoclaw sim set`: change the simulated battery (the `sim` board only).
pub fn sim_set(
    d: &mut Daemon,
    percent: Option<f64>,
    charger: Option<bool>,
    speed: Option<f64>,
) -> Result<Value, String> {
    let Some(sim) = d.energy.as_mut().and_then(|e| e.sim.as_mut()) else {
        return Err(format!(
            "board {} has no simulated battery; `sim set` works on the sim board",
            d.board.name
        ));
    };
    if let Some(p) = percent {
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("charge {p} is outside 0..=100"));
        }
        sim.set_percent(p);
    }
    if let Some(c) = charger {
        sim.charger = c;
    }
    if let Some(s) = speed {
        if !(0.0..=1e6).contains(&s) {
            return Err(format!("speed {s} is outside 0..=1000000"));
        }
        sim.speed = s;
    }
    let (p, c, s) = (sim.percent(), sim.charger, sim.speed);
    if let Err(e) = sim.publish() {
        return Err(format!("publishing the simulated battery: {e}"));
    }
    let text = format!(
        "simulated battery set: {p:.1} %, charger {}, speed {s}×",
        if c { "on" } else { "off" }
    );
    d.audit("", AuditKind::Battery, &text, true);
    Ok(json!({ "percent": p, "charger": c, "speed": s, "result": text }))
}
