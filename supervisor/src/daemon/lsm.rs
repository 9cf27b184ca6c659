//! The daemon's side of BPF LSM: load and self-test at start-up, hold each agent's cgroup
//! before the agent exists, release it when the instance is gone, and audit denials.
//!
//! Where the LSM is unavailable (no `bpf` in the kernel's `lsm=`, EPERM in a container or
//! this CI host, ENOTSUPP on arm64 6.1) agents still get Landlock, seccomp and namespaces;
//! the posture says which, and a policy `require: ["bpf-lsm"]` keeps such an agent stopped.

use std::cell::RefCell;
use std::path::Path;
use std::process::Stdio;
use std::rc::Rc;

use nanoclaw_proto::audit::AuditKind;

use super::ratelimit::Limiter;
use super::{CtxRef, Daemon, now_ms};
use crate::bpf::lsm::{ALL_RULES, Op};
use crate::bpf::{Lsm, LsmEvent, selftest};
use crate::cgroup::Layout;

/// The posture line of a working LSM.
pub const ENFORCED: &str = "bpf-lsm (exec from the bundle only, no mount, no ptrace of other processes, no raw/packet sockets, opens only on the agent's own mounts; self-test passed)";

/// Loads and attaches the LSM programs, then proves every hook denies (see
/// [`crate::bpf::selftest`]). Returns them (or `None`) and the posture line.
pub fn init(layout: &Layout, subtree: &str) -> (Option<Lsm>, String) {
    let Some(root) = super::egress::cgroup2_root(layout) else {
        return (
            None,
            "unavailable: no cgroup2 hierarchy to key agents by".into(),
        );
    };
    let mut lsm = match Lsm::load(subtree) {
        Ok(l) => l,
        Err(e) => return (None, format!("unavailable: {}", brief(&e.to_string()))),
    };
    match self_test(&mut lsm, &root.join(subtree).join("lsm-probe")) {
        Ok(()) => (Some(lsm), ENFORCED.into()),
        Err(e) => {
            // Never claim (or keep attached) what did not prove itself.
            lsm.unpin();
            (None, format!("unavailable: {e}"))
        }
    }
}

/// A load error as one short line for status and audit: the first line (without the
/// verifier log) and the errno, named when the system has no text for it (ENOTSUPP).
fn brief(e: &str) -> String {
    let head = e.lines().next().unwrap_or(e);
    let head = head.split(". Verifier output").next().unwrap_or(head);
    let mut s = head.trim_end_matches([':', ' ']).to_owned();
    let errno = e.rsplit(": ").find(|p| p.contains("(os error")).map(|p| {
        p.trim().replace(
            "No error information (os error 524)",
            "ENOTSUPP (os error 524)",
        )
    });
    s = s.replace(
        "No error information (os error 524)",
        "ENOTSUPP (os error 524)",
    );
    if let Some(n) = errno
        && !s.contains(&n)
    {
        s += ": ";
        s += &n;
    }
    s.chars().take(240).collect()
}

fn self_test(lsm: &mut Lsm, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = (|| {
        let cgid = crate::bpf::egress::cgroup_id(dir).map_err(|e| e.to_string())?;
        lsm.hold_dev(cgid, 0, ALL_RULES)
            .map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let out = std::process::Command::new(exe)
            .arg(selftest::ARG)
            .arg(dir)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        lsm.release(cgid);
        let out = out.map_err(|e| format!("running the self-test: {e}"))?;
        selftest::verdict(&String::from_utf8_lossy(&out.stdout))?;
        let seen: Vec<Op> = lsm
            .drain()
            .into_iter()
            .filter(|e| e.cgid == cgid)
            .map(|e| e.op)
            .collect();
        let unreported: Vec<&str> = [Op::Socket, Op::FileOpen, Op::Ptrace, Op::Exec, Op::Mount]
            .into_iter()
            .filter(|o| !seen.contains(o))
            .map(Op::name)
            .collect();
        if unreported.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "self-test: denials of {} were not reported on the ring buffer",
                unreported.join(", ")
            ))
        }
    })();
    let _ = std::fs::remove_dir(dir);
    result
}

/// Before an agent starts: hold its cgroup (`dir`, cgroup v2) to every rule, with exec
/// allowed only from the filesystem of `rootfs`. `Ok(None)` when the LSM is not in use; an
/// error means the agent must not start.
pub fn hold(d: &mut Daemon, dir: Option<&Path>, rootfs: &Path) -> Result<Option<u64>, String> {
    let Some(lsm) = d.lsm.as_mut() else {
        return Ok(None);
    };
    let dir = dir.ok_or("the agent has no cgroup2 directory to key BPF LSM rules by")?;
    let cgid = crate::bpf::egress::cgroup_id(dir).map_err(|e| format!("bpf-lsm: {e}"))?;
    lsm.hold(cgid, rootfs, ALL_RULES)
        .map_err(|e| format!("bpf-lsm: {e}"))?;
    Ok(Some(cgid))
}

/// After an agent's instance is gone.
pub fn release(d: &mut Daemon, cgid: Option<u64>) {
    if let (Some(lsm), Some(cgid)) = (d.lsm.as_mut(), cgid) {
        lsm.release(cgid);
    }
}

/// How exec, mounts, ptrace, raw sockets and file opens of one instance are held.
pub fn agent_posture(d: &Daemon, held: bool) -> String {
    if held {
        "bpf-lsm".into()
    } else {
        format!("landlock+seccomp (bpf-lsm {})", d.posture.lsm)
    }
}

fn agent_of(d: &Daemon, cgid: u64) -> Option<String> {
    d.agents
        .iter()
        .find(|(_, a)| a.last_lsm_cgid == Some(cgid))
        .map(|(n, _)| n.clone())
}

fn kind(op: Op) -> AuditKind {
    match op {
        Op::Exec => AuditKind::DeniedExec,
        _ => AuditKind::DeniedOperation,
    }
}

fn summary(n: u32) -> String {
    format!("{n} more operations denied by bpf-lsm in the last second (rate-limited)")
}

/// Reads denials from the ring buffer and audits them, rate-limited per agent like egress.
pub fn spawn_event_reader(ctx: &CtxRef) {
    let Some(ring) = ctx.d.borrow_mut().lsm.as_mut().and_then(Lsm::take_events) else {
        return;
    };
    let limiter = Rc::new(RefCell::new(Limiter::new(
        super::egress::DENIALS_PER_SECOND,
    )));
    let l2 = limiter.clone();
    super::rings::spawn(
        ctx,
        "bpf-lsm denials",
        ring,
        move |c, item| {
            if let Some(ev) = LsmEvent::parse(item) {
                record(c, &ev, &mut limiter.borrow_mut());
            }
        },
        move |c| {
            let mut d = c.d.borrow_mut();
            for (cgid, n) in l2.borrow_mut().expire(now_ms()) {
                let agent = agent_of(&d, cgid).unwrap_or_default();
                d.audit(&agent, AuditKind::DeniedOperation, &summary(n), true);
            }
        },
    );
}

fn record(ctx: &CtxRef, ev: &LsmEvent, limiter: &mut Limiter) {
    let mut d = ctx.d.borrow_mut();
    // Denials of cgroups that are no agent of ours (a self-test) are not audited.
    let Some(agent) = agent_of(&d, ev.cgid) else {
        return;
    };
    let (closed, admit) = limiter.admit(ev.cgid, now_ms());
    if let Some(n) = closed {
        d.audit(&agent, AuditKind::DeniedOperation, &summary(n), true);
    }
    d.event(
        &agent,
        match ev.op {
            Op::Exec => crate::config::policy::Event::DeniedExec,
            _ => crate::config::policy::Event::DeniedOperation,
        },
    );
    if admit {
        let text = format!(
            "{} by pid {} denied by {}",
            ev.target(),
            ev.pid,
            ev.op.rule()
        );
        d.audit(&agent, kind(ev.op), &text, true);
    }
}

#[cfg(test)]
mod tests {
    use super::brief;

    #[test]
    fn load_errors_are_one_short_line_with_the_errno() {
        assert_eq!(
            brief(
                "eBPF program nc_exec: `bpf_raw_tracepoint_open` failed: No error information (os error 524)"
            ),
            "eBPF program nc_exec: `bpf_raw_tracepoint_open` failed: ENOTSUPP (os error 524)"
        );
        assert_eq!(
            brief(
                "eBPF program nc_exec: the BPF_PROG_LOAD syscall failed. Verifier output: \nfunc#0 @0\n: Operation not permitted (os error 1)"
            ),
            "eBPF program nc_exec: the BPF_PROG_LOAD syscall failed: Operation not permitted (os error 1)"
        );
        assert_eq!(brief(&"x".repeat(500)).len(), 240);
    }
}
