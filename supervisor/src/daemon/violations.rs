//! Acting on `on_violation` rules: every event an agent causes is noted here, the pure
//! [`Tracker`](crate::policy::rules::Tracker) says which rules fire, and this module carries
//! out their actions. Actions are idempotent (revoking an already revoked network changes
//! nothing) and every firing is audited with the rule that fired.

use nanoclaw_proto::audit::AuditKind;

use super::{CtxRef, Daemon, now_ms};
use crate::agents::State;
use crate::config::policy::{Event, ViolationAction, ViolationRule};

/// Records that `agent` caused `event` and runs the actions of the rules that fire.
pub fn note(ctx: &CtxRef, agent: &str, event: Event) {
    let fired: Vec<(usize, ViolationRule)> = {
        let mut guard = ctx.d.borrow_mut();
        let d = &mut *guard;
        let rules = d
            .policy
            .agents
            .get(agent)
            .map(|g| g.on_violation.clone())
            .unwrap_or_default();
        let Some(a) = d.agents.get_mut(agent) else {
            return;
        };
        a.events[event as usize] += 1;
        let hits = a.rules.record(now_ms(), event, &rules);
        hits.into_iter().map(|i| (i, rules[i])).collect()
    };
    for (i, rule) in fired {
        act(ctx, agent, i, &rule);
    }
}

/// Carries out one fired rule.
fn act(ctx: &CtxRef, agent: &str, index: usize, rule: &ViolationRule) {
    let what = format!(
        "agents.{agent}.on_violation[{index}] ({}) fired: {}",
        rule.describe(),
        rule.action
    );
    let stop = {
        let mut guard = ctx.d.borrow_mut();
        let d = &mut *guard;
        let outcome = match rule.action {
            ViolationAction::Alert => Ok("alert only".to_owned()),
            ViolationAction::RevokeNetwork => revoke_network(d, agent),
            ViolationAction::Throttle => throttle(d, agent),
            ViolationAction::Freeze => freeze(d, agent),
            ViolationAction::Stop => {
                Ok("stopping; it stays down until an operator starts it".into())
            }
            ViolationAction::Quarantine => {
                if let Some(a) = d.agents.get_mut(agent) {
                    a.quarantined = true;
                    if a.instance.is_none() {
                        a.state = State::Quarantined;
                        a.held = true;
                    }
                }
                Ok(format!(
                    "quarantined: stopped and not started again until `nanoclaw clear {agent}`"
                ))
            }
        };
        let text = match outcome {
            Ok(t) => format!("{what}: {t}"),
            Err(e) => format!("{what}: failed: {e}"),
        };
        if let Some(a) = d.agents.get_mut(agent) {
            a.reason = text.clone();
        }
        d.audit(agent, AuditKind::Violation, &text, true);
        if rule.action == ViolationAction::Quarantine {
            super::lifecycle::persist_agent(d, agent);
        }
        matches!(
            rule.action,
            ViolationAction::Stop | ViolationAction::Quarantine
        )
        .then_some(text)
    };
    if let Some(text) = stop {
        super::lifecycle::stop(ctx, agent, &text, true);
    }
}

fn revoke_network(d: &mut Daemon, agent: &str) -> Result<String, String> {
    let Some(a) = d.agents.get_mut(agent) else {
        return Err("no such agent".into());
    };
    if a.network_revoked {
        return Ok("network already revoked".into());
    }
    a.network_revoked = true;
    let cgid = a.instance.as_ref().and_then(|i| i.egress_cgid);
    match (cgid, d.egress.as_mut()) {
        (Some(cgid), Some(e)) => {
            let taken = e.clear_rules(cgid).map_err(|e| e.to_string())?;
            super::egress::bank_uses(d, agent, taken);
        }
        _ => return Ok("no network to revoke (empty network namespace)".into()),
    }
    Ok("network revoked until the agent is restarted".into())
}

/// Cuts the CPU quota to a quarter of the grant (at least the kernel minimum).
fn throttle(d: &mut Daemon, agent: &str) -> Result<String, String> {
    let Some(a) = d.agents.get_mut(agent) else {
        return Err("no such agent".into());
    };
    if a.throttled {
        return Ok("already throttled".into());
    }
    let Ok(eff) = a.admission.clone() else {
        return Err("not admitted".into());
    };
    a.throttled = true;
    if a.instance.is_none() {
        return Ok("throttled from its next start".into());
    }
    a.state = State::Throttled;
    let limits = super::lifecycle::limits_for_agent(&eff, true);
    d.cgroups
        .set_limits(agent, &limits)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "CPU quota cut to {} µs per {} µs until the agent is restarted",
        limits.cpu_quota_us.unwrap_or_default(),
        limits.cpu_period_us
    ))
}

fn freeze(d: &mut Daemon, agent: &str) -> Result<String, String> {
    let running = d.agents.get(agent).is_some_and(|a| a.instance.is_some());
    if !running {
        return Ok("not running; nothing to freeze".into());
    }
    if d.agents
        .get(agent)
        .is_some_and(|a| a.state == State::Frozen)
    {
        return Ok("already frozen".into());
    }
    d.cgroups.freeze(agent, true).map_err(|e| e.to_string())?;
    if let Some(a) = d.agents.get_mut(agent) {
        a.state = State::Frozen;
        a.frozen_by_rule = true;
    }
    Ok("frozen".into())
}

/// Acts on the events noted with `Daemon::event`.
pub fn drain(ctx: &CtxRef) {
    let events = std::mem::take(&mut ctx.d.borrow_mut().pending_events);
    for (agent, e) in events {
        note(ctx, &agent, e);
    }
}

/// Re-checks `trust_below` rules of every agent (scores recover with time).
pub fn tick(ctx: &CtxRef) {
    let mut fired = Vec::new();
    {
        let mut guard = ctx.d.borrow_mut();
        let d = &mut *guard;
        let now = now_ms();
        // Disjoint fields: the rules are borrowed from the policy, not copied per tick.
        let policy = &d.policy;
        for (name, a) in d.agents.iter_mut() {
            let Some(rules) = policy.agents.get(name).map(|g| &g.on_violation) else {
                continue;
            };
            for i in a.rules.evaluate(now, None, rules) {
                fired.push((name.clone(), i, rules[i]));
            }
        }
    }
    for (name, i, rule) in fired {
        act(ctx, &name, i, &rule);
    }
}
