//! Re-adopting agents that a previous supervisor (killed, crashed, upgraded) left running.
//!
//! An agent is taken over only when all three agree: its cgroup has processes, its run record
//! names a PID in that cgroup, and that PID's start time matches the record (so a recycled PID
//! is never mistaken for it). Anything else found in our cgroups is a leftover we started
//! ourselves earlier: it is killed and its cgroup removed, so no agent ever runs twice.

use std::rc::Rc;

use nanoclaw_proto::audit::AuditKind;

use super::CtxRef;
use super::lifecycle::{RunRecord, proc_start_ticks, watch};
use crate::agents::{Instance, State};

pub fn adopt_or_clean(ctx: &CtxRef) {
    let existing = match ctx.d.borrow().cgroups.list() {
        Ok(l) => l,
        Err(e) => {
            crate::log!("nanoclaw: listing agent cgroups: {e}");
            return;
        }
    };
    for name in existing {
        let adopted = try_adopt(ctx, &name);
        if !adopted {
            let mut d = ctx.d.borrow_mut();
            let procs = d.cgroups.procs(&name).unwrap_or_default();
            if !procs.is_empty() {
                let _ = d.cgroups.kill_all(&name);
                d.audit(
                    &name,
                    AuditKind::Exit,
                    &format!(
                        "killed {} leftover process(es) of a previous supervisor that could not be re-adopted",
                        procs.len()
                    ),
                    true,
                );
            }
            if let Err(e) = d.cgroups.remove(&name) {
                crate::log!("nanoclaw: removing stale cgroup {name}: {e}");
            }
            let _ = std::fs::remove_file(d.run_dir().join(format!("{name}.json")));
        }
    }
}

fn try_adopt(ctx: &CtxRef, name: &str) -> bool {
    let adopted = {
        let mut guard = ctx.d.borrow_mut();
        adopt_locked(&mut guard, name)
    };
    match adopted {
        Some((generation, pidfd)) => {
            // Take the log pipe back from the init, which keeps its read end for exactly this.
            let log = rustix::process::pidfd_getfd(
                pidfd.get_ref(),
                crate::sandbox::LOG_READ_FD,
                rustix::process::PidfdGetfdFlags::empty(),
            )
            .map_err(|e| crate::log!("nanoclaw: {name}: recovering the output pipe: {e}"))
            .ok();
            watch(ctx, name, generation, pidfd, log);
            // A new socket in the directory the agent already sees at /run.
            let task = super::agentsock::rebind(ctx, name);
            super::agentsock::keep(ctx, name, task);
            true
        }
        None => false,
    }
}

type Adopted = (u64, Rc<smol::Async<std::os::fd::OwnedFd>>);

fn adopt_locked(d: &mut super::Daemon, name: &str) -> Option<Adopted> {
    let a = d.agents.get(name)?;
    let eff = match a.admission.clone() {
        Ok(e) => e,
        // Narrowed by a reload before the restart: still within the policy, keep it running.
        Err(_) => {
            let (e, narrowed) = crate::admission::admit_running(&a.manifest, &d.policy).ok()?;
            let text = format!(
                "runs narrowed to its grant ({}): its requests exceed the policy",
                narrowed.join(", ")
            );
            let a = d.agents.get_mut(name)?;
            a.admission = Ok(e.clone());
            d.audit(name, AuditKind::Posture, &text, true);
            e
        }
    };
    let path = d.run_dir().join(format!("{name}.json"));
    let bytes = std::fs::read(&path).ok()?;
    let rec = serde_json::from_slice::<RunRecord>(&bytes).ok()?;
    let procs = d.cgroups.procs(name).unwrap_or_default();
    if !procs.contains(&rec.pid) || proc_start_ticks(rec.pid) != Some(rec.start_ticks) {
        return None;
    }
    let pid = rustix::process::Pid::from_raw(rec.pid)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    let pidfd = smol::Async::new(pidfd).ok()?;
    // Budgets are re-applied from the current policy: enforcement never lapses across restarts.
    if let Err(e) = d
        .cgroups
        .set_limits(name, &super::lifecycle::limits_for(&eff))
    {
        crate::log!("nanoclaw: {name}: re-applying limits: {e}");
    }
    let oom = d.cgroups.memory(name).map(|m| m.oom_kills).unwrap_or(0);
    // Its egress programs are still attached (pinned links) and its rules still in the
    // pinned maps; bring the rules up to the current policy.
    let egress_cgid = match (&d.egress, d.cgroups.unified_dir(name)) {
        (Some(e), Some(dir)) if e.is_attached(name) => crate::bpf::egress::cgroup_id(&dir).ok(),
        _ => None,
    };
    if let Some(cgid) = egress_cgid
        && let Err(e) = super::egress::update(d, cgid, &eff)
    {
        crate::log!("nanoclaw: {name}: updating egress rules: {e}");
    }
    // The LSM rules are in a pinned map too; (re-)holding is idempotent, and also covers an
    // agent started by a supervisor that ran without the LSM.
    let dir = d.cgroups.unified_dir(name);
    let rootfs = d.agents.get(name)?.bundle.join("rootfs");
    let lsm_cgid = match super::lsm::hold(d, dir.as_deref(), &rootfs) {
        Ok(c) => c,
        Err(e) => {
            crate::log!("nanoclaw: {name}: {e}");
            None
        }
    };
    let a = d.agents.get_mut(name)?;
    let pidfd = Rc::new(pidfd);
    a.generation += 1;
    a.state = State::Running;
    a.restarts = rec.restarts;
    a.oom_seen = oom;
    if egress_cgid.is_some() {
        a.last_egress_cgid = egress_cgid;
    }
    if lsm_cgid.is_some() {
        a.last_lsm_cgid = lsm_cgid;
    }
    a.reason = format!("re-adopted (pid {}) from a previous supervisor", rec.pid);
    a.tracker.record_start(rec.started_ms);
    a.instance = Some(Instance {
        pid: rec.pid,
        pidfd: pidfd.clone(),
        started_ms: rec.started_ms,
        report: rec.report,
        adopted: true,
        egress_cgid,
        network: match egress_cgid {
            Some(_) => super::egress::allowlist_posture(&eff),
            None => "none (empty network namespace)".into(),
        },
        monitor_cgid: None,
        lsm_cgid,
        socket: None,
    });
    super::lifecycle::start_monitoring(d, name, false);
    let a = d.agents.get_mut(name)?;
    let generation = a.generation;
    d.audit(
        name,
        AuditKind::Adopt,
        &format!(
            "re-adopted running {} (pid {}); output written while no supervisor ran is kept up to the pipe's capacity",
            rec.version, rec.pid
        ),
        true,
    );
    Some((generation, pidfd))
}
