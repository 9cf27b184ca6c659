//! The policy in force: which one at start-up, replacing it on `policy reload` / `policy
//! apply`, and keeping it across restarts.
//!
//! The accepted document (bare or signed, exactly as received) is kept in
//! `<state_dir>/policy/in-force.json`, replaced atomically, so a restarted daemon knows the
//! version in force and never falls back to an older file. A new policy is judged whole
//! (`policy::Judge`), then its difference to the running agents is applied: cgroup limits and
//! egress maps live, everything else by a graceful restart. If a kernel write fails halfway,
//! the writes already made are undone and the previous policy stays in force.

use std::path::{Path, PathBuf};

use nanoclaw_proto::audit::AuditKind;
use serde_json::{Map, Value, json};

use super::{CtxRef, Daemon, DaemonError};
use crate::admission::{self, Effective};
use crate::config::device::DeviceConfig;
use crate::config::master::MasterPolicy;
use crate::policy::diff::{self, Change};
use crate::policy::signed::PublicKey;
use crate::policy::{Accepted, Judge, Refused, may_replace};

/// The fleet key and master policy from device.json, loaded once at start.
pub struct Anchors {
    pub key: Option<PublicKey>,
    pub master: Option<MasterPolicy>,
}

impl Anchors {
    pub fn load(cfg: &DeviceConfig) -> Result<Anchors, DaemonError> {
        let err = |path: &Path, reason: String| DaemonError::Policy {
            path: path.to_path_buf(),
            reason,
        };
        let key = match &cfg.policy_key {
            Some(p) => Some(PublicKey::load(p).map_err(|e| err(p, e.to_string()))?),
            None => None,
        };
        let master = match &cfg.master_policy {
            Some(p) => Some(MasterPolicy::load(p).map_err(|e| err(p, e.to_string()))?),
            None => None,
        };
        Ok(Anchors { key, master })
    }

    pub fn judge<'a>(&'a self, cfg: &'a DeviceConfig, device_memory: u64) -> Judge<'a> {
        Judge {
            key: self.key.as_ref(),
            allow_local: cfg.allow_local_policy,
            master: self.master.as_ref(),
            device_memory,
            base: crate::config::base_dir(&cfg.policy),
        }
    }
}

fn in_force_path(cfg: &DeviceConfig) -> PathBuf {
    cfg.state_dir.join("policy").join("in-force.json")
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    crate::config::read_capped(path, crate::config::policy::MAX_POLICY_BYTES)
        .map_err(|e| e.to_string())
}

/// Chooses the policy at start-up: the newer of the one kept in force and the configured
/// file (the file on a tie). Returns it and warnings to audit once the log is open.
pub fn initial(
    cfg: &DeviceConfig,
    anchors: &Anchors,
    device_memory: u64,
) -> Result<(Accepted, Vec<String>), DaemonError> {
    let judge = anchors.judge(cfg, device_memory);
    let kept_path = in_force_path(cfg);
    let kept = kept_path
        .exists()
        .then(|| read(&kept_path).and_then(|b| judge.accept(&b).map_err(|e| e.to_string())));
    let file = read(&cfg.policy).and_then(|b| judge.accept(&b).map_err(|e| e.to_string()));
    let mut warnings = Vec::new();
    let chosen = match (kept, file) {
        (Some(Ok(k)), Ok(f)) => match may_replace(&k, &f) {
            Ok(()) => f,
            Err(e) => {
                warnings.push(format!(
                    "{}: {e}; keeping version {} in force",
                    cfg.policy.display(),
                    k.policy.version
                ));
                k
            }
        },
        (Some(Ok(k)), Err(e)) => {
            warnings.push(format!(
                "{}: {e}; keeping version {} in force",
                cfg.policy.display(),
                k.policy.version
            ));
            k
        }
        (kept, Ok(f)) => {
            if let Some(Err(e)) = kept {
                warnings.push(format!("{}: {e}; ignored", kept_path.display()));
            }
            f
        }
        (_, Err(e)) => {
            return Err(DaemonError::Policy {
                path: cfg.policy.clone(),
                reason: e,
            });
        }
    };
    Ok((chosen, warnings))
}

/// Keeps `a` as the policy in force (atomically, durably).
fn persist(cfg: &DeviceConfig, a: &Accepted) -> std::io::Result<()> {
    let path = in_force_path(cfg);
    if std::fs::read(&path).is_ok_and(|b| b == a.bytes) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::agents::persist::write_file_atomic(&path, &a.bytes, true)
}

/// Makes the start-up choice durable (called once the state directory exists).
pub fn keep(d: &mut Daemon, a: &Accepted) {
    if let Err(e) = persist(&d.cfg, a) {
        d.audit(
            "",
            AuditKind::PolicyRejected,
            &format!("cannot keep the policy in force in the state directory: {e}"),
            true,
        );
    }
}

/// `policy reload`: re-reads the configured file (and the agents directory).
pub fn reload(ctx: &CtxRef) -> Result<Value, String> {
    let t0 = std::time::Instant::now();
    let path = ctx.d.borrow().cfg.policy.clone();
    let bytes = match read(&path) {
        Ok(b) => b,
        Err(e) => return Err(reject(ctx, &path.display().to_string(), &e)),
    };
    replace(ctx, &bytes, &path.display().to_string(), true, t0)
}

/// `policy apply FILE`: a policy document from elsewhere (a signed one from the fleet).
pub fn apply_file(ctx: &CtxRef, path: &Path) -> Result<Value, String> {
    let t0 = std::time::Instant::now();
    let bytes = match read(path) {
        Ok(b) => b,
        Err(e) => return Err(reject(ctx, &path.display().to_string(), &e)),
    };
    replace(ctx, &bytes, &path.display().to_string(), false, t0)
}

fn reject(ctx: &CtxRef, source: &str, why: &str) -> String {
    let mut d = ctx.d.borrow_mut();
    let text = format!(
        "{source}: {why}; keeping policy version {}",
        d.policy.version
    );
    d.audit("", AuditKind::PolicyRejected, &text, true);
    text
}

/// What a new policy does to one agent.
enum Step {
    Live(Change, Effective),
    Restart(Change, Effective),
    Stop(String),
    Admit(Result<Effective, String>),
}

/// Judges `bytes`, then applies the difference to every agent; see the module doc.
pub fn replace(
    ctx: &CtxRef,
    bytes: &[u8],
    source: &str,
    rescan: bool,
    t0: std::time::Instant,
) -> Result<Value, String> {
    let accepted = {
        let d = ctx.d.borrow();
        let judged = d.anchors.judge(&d.cfg, d.device_memory).accept(bytes);
        judged.and_then(|a| {
            may_replace(&d.in_force, &a)?;
            Ok::<_, Refused>(a)
        })
    };
    let accepted = match accepted {
        Ok(a) => a,
        Err(e) => return Err(reject(ctx, source, &e.to_string())),
    };
    if rescan {
        let mut d = ctx.d.borrow_mut();
        // Registered only: `plan` admits every agent against the new policy below.
        if let Err(e) = super::lifecycle::rescan(&mut d, false) {
            let t = e.to_string();
            d.audit("", AuditKind::SandboxError, &t, true);
        }
    }
    let new = accepted.policy.clone();
    let (steps, previous) = {
        let d = ctx.d.borrow();
        (plan(&d, &new), d.policy.version)
    };
    // Kernel state first, all or nothing.
    let judged_us = t0.elapsed().as_micros() as u64;
    if let Err((agent, field, e)) = apply_live(ctx, &steps) {
        let why = format!(
            "applying version {} failed and was rolled back: agents.{agent}.{field}: {e}",
            new.version
        );
        return Err(reject(ctx, source, &why));
    }
    let applied_us = t0.elapsed().as_micros() as u64;
    let mut report = Map::new();
    let mut restarts = Vec::new();
    let mut stops = Vec::new();
    let mut refused = Vec::new();
    {
        let mut guard = ctx.d.borrow_mut();
        let d = &mut *guard;
        d.policy = new;
        for (name, step) in steps {
            let Some(a) = d.agents.get_mut(&name) else {
                continue;
            };
            let entry = match step {
                Step::Live(c, eff) => {
                    if c.live.contains(&"on_violation") {
                        a.rules.rules_changed();
                    }
                    if !c.narrowed.is_empty() {
                        a.reason = format!(
                            "running narrowed to its grant ({}): its manifest requests more than policy version {} grants; a fresh start will be refused until they match",
                            c.narrowed.join(", "),
                            accepted.policy.version
                        );
                    }
                    a.admission = Ok(eff);
                    (!c.is_empty()).then(|| json!(c))
                }
                Step::Restart(c, eff) => {
                    a.admission = Ok(eff);
                    restarts.push((name.clone(), c.restart.join(", ")));
                    Some(json!(c))
                }
                Step::Stop(why) => {
                    a.admission = Err(why.clone());
                    stops.push((name.clone(), why.clone()));
                    Some(json!({ "stop": why }))
                }
                Step::Admit(r) => {
                    let was_refused = a.admission.is_err();
                    if let Err(e) = &r {
                        a.state = crate::agents::State::Failed;
                        a.reason = format!("admission refused: {e}");
                        refused.push((name.clone(), e.clone()));
                    } else if was_refused
                        && a.state == crate::agents::State::Failed
                        && a.reason.starts_with("admission")
                    {
                        a.state = crate::agents::State::Stopped;
                    }
                    let entry = match &r {
                        Ok(_) if was_refused => Some(json!({ "admitted": true })),
                        Err(e) => Some(json!({ "refused": e })),
                        Ok(_) => None,
                    };
                    a.admission = r;
                    entry
                }
            };
            if let Some(e) = entry {
                report.insert(name, e);
            }
        }
        for (name, e) in &refused {
            d.audit(name, AuditKind::AdmissionDenied, e, true);
        }
        let summary = summarize(&report);
        let text = format!(
            "policy version {} ({}) from {source} replaces version {previous}{summary}",
            accepted.policy.version, accepted.origin
        );
        d.audit("", AuditKind::PolicyReload, &text, true);
        if let Err(e) = persist(&d.cfg, &accepted) {
            d.audit(
                "",
                AuditKind::PolicyRejected,
                &format!("cannot keep the policy in force in the state directory: {e}"),
                true,
            );
        }
        super::grants::policy_changed(d);
        d.in_force = accepted.clone();
    }
    for (name, why) in &stops {
        super::lifecycle::stop(ctx, name, &format!("policy reload: {why}"), false);
    }
    for (name, fields) in restarts {
        let c = ctx.clone();
        super::lifecycle::stop(
            ctx,
            &name,
            &format!("policy reload changes {fields}; restarting to apply"),
            false,
        );
        ctx.ex
            .spawn(async move {
                super::lifecycle::wait_down(&c, &name).await;
                super::lifecycle::start(&c, &name);
            })
            .detach();
    }
    super::lifecycle::start_all(ctx);
    super::violations::tick(ctx);
    Ok(json!({
        "version": accepted.policy.version,
        "previous": previous,
        "origin": accepted.origin.to_string(),
        "agents": report,
        // From the request (the file read included) to every live kernel write done.
        "judged_us": judged_us,
        "applied_us": applied_us,
    }))
}

/// `; a: memory, network live; b: restart for syscalls` (or nothing when nothing changed).
fn summarize(report: &Map<String, Value>) -> String {
    let parts: Vec<String> = report
        .iter()
        .map(|(n, v)| {
            let list = |k: &str| {
                v.get(k).and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
            };
            let narrowed = list("narrowed")
                .map(|x| format!(" (narrowed to the grant: {x})"))
                .unwrap_or_default();
            match (list("live"), list("restart")) {
                (Some(l), Some(r)) => format!("{n}: {l} live, restart for {r}{narrowed}"),
                (Some(l), None) => format!("{n}: {l} live{narrowed}"),
                (None, Some(r)) => format!("{n}: restart for {r}{narrowed}"),
                (None, None) => format!("{n}: {v}"),
            }
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("; {}", parts.join("; "))
    }
}

/// What the new policy means for each agent (no side effects).
fn plan(d: &Daemon, new: &crate::config::policy::Policy) -> Vec<(String, Step)> {
    d.agents
        .iter()
        .map(|(name, a)| {
            let admitted = match &a.instance {
                Some(_) => admission::admit_running(&a.manifest, new),
                None => admission::admit(&a.manifest, new).map(|e| (e, Vec::new())),
            }
            .map_err(|e| e.to_string());
            let step = match (&a.instance, &a.admission, admitted) {
                (Some(_), _, Err(e)) => Step::Stop(format!("no longer admitted: {e}")),
                (Some(inst), Ok(old), Ok((eff, narrowed))) => {
                    let mut c =
                        diff::diff(old, &eff, d.policy.agents.get(name), new.agents.get(name));
                    c.narrowed = narrowed;
                    // Network grants need egress control, which an agent started without
                    // network (empty namespace) does not have: restart it under control.
                    let net_grants = new.agents.get(name).is_some_and(|g| {
                        g.capabilities()
                            .iter()
                            .any(|c| matches!(c, crate::config::policy::Capability::Net(_)))
                    });
                    if inst.egress_cgid.is_none()
                        && ((net_grants && c.live.contains(&"grantable")) || c.network())
                        && d.egress.is_some()
                    {
                        c.restart.push("network");
                    }
                    if let Some(why) = super::lifecycle::missing_requirement(d, &eff) {
                        Step::Stop(why)
                    } else if c.restart.is_empty() {
                        Step::Live(c, eff)
                    } else {
                        Step::Restart(c, eff)
                    }
                }
                (_, _, r) => Step::Admit(r.map(|(e, _)| e)),
            };
            (name.clone(), step)
        })
        .collect()
}

/// Writes the live changes to the kernel; on the first failure undoes what was written and
/// returns (agent, field, error).
fn apply_live(
    ctx: &CtxRef,
    steps: &[(String, Step)],
) -> Result<(), (String, &'static str, String)> {
    let mut guard = ctx.d.borrow_mut();
    let d = &mut *guard;
    let mut done: Vec<(String, Effective, bool, bool)> = Vec::new();
    let mut failure = None;
    for (name, step) in steps {
        let Step::Live(c, eff) = step else { continue };
        let Some(a) = d.agents.get(name) else {
            continue;
        };
        let (Ok(old), Some(inst)) = (a.admission.clone(), a.instance.as_ref()) else {
            continue;
        };
        let (throttled, cgid) = (a.throttled, inst.egress_cgid);
        if c.limits() {
            let limits = super::lifecycle::limits_for_agent(eff, throttled);
            if let Err(e) = d.cgroups.set_limits(name, &limits) {
                failure = Some((name.clone(), field_of(c), e.to_string()));
                // A partial write of this agent's limits is undone with the rest.
                done.push((name.clone(), old, true, false));
                break;
            }
        }
        if c.network()
            && let Some(cgid) = cgid
            && let Err(e) = super::egress::update(d, cgid, eff)
        {
            failure = Some((name.clone(), "network", e));
            done.push((name.clone(), old, c.limits(), true));
            break;
        }
        done.push((name.clone(), old, c.limits(), c.network()));
    }
    let Some(f) = failure else {
        return Ok(());
    };
    for (name, old, limits, network) in done.into_iter().rev() {
        let Some(a) = d.agents.get(&name) else {
            continue;
        };
        let (throttled, cgid) = (a.throttled, a.instance.as_ref().and_then(|i| i.egress_cgid));
        if limits
            && let Err(e) = d
                .cgroups
                .set_limits(&name, &super::lifecycle::limits_for_agent(&old, throttled))
        {
            crate::log!("nanoclaw: {name}: restoring limits after a failed reload: {e}");
        }
        if network
            && let Some(cgid) = cgid
            && let Err(e) = super::egress::update(d, cgid, &old)
        {
            crate::log!("nanoclaw: {name}: restoring egress rules after a failed reload: {e}");
        }
    }
    Err(f)
}

/// The first limit field a change touches (for the failure message).
fn field_of(c: &Change) -> &'static str {
    c.live
        .iter()
        .copied()
        .find(|f| matches!(*f, "memory" | "cpus" | "pids"))
        .unwrap_or("memory")
}
