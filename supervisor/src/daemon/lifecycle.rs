//! Installing, admitting, starting, watching, restarting and stopping agents.

use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::Duration;

use nanoclaw_proto::audit::AuditKind;
use serde::{Deserialize, Serialize};

use super::{CtxRef, Daemon, DaemonError, now_ms, random_u64};
use crate::admission;
use crate::agents::restart::{Decision, Exit};
use crate::agents::{Agent, Instance, State, install, persist};
use crate::cgroup::Limits;
use crate::sandbox;

/// What a running instance leaves in `<state_dir>/run/<agent>.json`, so a restarted supervisor
/// can re-adopt it (and tell it apart from a recycled PID).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat: the process start time in clock ticks since boot.
    pub start_ticks: u64,
    pub version: String,
    pub started_ms: u64,
    pub restarts: u32,
    pub report: Option<sandbox::Report>,
}

pub fn proc_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Scans the agents directory, admits every bundle against the policy and records the result.
/// Agents refused by admission stay listed (state `failed`) so `why` can explain them.
pub fn install_all(ctx: &CtxRef) -> Result<(), DaemonError> {
    let mut d = ctx.d.borrow_mut();
    rescan(&mut d, true)?;
    Ok(())
}

/// Scans `agents_dir`, audits every bundle that cannot be installed (under the name of its
/// directory) and registers + admits the valid ones.
/// With `admit` false only registers: a policy reload admits against the new policy itself.
pub fn rescan(d: &mut Daemon, admit: bool) -> Result<(), install::InstallError> {
    let (bundles, errors) = install::scan(&d.cfg.agents_dir)?;
    for e in errors {
        let text = e.to_string();
        d.audit(
            &e.agent_hint(),
            AuditKind::SandboxError,
            &format!("bundle not installed: {text}"),
            true,
        );
    }
    for b in bundles {
        register(d, b, admit);
    }
    Ok(())
}

/// Adds (or updates) one agent from a bundle and, with `then_admit`, admits it.
fn register(d: &mut Daemon, b: install::Bundle, then_admit: bool) {
    let name = b.manifest.name.clone();
    if !d.agents.contains_key(&name) {
        let used: Vec<u32> = d.agents.values().map(|a| a.slot).collect();
        let max = d.cfg.max_agents as u32;
        let Some(slot) = (0..max).find(|s| !used.contains(s)) else {
            d.audit(
                &name,
                AuditKind::AdmissionDenied,
                &format!("device already runs max_agents = {max} agents"),
                true,
            );
            return;
        };
        let signed = super::installer::is_signed_install(d, &name, &b.dir);
        if !d.cfg.allow_unsigned && !signed {
            d.audit(
                &name,
                AuditKind::AdmissionDenied,
                "bundle directory was not installed by `nanoclaw install` (unsigned) and device.json does not set allow_unsigned",
                true,
            );
            return;
        }
        let log_bytes = d.cfg.log_ring_bytes.0 as usize;
        let version = b.manifest.version.clone();
        d.agents.insert(
            name.clone(),
            Agent::new(b.manifest, b.dir.clone(), slot, log_bytes),
        );
        d.audit(
            &name,
            AuditKind::Install,
            &format!("installed {version} from {}", b.dir.display()),
            false,
        );
        if let Some(rec) = persist::load(&d.agents_state_dir(), &name)
            && let Some(a) = d.agents.get_mut(&name)
        {
            a.restore(rec);
        }
    } else if let Some(a) = d.agents.get_mut(&name) {
        a.manifest = b.manifest;
        a.bundle = b.dir;
    }
    if then_admit {
        admit(d, &name);
    }
}

/// (Re-)runs admission for one agent against the current policy.
fn admit(d: &mut Daemon, name: &str) {
    let Some(a) = d.agents.get(name) else { return };
    // A running agent keeps what it may still have (narrowed to a shrunken grant).
    let result = if a.instance.is_some() {
        admission::admit_running(&a.manifest, &d.policy).map(|(e, _)| e)
    } else {
        admission::admit(&a.manifest, &d.policy)
    }
    .map_err(|e| e.to_string());
    if let Err(e) = &result {
        let e = e.clone();
        d.audit(name, AuditKind::AdmissionDenied, &e, true);
    }
    if let Some(a) = d.agents.get_mut(name) {
        if let Err(e) = &result {
            a.state = State::Failed;
            a.reason = format!("admission refused: {e}");
        }
        a.admission = result;
    }
}

/// Starts every admitted agent that is not running (used at start-up and after reload).
pub fn start_all(ctx: &CtxRef) {
    let names: Vec<String> = ctx
        .d
        .borrow()
        .agents
        .iter()
        .filter(|(_, a)| {
            a.admission.is_ok() && a.instance.is_none() && a.state == State::Stopped && !a.held
        })
        .map(|(n, _)| n.clone())
        .collect();
    for n in names {
        start(ctx, &n);
    }
}

pub fn limits_for(e: &admission::Effective) -> Limits {
    Limits {
        memory_max: e.memory_max,
        // memory.high stays at "max" while the agent is not throttled: agents have no swap,
        // so reclaim above memory.high cannot free their anonymous memory and only delays the
        // OOM kill (12-16 s for the memory hog in the v2 VM). `Effective::memory_high` is the
        // throttle point that battery/energy throttling applies.
        memory_high: None,
        pids_max: u64::from(e.pids_max),
        cpu_quota_us: Some(e.cpu_quota_us),
        cpu_period_us: e.cpu_period_us,
    }
}

/// The cgroup limits of an agent, with its CPU quota cut to a quarter when a rule throttled it.
pub fn limits_for_agent(e: &admission::Effective, throttled: bool) -> Limits {
    let mut l = limits_for(e);
    if throttled {
        l.cpu_quota_us = Some((e.cpu_quota_us / 4).max(admission::MIN_CPU_QUOTA_US));
    }
    l
}

/// Starts one agent now. Errors are audited and leave the agent `failed`.
pub fn start(ctx: &CtxRef, name: &str) {
    let watched = {
        let mut guard = ctx.d.borrow_mut();
        start_locked(&mut guard, name)
    };
    if let Some((generation, pidfd, log, listener)) = watched {
        let uid = {
            let d = ctx.d.borrow();
            d.agents.get(name).map(|a| d.uid_of(a))
        };
        if let (Some(l), Some(uid)) = (listener, uid) {
            let task = super::agentsock::serve(ctx, name, uid, l);
            super::agentsock::keep(ctx, name, task);
        }
        watch(ctx, name, generation, pidfd, Some(log));
        super::installer::watch_probation(ctx, name, generation);
        // A battery tier or an energy budget in force holds a fresh instance too.
        let held = ctx
            .d
            .borrow()
            .agents
            .get(name)
            .is_some_and(|a| a.tier_hold.is_some() || a.energy.hold.is_some());
        if held {
            super::energy::reapply(ctx, name);
        }
    }
}

/// Waits until the agent has no running instance (bounded by its grace period + 2 s).
pub async fn wait_down(ctx: &CtxRef, agent: &str) {
    let grace = {
        let d = ctx.d.borrow();
        let g = d.cfg.stop_grace_s;
        d.agents
            .get(agent)
            .and_then(|a| a.manifest.stop_grace_s)
            .unwrap_or(g)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(u64::from(grace) + 2);
    while std::time::Instant::now() < deadline {
        let up = ctx
            .d
            .borrow()
            .agents
            .get(agent)
            .is_some_and(|a| a.instance.is_some());
        if !up {
            return;
        }
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}

/// A newly installed or rolled-back version: register it, then (re)start the agent.
pub fn activate(ctx: &CtxRef, name: &str) {
    {
        let mut d = ctx.d.borrow_mut();
        if let Err(e) = rescan(&mut d, true) {
            let t = e.to_string();
            d.audit(name, AuditKind::SandboxError, &t, true);
        }
    }
    let running = ctx
        .d
        .borrow()
        .agents
        .get(name)
        .is_some_and(|a| a.instance.is_some());
    let c = ctx.clone();
    let n = name.to_owned();
    ctx.ex
        .spawn(async move {
            if running {
                stop(&c, &n, "switching to another installed version", false);
                wait_down(&c, &n).await;
            }
            if let Some(a) = c.d.borrow_mut().agents.get_mut(&n) {
                a.tracker.reset();
                a.held = false;
                if a.admission.is_ok() {
                    a.state = State::Stopped;
                }
            }
            start(&c, &n);
        })
        .detach();
}

type Watched = (
    u64,
    Rc<smol::Async<std::os::fd::OwnedFd>>,
    std::os::fd::OwnedFd,
    Option<std::os::unix::net::UnixListener>,
);

fn start_locked(d: &mut Daemon, name: &str) -> Option<Watched> {
    let a = d.agents.get_mut(name)?;
    if a.instance.is_some() || d.shutting_down {
        return None;
    }
    let eff = match &a.admission {
        Ok(e) => e.clone(),
        Err(e) => {
            a.state = State::Failed;
            a.reason = format!("admission refused: {e}");
            return None;
        }
    };
    if a.quarantined {
        a.state = State::Quarantined;
        a.held = true;
        return None;
    }
    a.generation += 1;
    a.stop_requested = false;
    a.state = State::Starting;
    a.network_revoked = false;
    a.throttled = false;
    a.frozen_by_rule = false;
    a.last_heartbeat_ms = None;
    let generation = a.generation;
    let uid = d.cfg.uid_base + a.slot;
    // A mechanism the policy requires and this kernel lacks: no silent fallback.
    if let Some(reason) = missing_requirement(d, &eff) {
        let a = d.agents.get_mut(name)?;
        a.state = State::Failed;
        a.held = true;
        a.reason = reason.clone();
        d.audit(name, AuditKind::SandboxError, &reason, true);
        return None;
    }
    let runtime_dir = match super::runtimes::usr_for(d, &d.agents.get(name)?.manifest) {
        Ok(dir) => dir,
        Err(reason) => {
            let a = d.agents.get_mut(name)?;
            a.state = State::Failed;
            a.reason = reason.clone();
            d.audit(name, AuditKind::SandboxError, &reason, true);
            return None;
        }
    };
    let a = d.agents.get_mut(name)?;
    let seccomp_filter = match sandbox::filter_for(&eff.syscalls.to_string(), d.lsm.is_some()) {
        Ok(f) => f,
        Err(e) => {
            a.state = State::Failed;
            a.reason = format!("sandbox setup failed: seccomp: {e}");
            d.audit(
                name,
                AuditKind::SandboxError,
                &format!("seccomp: {e}"),
                true,
            );
            return None;
        }
    };
    let mut env = sandbox::base_env();
    env.push(format!("NANOCLAW_AGENT={name}"));
    env.extend(a.manifest.env.iter().map(|(k, v)| format!("{k}={v}")));
    let spec = sandbox::Spec {
        name: name.to_owned(),
        rootfs: a.bundle.join("rootfs"),
        exec: a.manifest.exec.clone(),
        env,
        uid,
        gid: uid,
        scratch_bytes: eff.scratch_bytes,
        nproc: u64::from(eff.pids_max),
        syscalls: eff.syscalls.to_string(),
        seccomp_filter,
        host_network: false,
        // Manifests name devices by path (`/dev/ttyS0`); the sandbox binds /dev/<name>.
        devices: eff
            .devices
            .iter()
            .map(|d| d.trim_start_matches("/dev/").to_owned())
            .collect(),
        socket_dir: None,
        runtime: runtime_dir,
    };
    // The agent socket exists before the agent does (rootfs without /run: no socket).
    let listener = if spec.rootfs.join("run").is_dir() {
        match super::agentsock::bind(d, name, uid) {
            Ok(l) => Some(l),
            Err(e) => {
                let a = d.agents.get_mut(name)?;
                a.state = State::Failed;
                a.reason = format!("sandbox setup failed: agent socket: {e}");
                d.audit(
                    name,
                    AuditKind::SandboxError,
                    &format!("agent socket: {e}"),
                    true,
                );
                return None;
            }
        }
    } else {
        None
    };
    let spec = sandbox::Spec {
        socket_dir: listener.as_ref().map(|_| super::agentsock::dir(d, name)),
        ..spec
    };
    // A fresh cgroup per start: clean peak/OOM counters and no leftovers of the last run.
    let _ = d.cgroups.kill_all(name);
    let _ = d.cgroups.remove(name);
    // Egress programs are attached before the agent exists, so it never runs unheld.
    let mut net: Option<super::egress::Plan> = None;
    let mut lsm_cgid = None;
    let mut mon_cgid = None;
    let started = d
        .cgroups
        .create(name, &limits_for(&eff))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let dir = d.cgroups.unified_dir(name);
            lsm_cgid = super::lsm::hold(d, dir.as_deref(), &spec.rootfs)?;
            // Counted from the agent's first syscall on.
            mon_cgid = watch_syscalls(d, name);
            super::egress::prepare(d, name, &eff)
        })
        .and_then(|plan| {
            let spec = sandbox::Spec {
                host_network: plan.host_network,
                ..spec
            };
            net = Some(plan);
            let v2 = d.cgroups.unified_dir(name);
            let cg = &d.cgroups;
            sandbox::spawn(&spec, v2.as_deref(), |pid| cg.add_process(name, pid))
                .map_err(|e| e.to_string())
        });
    let egress_cgid = net.as_ref().and_then(|p| p.cgid);
    let net_posture = net.map_or_else(String::new, |p| p.posture);
    let lsm_posture = super::lsm::agent_posture(d, lsm_cgid.is_some());
    if started.is_err() {
        super::egress::release(d, name, egress_cgid);
        super::lsm::release(d, lsm_cgid);
        if let (Some(cgid), Some(e)) = (mon_cgid, d.egress.as_mut()) {
            e.unwatch_syscalls(cgid);
        }
    }
    let now = now_ms();
    let a = d.agents.get_mut(name)?;
    a.tracker.record_start(now);
    a.held = false;
    persist_agent(d, name);
    let a = d.agents.get_mut(name)?;
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            a.state = State::Failed;
            a.reason = format!("sandbox setup failed: {e}");
            let _ = d.cgroups.remove(name);
            d.audit(name, AuditKind::SandboxError, &e, true);
            return None;
        }
    };
    let pidfd = match smol::Async::new(started.pidfd) {
        Ok(p) => Rc::new(p),
        Err(e) => {
            let _ = d.cgroups.kill_all(name);
            a.state = State::Failed;
            a.reason = format!("watching the agent's pidfd: {e}");
            return None;
        }
    };
    a.state = State::Running;
    a.reason = "running".into();
    a.oom_seen = 0;
    a.oom_audited_ms = 0;
    if egress_cgid.is_some() {
        a.last_egress_cgid = egress_cgid;
    }
    if lsm_cgid.is_some() {
        a.last_lsm_cgid = lsm_cgid;
    }
    let version = a.manifest.version.clone();
    let report = started.report.clone();
    a.instance = Some(Instance {
        pid: started.pid,
        pidfd: pidfd.clone(),
        started_ms: now,
        report: Some(report.clone()),
        adopted: false,
        egress_cgid,
        network: net_posture.clone(),
        monitor_cgid: None,
        lsm_cgid,
        socket: None,
    });
    start_monitoring(d, name, true);
    let a = d.agents.get_mut(name)?;
    let rec = RunRecord {
        pid: started.pid,
        start_ticks: proc_start_ticks(started.pid).unwrap_or(0),
        version: version.clone(),
        started_ms: now,
        restarts: a.restarts,
        report: Some(report.clone()),
    };
    let run_path = d.run_dir().join(format!("{name}.json"));
    if let Err(e) = persist::write_json_atomic(&run_path, &rec, false) {
        crate::log!("nanoclaw: writing {}: {e}", run_path.display());
    }
    let unsigned = if d.cfg.allow_unsigned {
        "; UNSIGNED bundle allowed by allow_unsigned"
    } else {
        ""
    };
    d.audit(
        name,
        AuditKind::Start,
        &format!(
            "started {version} pid {} uid {uid}: memory {} pids {} cpus {} seccomp {} landlock {}; lsm {lsm_posture}; network {net_posture}{unsigned}",
            started.pid,
            eff.memory_max,
            eff.pids_max,
            eff.cpus,
            report.seccomp,
            report.landlock
        ),
        true,
    );
    Some((generation, pidfd, started.log, listener))
}

/// Puts the agent's cgroup into the syscall monitor's map (when it runs here); returns its id.
fn watch_syscalls(d: &mut Daemon, name: &str) -> Option<u64> {
    let dir = d.cgroups.unified_dir(name)?;
    let e = d.egress.as_mut().filter(|e| e.monitor().is_ok())?;
    let cgid = crate::bpf::egress::cgroup_id(&dir).ok()?;
    match e.watch_syscalls(cgid) {
        Ok(()) => Some(cgid),
        Err(err) => {
            crate::log!("nanoclaw: {name}: syscall monitoring: {err}");
            None
        }
    }
}

/// Registers a running instance with the syscall monitor (when it runs here). A `fresh`
/// instance was watched before it started, so all its counts are new; an adopted one has
/// counted under the previous supervisor, so rates are measured from now on.
pub fn start_monitoring(d: &mut Daemon, name: &str, fresh: bool) {
    let Some(cgid) = watch_syscalls(d, name) else {
        return;
    };
    let counts = if fresh {
        Vec::new()
    } else {
        d.egress
            .as_ref()
            .map(|e| e.syscall_counts(cgid))
            .unwrap_or_default()
    };
    super::monitor::on_start(d, name);
    if let Some(a) = d.agents.get_mut(name) {
        a.syscalls.last = counts.into_iter().collect();
        if let Some(i) = a.instance.as_mut() {
            i.monitor_cgid = Some(cgid);
        }
    }
}

/// The first mechanism `agents.X.require` names that this kernel does not provide, as the
/// reason the agent does not start.
pub fn missing_requirement(d: &Daemon, eff: &admission::Effective) -> Option<String> {
    use crate::config::policy::Mechanism;
    eff.require.iter().find_map(|m| {
        let why = match m {
            Mechanism::BpfEgress if d.egress.is_none() => d.posture.egress.clone(),
            Mechanism::Landlock if d.posture.landlock == "unsupported" => {
                "Landlock is not supported by this kernel".into()
            }
            Mechanism::BpfLsm if d.lsm.is_none() => d.posture.lsm.clone(),
            _ => return None,
        };
        let why = why.strip_prefix("unavailable: ").unwrap_or(&why);
        Some(format!(
            "the policy requires {m} (agents.{}.require) and it is unavailable: {why}",
            eff.name
        ))
    })
}

/// Spawns the exit, OOM and log tasks of one instance.
pub fn watch(
    ctx: &CtxRef,
    name: &str,
    generation: u64,
    pidfd: Rc<smol::Async<std::os::fd::OwnedFd>>,
    log: Option<std::os::fd::OwnedFd>,
) {
    let n = name.to_owned();
    let c = ctx.clone();
    ctx.ex
        .spawn(async move {
            let _ = pidfd.readable().await;
            let status = rustix::process::waitid(
                rustix::process::WaitId::PidFd(pidfd.get_ref().as_fd()),
                rustix::process::WaitIdOptions::EXITED,
            );
            let exit = match status {
                Ok(Some(s)) => match (s.exit_status(), s.terminating_signal()) {
                    (Some(code), _) => Exit::from_init_code(code),
                    (None, Some(sig)) => Exit::Signal(sig),
                    _ => Exit::Unknown,
                },
                // Not our child (re-adopted): the kernel keeps the status for its real parent.
                _ => Exit::Unknown,
            };
            on_exit(&c, &n, generation, exit);
        })
        .detach();

    let notifier = ctx.d.borrow().cgroups.oom_notifier(name);
    match notifier.map(smol::Async::new) {
        Ok(Ok(fd)) => {
            let n = name.to_owned();
            let c = ctx.clone();
            ctx.ex
                .spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        if fd.readable().await.is_err() {
                            return;
                        }
                        // Drain (eventfd counter or inotify events); content does not matter.
                        let _ = rustix::io::read(fd.get_ref(), &mut buf);
                        if !check_oom(&c, &n, generation) {
                            return;
                        }
                    }
                })
                .detach();
        }
        Ok(Err(e)) => crate::log!("nanoclaw: {name}: watching OOM events: {e}"),
        Err(e) => crate::log!("nanoclaw: {name}: OOM notifier: {e}"),
    }

    if let Some(log) = log {
        let n = name.to_owned();
        let c = ctx.clone();
        if let Ok(f) = smol::Async::new(std::fs::File::from(log)) {
            ctx.ex
                .spawn(async move {
                    use smol::io::AsyncReadExt;
                    let mut f = f;
                    let mut buf = [0u8; 4096];
                    loop {
                        match f.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => {
                                let mut d = c.d.borrow_mut();
                                match d.agents.get_mut(&n) {
                                    Some(a) if a.generation == generation => a.logs.push(&buf[..k]),
                                    _ => return,
                                }
                            }
                        }
                    }
                })
                .detach();
        }
    }
}

/// Audits new OOM kills in the agent's cgroup. Returns false once the instance is gone.
fn check_oom(ctx: &CtxRef, name: &str, generation: u64) -> bool {
    let mut d = ctx.d.borrow_mut();
    let Ok(mem) = d.cgroups.memory(name) else {
        return d
            .agents
            .get(name)
            .is_some_and(|a| a.generation == generation && a.instance.is_some());
    };
    let Some(a) = d.agents.get_mut(name) else {
        return false;
    };
    if a.generation != generation || a.instance.is_none() {
        return false;
    }
    a.memory_peak = a.memory_peak.max(mem.peak);
    // One OOM event can raise the counter more than once (v2 with memory.oom.group counts the
    // victim and the group kill): coalesce increments within a second into one record.
    let now = now_ms();
    let first = a.oom_seen == 0;
    let new = mem.oom_kills.saturating_sub(a.oom_seen);
    a.oom_seen = a.oom_seen.max(mem.oom_kills);
    if new > 0 && (first || now.saturating_sub(a.oom_audited_ms) >= 1000) {
        a.oom_audited_ms = now;
        d.audit(
            name,
            AuditKind::OomKill,
            &format!(
                "{new} process(es) OOM-killed at the memory limit {} bytes (peak {} bytes); rule: requests.memory",
                mem.limit, mem.peak
            ),
            true,
        );
    }
    if new > 0 {
        d.event(name, crate::config::policy::Event::OomKill);
    }
    true
}

/// An instance's init exited: classify, clean up, audit, and decide whether to restart.
fn on_exit(ctx: &CtxRef, name: &str, generation: u64, exit: Exit) {
    // Catch an OOM kill whose notification has not been processed yet.
    check_oom(ctx, name, generation);
    let mut d = ctx.d.borrow_mut();
    let d = &mut *d;
    let Some(a) = d.agents.get_mut(name) else {
        return;
    };
    if a.generation != generation {
        return;
    }
    let exit = if a.oom_seen > 0 {
        Exit::OomKilled
    } else {
        exit
    };
    let egress_cgid = a.instance.as_ref().and_then(|i| i.egress_cgid);
    let monitor_cgid = a.instance.as_ref().and_then(|i| i.monitor_cgid);
    let lsm_cgid = a.instance.as_ref().and_then(|i| i.lsm_cgid);
    a.instance = None;
    a.last_exit = Some(exit);
    let stop_requested = a.stop_requested;
    let policy = a.restart_policy();
    let decision = a.tracker.decide(now_ms(), policy, exit, random_u64());
    // Anything the agent left behind (v1 has no memory.oom.group) dies with it.
    let _ = d.cgroups.kill_all(name);
    super::egress::release(d, name, egress_cgid);
    super::lsm::release(d, lsm_cgid);
    if let (Some(cgid), Some(e)) = (monitor_cgid, d.egress.as_mut()) {
        e.unwatch_syscalls(cgid);
    }
    let _ = std::fs::remove_file(d.run_dir().join(format!("{name}.json")));
    d.audit(
        name,
        AuditKind::Exit,
        &format!("{exit}"),
        exit != Exit::Code(0),
    );
    let Some(a) = d.agents.get_mut(name) else {
        return;
    };
    if a.quarantined {
        a.state = State::Quarantined;
        a.held = true;
        let _ = d.cgroups.remove(name);
        persist_agent(d, name);
        return;
    }
    if stop_requested || d.shutting_down {
        a.state = State::Stopped;
        a.reason = format!("stopped on request ({exit})");
        a.held = a.hold_after_stop && !d.shutting_down;
        let _ = d.cgroups.remove(name);
        persist_agent(d, name);
        return;
    }
    match decision {
        Decision::Restart { delay_ms, attempt } => {
            a.state = State::Starting;
            a.restarts += 1;
            a.reason = format!(
                "restarting after {exit} (attempt {}, in {delay_ms} ms)",
                attempt + 1
            );
            let reason = a.reason.clone();
            d.audit(name, AuditKind::Restart, &reason, false);
            persist_agent(d, name);
            let c = ctx.clone();
            let n = name.to_owned();
            ctx.ex
                .spawn(async move {
                    if delay_ms > 0 {
                        smol::Timer::after(Duration::from_millis(delay_ms)).await;
                    }
                    let go = c.d.borrow().agents.get(&n).is_some_and(|a| {
                        a.generation == generation && a.instance.is_none() && !a.stop_requested
                    });
                    if go {
                        start(&c, &n);
                    }
                })
                .detach();
        }
        Decision::Exited => {
            a.state = State::Exited;
            a.held = true;
            a.reason = format!("{exit}; restart policy does not restart it");
            let _ = d.cgroups.remove(name);
            persist_agent(d, name);
        }
        Decision::Failed { crash_loop } => {
            a.state = State::Failed;
            a.held = true;
            if crash_loop {
                let max = a.manifest.restart.max_per_hour;
                a.reason = format!(
                    "crash loop: started {max} times within an hour (restart.max_per_hour = {max}); last: {exit}. Fix the agent, then `nanoclaw start {name}`"
                );
                let reason = a.reason.clone();
                d.audit(name, AuditKind::CrashLoop, &reason, true);
                d.event(name, crate::config::policy::Event::CrashLoop);
                // A version still in probation goes back to the one before it.
                let c = ctx.clone();
                let n = name.to_owned();
                ctx.ex
                    .spawn(async move {
                        super::installer::rollback_if_in_probation(&c, &n, "crash-looped");
                    })
                    .detach();
            } else {
                a.reason = format!("{exit}; restart policy does not restart it");
            }
            let _ = d.cgroups.remove(name);
            persist_agent(d, name);
        }
    }
}

/// Asks an agent to stop: SIGTERM to its init (forwarded to the agent), SIGKILL to its whole
/// cgroup after the grace period. `hold` keeps it down until an operator starts it, across
/// supervisor restarts (an operator's stop); a shutdown or a policy change does not hold.
pub fn stop(ctx: &CtxRef, name: &str, why: &str, hold: bool) {
    let mut d = ctx.d.borrow_mut();
    let grace = d.cfg.stop_grace_s;
    let Some(a) = d.agents.get_mut(name) else {
        return;
    };
    a.stop_requested = true;
    a.hold_after_stop = hold;
    let Some(inst) = &a.instance else {
        if a.state == State::Starting || (hold && a.state == State::Stopped) {
            a.state = State::Stopped;
            a.held |= hold;
            persist_agent(&mut d, name);
        }
        return;
    };
    let grace = a.manifest.stop_grace_s.unwrap_or(grace);
    let generation = a.generation;
    let _ = rustix::process::pidfd_send_signal(inst.pidfd.get_ref(), rustix::process::Signal::TERM);
    d.audit(name, AuditKind::Stop, why, true);
    drop(d);
    let c = ctx.clone();
    let n = name.to_owned();
    ctx.ex
        .spawn(async move {
            smol::Timer::after(Duration::from_secs(u64::from(grace))).await;
            let mut d = c.d.borrow_mut();
            let alive = d
                .agents
                .get(&n)
                .is_some_and(|a| a.generation == generation && a.instance.is_some());
            if alive {
                let _ = d.cgroups.kill_all(&n);
                d.audit(
                    &n,
                    AuditKind::StopTimeout,
                    &format!("did not exit within {grace} s of SIGTERM; killed"),
                    true,
                );
            }
        })
        .detach();
}

/// Saves the agent's restart history and hold (see `agents::persist`).
pub fn persist_agent(d: &mut Daemon, name: &str) {
    let dir = d.agents_state_dir();
    if let Some(a) = d.agents.get(name)
        && let Err(e) = persist::save(&dir, name, &a.record())
    {
        crate::log!(
            "nanoclaw: {name}: saving agent state in {}: {e}",
            dir.display()
        );
    }
}
