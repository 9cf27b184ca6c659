//! The sandbox init: PID 1 of an agent's PID namespace.
//!
//! It builds the filesystem view, forks the agent (which drops to its uid, loses every
//! capability, sets `no_new_privs`, rlimits, Landlock and seccomp, then execs), reports the
//! outcome on fd 4, drops its own privileges, and then only relays the agent's output, forwards
//! signals and reaps. It exits with the agent's status (128 + signal when killed), which takes
//! the whole PID namespace down with it.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};

use super::{InitReport, Report, Spec, landlock, mount, read_spec, seccomp};
use crate::sys;

/// argv[1] that selects the init in `main`.
pub const ARG: &str = "__sandbox-init";

/// Signals the init forwards to the agent.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Entry point; never returns.
pub fn main() -> ! {
    // Whatever the supervisor's own parent leaked to it without close-on-exec ends here.
    sys::close_from(super::LOG_READ_FD as u32 + 1);
    // Held, never read: it keeps the log pipe alive for a supervisor that re-adopts us
    // (`pidfd_getfd`). Close-on-exec, so the agent does not get it.
    let _log_keep = sys::inherited_fd(super::LOG_READ_FD);
    let Ok(report) = sys::inherited_fd(4) else {
        sys::exit_now(125)
    };
    let mut report = File::from(report);
    let fail = |report: &mut File, msg: String| -> ! {
        let line = serde_json::to_string(&InitReport::Err(msg)).unwrap_or_default();
        let _ = report.write_all(line.as_bytes());
        sys::exit_now(126)
    };
    let mut control = match sys::inherited_fd(3) {
        Ok(fd) => std::io::BufReader::new(File::from(fd)),
        Err(e) => fail(&mut report, format!("fd 3: {e}")),
    };
    let spec = match read_spec(&mut control) {
        Ok(s) => s,
        Err(e) => fail(&mut report, e),
    };
    match run(&spec, &mut control, &mut report) {
        Ok(code) => sys::exit_now(code),
        Err(e) => fail(&mut report, e),
    }
}

fn run(spec: &Spec, control: &mut impl Read, report: &mut File) -> Result<i32, String> {
    let profile: seccomp::Profile = spec
        .syscalls
        .parse()
        .map_err(|e| format!("syscalls profile {:?}: {e}", spec.syscalls))?;
    if spec.exec.is_empty() {
        return Err("exec is empty".into());
    }
    let argv = cstrings(&spec.exec)?;
    let envp = cstrings(&spec.env)?;
    sys::sethostname(&spec.name).map_err(|e| format!("sethostname: {e}"))?;
    mount::build_root(spec)?;
    let devnull = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("opening /dev/null in the sandbox: {e}"))?;

    let mut blocked = FORWARDED.to_vec();
    blocked.push(libc::SIGCHLD);
    let sigfd = sys::signalfd(&blocked).map_err(|e| format!("signalfd: {e}"))?;
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| format!("pipe: {e}"))
    };
    let (out_r, out_w) = pipe()?;
    let (status_r, status_w) = pipe()?;

    // The filesystem is ready; the agent may only run once we are in all our cgroups.
    super::wait_go(control)?;
    let prog = seccomp::unpack(&spec.seccomp_filter)?;
    let pid = sys::fork().map_err(|e| format!("fork: {e}"))?;
    if pid == 0 {
        drop((out_r, status_r, sigfd));
        let mut status_w = File::from(status_w);
        let err = exec_agent(spec, &prog, &argv, &envp, &devnull, &out_w, &mut status_w);
        let line = serde_json::to_string(&AgentStatus::Err(err)).unwrap_or_default();
        let _ = status_w.write_all(line.as_bytes());
        sys::exit_now(127);
    }
    drop((out_w, status_w));

    // The agent writes one status line (Landlock level) and then either an error or nothing:
    // exec closes the pipe (close-on-exec), so EOF after the status means it exec'd.
    let mut buf = Vec::new();
    let _ = File::from(status_r).take(8192).read_to_end(&mut buf);
    let mut landlock_level = String::from("unknown");
    for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<AgentStatus>(line) {
            Ok(AgentStatus::Landlock(l)) => landlock_level = l,
            Ok(AgentStatus::Err(e)) => {
                let _ = rustix::process::waitpid(
                    Some(rustix::process::Pid::from_raw(pid).ok_or("bad pid")?),
                    rustix::process::WaitOptions::empty(),
                );
                return Err(e);
            }
            Err(e) => return Err(format!("unreadable status from the agent: {e}")),
        }
    }
    let line = serde_json::to_string(&InitReport::Ok(Report {
        landlock: landlock_level,
        seccomp: profile.to_string(),
    }))
    .map_err(|e| e.to_string())?;
    report
        .write_all(line.as_bytes())
        .map_err(|e| format!("writing the report: {e}"))?;
    // Close fd 4 so the supervisor sees EOF.
    drop(std::mem::replace(report, devnull));

    // Drop our own privileges too: we only relay, reap and forward from now on. Switching
    // every uid to non-root clears all capabilities; the init never execs, so its bounding
    // set does not matter.
    sys::set_ids(spec.uid, spec.gid).map_err(|e| format!("init: setuid: {e}"))?;
    let _ = sys::set_not_dumpable();
    let _ = sys::set_no_new_privs();
    sys::ignore_signal(libc::SIGPIPE);
    Ok(relay(pid, &sigfd, out_r))
}

/// Line protocol from the forked agent to the init, before exec.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum AgentStatus {
    Landlock(String),
    Err(String),
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, String> {
    v.iter()
        .map(|s| CString::new(s.as_str()).map_err(|_| format!("{s:?} contains a NUL byte")))
        .collect()
}

/// Runs in the forked agent; returns only on error.
fn exec_agent(
    spec: &Spec,
    prog: &seccompiler::BpfProgram,
    argv: &[CString],
    envp: &[CString],
    devnull: &File,
    out: &OwnedFd,
    status: &mut File,
) -> String {
    let step = || -> Result<(), String> {
        sys::setsid().map_err(|e| format!("setsid: {e}"))?;
        sys::dup2(devnull.as_fd(), 0).map_err(|e| format!("stdin: {e}"))?;
        sys::dup2(out.as_fd(), 1).map_err(|e| format!("stdout: {e}"))?;
        sys::dup2(out.as_fd(), 2).map_err(|e| format!("stderr: {e}"))?;
        sys::unblock_all_signals();
        // Every catchable signal as a fresh process has it: dispositions set to "ignore"
        // survive exec, and whatever started the daemon (a shell's background job ignores
        // SIGINT and SIGQUIT) must not decide what the agent hears.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                sys::default_signal(sig);
            }
        }
        sys::drop_bounding_caps().map_err(|e| format!("dropping the bounding set: {e}"))?;
        for (res, val) in [
            (libc::RLIMIT_NOFILE as libc::c_int, 1024),
            (libc::RLIMIT_CORE as libc::c_int, 0),
            (libc::RLIMIT_MEMLOCK as libc::c_int, 0),
            (libc::RLIMIT_NPROC as libc::c_int, spec.nproc),
        ] {
            sys::set_rlimit(res, val).map_err(|e| format!("setrlimit {res}: {e}"))?;
        }
        sys::set_ids(spec.uid, spec.gid)
            .map_err(|e| format!("switching to uid {}: {e}", spec.uid))?;
        sys::clear_caps().map_err(|e| format!("clearing capabilities: {e}"))?;
        sys::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))
    };
    if let Err(e) = step() {
        return e;
    }
    let mut rw = vec!["/tmp".into()];
    rw.extend(
        mount::BASE_DEVICES
            .iter()
            .map(|d| format!("/dev/{d}"))
            .chain(spec.devices.iter().map(|d| format!("/dev/{d}")))
            .map(std::path::PathBuf::from),
    );
    let rules = landlock::FsRules {
        read_exec: vec!["/".into()],
        read_write: rw,
    };
    let level = match landlock::restrict_self(&rules) {
        Ok(l) => l.to_string(),
        Err(e) => return format!("landlock: {e}"),
    };
    if let Ok(line) = serde_json::to_string(&AgentStatus::Landlock(level)) {
        let _ = status.write_all(format!("{line}\n").as_bytes());
    }
    if let Err(e) = seccomp::install(prog) {
        return format!("installing seccomp: {e}");
    }
    let path = &argv[0];
    let err = sys::execve(path, argv, envp);
    format!("exec {}: {err}", spec.exec[0])
}

/// Relays agent output to fd 1 (dropping it if the supervisor is gone or slow), forwards
/// signals, reaps every child, and returns the exit code once the agent is gone.
fn relay(agent: i32, sigfd: &OwnedFd, out: OwnedFd) -> i32 {
    let stdout = rustix::stdio::stdout();
    let _ = rustix::fs::fcntl_setfl(stdout, rustix::fs::OFlags::NONBLOCK);
    let mut out = Some(out);
    let mut buf = [0u8; 4096];
    let mut exit_code: Option<i32> = None;
    loop {
        let mut fds = Vec::with_capacity(2);
        fds.push(PollFd::new(sigfd, PollFlags::IN));
        if let Some(o) = &out {
            fds.push(PollFd::new(o, PollFlags::IN));
        }
        if exit_code.is_some() && out.is_none() {
            break;
        }
        // Once the agent is gone, give its leftover output a moment, then leave.
        let timeout = exit_code.map(|_| rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        });
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) => break,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
        let out_ready = fds.get(1).is_some_and(|f| !f.revents().is_empty());
        let sig_ready = !fds[0].revents().is_empty();
        if out_ready && let Some(o) = &out {
            match rustix::io::read(o, &mut buf) {
                Ok(0) => out = None,
                Ok(n) => {
                    // Non-blocking: a missing or slow supervisor loses output, never stalls the agent.
                    let _ = rustix::io::write(stdout, &buf[..n]);
                }
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(_) => out = None,
            }
        }
        if sig_ready {
            while let Ok(Some(sig)) = sys::read_signalfd(sigfd.as_fd()) {
                if sig == libc::SIGCHLD {
                    continue;
                }
                if exit_code.is_none() {
                    let _ = rustix::process::kill_process(
                        rustix::process::Pid::from_raw(agent).unwrap_or(rustix::process::Pid::INIT),
                        rustix::process::Signal::from_named_raw(sig)
                            .unwrap_or(rustix::process::Signal::TERM),
                    );
                }
            }
            // Reap everything that exited: the agent and any orphans reparented to us.
            // `wait` is waitpid(-1): the agent runs in its own session and process group.
            while let Ok(Some((pid, status))) =
                rustix::process::wait(rustix::process::WaitOptions::NOHANG)
            {
                if pid.as_raw_nonzero().get() == agent {
                    exit_code = Some(match (status.exit_status(), status.terminating_signal()) {
                        (Some(c), _) => c,
                        (None, Some(s)) => 128 + s,
                        _ => 255,
                    });
                }
            }
        }
    }
    exit_code.unwrap_or(255)
}
