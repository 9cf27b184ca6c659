//! The daemon's side of eBPF egress control: probing at start-up, attaching before an agent
//! starts, live rule updates, and turning ring-buffer denials into audit records.

use std::path::{Path, PathBuf};

use nanoclaw_proto::audit::AuditKind;

use std::cell::RefCell;
use std::rc::Rc;

use super::ratelimit::Limiter;
use super::{CtxRef, Daemon, now_ms};
use crate::admission::Effective;
use crate::bpf::{Denial, Egress};
use crate::cgroup::Layout;

/// Denials audited per agent per second; the rest are counted into one summary record.
pub const DENIALS_PER_SECOND: u32 = 10;

/// The cgroup2 mount of `layout` (where BPF cgroup programs attach).
pub(super) fn cgroup2_root(layout: &Layout) -> Option<&Path> {
    match layout {
        Layout::V2 { root } => Some(root),
        Layout::V1 { unified, .. } => unified.as_deref(),
    }
}

/// Loads the egress programs and proves they attach, on a scratch cgroup of our subtree.
/// Returns them (or `None`) and the posture line.
pub fn init(layout: &Layout, subtree: &str, syscall_monitor: bool) -> (Option<Egress>, String) {
    let Some(root) = cgroup2_root(layout) else {
        return (
            None,
            "unavailable: no cgroup2 hierarchy to attach to".into(),
        );
    };
    let probe_dir: PathBuf = root.join(subtree).join("egress-probe");
    let result = Egress::load(subtree, syscall_monitor).and_then(|mut e| {
        std::fs::create_dir_all(&probe_dir).map_err(|source| crate::bpf::BpfError::Cgroup {
            path: probe_dir.clone(),
            source,
        })?;
        let r = e.probe(&probe_dir);
        let _ = std::fs::remove_dir(&probe_dir);
        if r.is_err() {
            // Nothing of ours may stay pinned when egress control is not used.
            e.unpin_all();
        }
        r.map(|()| e)
    });
    match result {
        Ok(e) => (
            Some(e),
            "bpf allowlist (cgroup/connect4, connect6, sendmsg4, sendmsg6)".into(),
        ),
        Err(err) => (None, format!("unavailable: {err}")),
    }
}

/// What an agent's network looks like for one start.
pub struct Plan {
    pub host_network: bool,
    pub cgid: Option<u64>,
    pub posture: String,
}

/// Before an agent starts: with a network grant and working egress control, attach the
/// programs to its cgroup and load its rules (it then shares the host network namespace);
/// otherwise it gets an empty network namespace. An attach failure is an error: the agent
/// must not start with less than the posture says.
pub fn prepare(d: &mut Daemon, name: &str, eff: &Effective) -> Result<Plan, String> {
    if eff.network.is_empty() && !net_grantable(d, name) {
        return Ok(Plan {
            host_network: false,
            cgid: None,
            posture: "none (empty network namespace)".into(),
        });
    }
    let dir = d.cgroups.unified_dir(name);
    if d.egress.is_none() {
        return Ok(Plan {
            host_network: false,
            cgid: None,
            posture: format!(
                "none: {} endpoint(s) granted but egress control is {}; the agent runs without network",
                eff.network.len(),
                d.posture.egress
            ),
        });
    };
    let dir = dir.ok_or("the agent has no cgroup2 directory to attach egress control to")?;
    // Names not resolved yet are allowed as soon as the refresh task has their addresses.
    let endpoints = rules(d, eff);
    d.names.wake();
    let Some(egress) = d.egress.as_mut() else {
        return Err("egress control is unavailable".into());
    };
    let cgid = egress
        .attach(name, &dir)
        .and_then(|cgid| egress.set_rules(cgid, &endpoints).map(|()| cgid))
        .map_err(|e| format!("egress control: {e}"))?;
    Ok(Plan {
        host_network: true,
        cgid: Some(cgid),
        posture: allowlist_posture(eff),
    })
}

/// How an agent with egress control is held, for `status` and the start record.
pub fn allowlist_posture(eff: &Effective) -> String {
    let entries: Vec<String> = eff
        .network
        .iter()
        .take(4)
        .map(ToString::to_string)
        .collect();
    match eff.network.len() {
        0 => "egress allowlist (bpf): empty until a grant token opens an entry".into(),
        n if n <= 4 => format!("egress allowlist (bpf): {}", entries.join(", ")),
        n => format!(
            "egress allowlist (bpf): {n} entries ({}, ...)",
            entries.join(", ")
        ),
    }
}

fn summary(n: u32) -> String {
    format!("{n} more denied connections in the last second (rate-limited)")
}

/// After an agent's instance is gone: detach its programs and forget its rules (their use
/// counts are kept with the agent).
pub fn release(d: &mut Daemon, name: &str, cgid: Option<u64>) {
    if let Some(e) = d.egress.as_mut() {
        let taken = e.detach(name, cgid);
        bank_uses(d, name, taken);
    }
}

/// Adds the use counts of rules that are gone to the agent's totals.
pub fn bank_uses(d: &mut Daemon, name: &str, taken: Vec<(crate::config::manifest::Endpoint, u64)>) {
    if let Some(a) = d.agents.get_mut(name) {
        for (e, n) in taken {
            *a.network_use.entry(e.to_string()).or_default() += n;
        }
    }
}

/// Connects and datagrams each egress rule of `a` allowed since the daemon started, by rule
/// (`10.0.0.5:6379/tcp`); a rule in force that was never used counts 0. `live` is
/// [`crate::bpf::Egress::rule_uses`], read once for all agents.
pub fn network_use(
    a: &crate::agents::Agent,
    live: &std::collections::HashMap<u64, Vec<(crate::config::manifest::Endpoint, u64)>>,
) -> std::collections::BTreeMap<String, u64> {
    let mut m = a.network_use.clone();
    let cgid = a.instance.as_ref().and_then(|i| i.egress_cgid);
    for (e, n) in cgid.and_then(|cg| live.get(&cg)).into_iter().flatten() {
        *m.entry(e.to_string()).or_default() += n;
    }
    m
}

/// Whether the policy lets `agent` be granted network access at run time (it then starts
/// under egress control even with an empty list, so a grant can open it live).
pub fn net_grantable(d: &Daemon, agent: &str) -> bool {
    d.policy.agents.get(agent).is_some_and(|g| {
        g.capabilities()
            .iter()
            .any(|c| matches!(c, crate::config::policy::Capability::Net(_)))
    })
}

/// The endpoints an agent may reach now: its admitted network (names resolved) plus its
/// granted capabilities, or nothing once a rule revoked its network.
pub fn rules(d: &Daemon, eff: &Effective) -> Vec<crate::config::manifest::Endpoint> {
    if d.agents.get(&eff.name).is_some_and(|a| a.network_revoked) {
        return Vec::new();
    }
    let mut v = super::names::endpoints(d, eff);
    v.extend(d.grants.endpoints(&eff.name, now_ms() / 1000));
    v
}

/// Applies new rules to a running agent (policy reload): effective on its next connect.
pub fn update(d: &mut Daemon, cgid: u64, eff: &Effective) -> Result<(), String> {
    let endpoints = rules(d, eff);
    d.names.wake();
    match d.egress.as_mut() {
        Some(e) => e.set_rules(cgid, &endpoints).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Reads denials from the ring buffer and audits them, at most `DENIALS_PER_SECOND` per
/// agent per second plus one summary of the rest.
pub fn spawn_denial_reader(ctx: &CtxRef) {
    let taken = ctx.d.borrow_mut().egress.as_mut().map(Egress::take_denials);
    let ring = match taken {
        Some(Ok(x)) => x,
        Some(Err(e)) => {
            crate::log!("nanoclaw: egress denials will not be audited: {e}");
            return;
        }
        None => return,
    };
    let limiter = Rc::new(RefCell::new(Limiter::new(DENIALS_PER_SECOND)));
    let l2 = limiter.clone();
    super::rings::spawn(
        ctx,
        "egress denials",
        ring,
        move |c, item| {
            if let Some(den) = Denial::parse(item) {
                record(c, &den, &mut limiter.borrow_mut());
                let agent = agent_of(&c.d.borrow(), den.cgid);
                if let Some(agent) = agent {
                    super::violations::note(c, &agent, crate::config::policy::Event::DeniedConnect);
                }
            }
        },
        move |c| flush_summaries(c, &mut l2.borrow_mut()),
    );
}

fn agent_of(d: &Daemon, cgid: u64) -> Option<String> {
    d.agents
        .iter()
        .find(|(_, a)| a.last_egress_cgid == Some(cgid))
        .map(|(n, _)| n.clone())
}

fn record(ctx: &CtxRef, den: &Denial, limiter: &mut Limiter) {
    let mut d = ctx.d.borrow_mut();
    let agent = agent_of(&d, den.cgid).unwrap_or_default();
    let (closed, admit) = limiter.admit(den.cgid, now_ms());
    if let Some(n) = closed {
        d.audit(&agent, AuditKind::DeniedConnect, &summary(n), true);
    }
    if !admit {
        return;
    }
    d.audit(
        &agent,
        AuditKind::DeniedConnect,
        &format!(
            "{} to {}/{} denied by the egress allowlist: not in requests.network (granted by agents.{agent}.network)",
            den.op, den.dest, den.proto
        ),
        true,
    );
}

fn flush_summaries(ctx: &CtxRef, limiter: &mut Limiter) {
    let mut d = ctx.d.borrow_mut();
    for (cgid, n) in limiter.expire(now_ms()) {
        let agent = agent_of(&d, cgid).unwrap_or_default();
        d.audit(&agent, AuditKind::DeniedConnect, &summary(n), true);
    }
}
