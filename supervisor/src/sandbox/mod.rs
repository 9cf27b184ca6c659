//! Starting an agent inside its sandbox.
//!
//! The supervisor `clone3`s a child straight into new mount, PID, IPC, UTS, network and cgroup
//! namespaces (and, on cgroup v2, straight into the agent's cgroup), and the child immediately
//! re-executes this binary as the sandbox *init* (`nanoclaw __sandbox-init`, see [`init`]).
//! Re-executing keeps the multi-threaded supervisor's post-clone code async-signal-safe, while
//! the init, a fresh single-threaded process, can build mounts, seccomp and Landlock with
//! ordinary Rust. The init stays PID 1 of the agent's PID namespace: it forwards signals
//! (a bare PID 1 would ignore SIGTERM), reaps orphans and relays the agent's output to the
//! supervisor without ever blocking or killing the agent if the supervisor is gone.
//!
//! Protocol over inherited fds: 0 = /dev/null, 1 and 2 = log pipe (write end), 3 = the
//! [`Spec`] as one JSON line followed by a single go byte, 4 = the setup report (one line,
//! then closed), [`LOG_READ_FD`] = the log pipe's read end, which the init keeps (and never
//! reads) so a supervisor that re-adopts the agent can take it back with `pidfd_getfd`. The go byte is written once the init is in all its cgroups: the init builds
//! the agent's filesystem meanwhile (overlapping the slow cgroup v1 migration) but forks the
//! agent only after it.

pub mod init;
pub mod landlock;
pub mod mount;
pub mod seccomp;

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use serde::{Deserialize, Serialize};

use crate::sys;

/// The fd number under which the init holds the read end of its log pipe.
pub const LOG_READ_FD: i32 = 5;

/// Largest spec the init accepts on fd 3.
pub const SPEC_MAX: usize = 64 * 1024;
/// How long the supervisor waits for the init to report that the agent exec'd.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the init needs to build one agent's sandbox. Produced by admission, never by the
/// agent, and passed over a pipe, so it is trusted input; it is still size-capped and strict.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    /// Host path of the bundle's root filesystem, mounted read-only as `/`.
    pub rootfs: PathBuf,
    pub exec: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    /// Size cap of the tmpfs scratch mounted at `/tmp`.
    pub scratch_bytes: u64,
    /// RLIMIT_NPROC for the agent's uid (each agent has its own uid).
    pub nproc: u64,
    /// Seccomp profile name (`default`, `strict`), for the report.
    pub syscalls: String,
    /// The compiled filter, packed by [`seccomp::pack`] (compiled once by the supervisor).
    pub seccomp_filter: Vec<u64>,
    /// Share the host's network namespace (the agent's egress is held by eBPF instead);
    /// otherwise the agent gets a new, empty one.
    #[serde(default)]
    pub host_network: bool,
    /// Extra device nodes bind-mounted into `/dev` (beyond null, zero, full, random, urandom).
    pub devices: Vec<String>,
    /// Host directory holding the agent's socket, bound at `/run` (read-only).
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
    /// Host path of a runtime layer's `usr` tree, bound read-only at `/usr`.
    #[serde(default)]
    pub runtime: Option<PathBuf>,
}

/// The packed seccomp filter for a profile name (`default`, `strict`), compiled once.
/// The packed seccomp filter of `profile`; `memfd`: whether `memfd_create` stays allowed
/// (only for agents that BPF LSM holds, see [`seccomp::compile_for`]).
pub fn filter_for(profile: &str, memfd: bool) -> Result<Vec<u64>, String> {
    let p: seccomp::Profile = profile
        .parse()
        .map_err(|e| format!("syscalls profile {profile:?}: {e}"))?;
    seccomp::packed(p, memfd)
        .map(<[u64]>::to_vec)
        .map_err(|e| e.to_string())
}

/// The environment every agent starts with (the manifest's `env` is added to it).
pub fn base_env() -> Vec<String> {
    [
        "PATH=/bin:/usr/bin:/sbin:/usr/sbin",
        "HOME=/tmp",
        "TMPDIR=/tmp",
    ]
    .map(String::from)
    .to_vec()
}

/// What the init reported after setting up the sandbox and exec'ing the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Landlock as applied (e.g. `full (ABI 6)`, `unsupported`).
    pub landlock: String,
    /// The seccomp profile installed.
    pub seccomp: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("creating a pipe for agent {agent}: {source}")]
    Pipe { agent: String, source: io::Error },
    #[error("opening cgroup directory {path} for CLONE_INTO_CGROUP: {source}")]
    CgroupDir { path: PathBuf, source: io::Error },
    #[error(
        "clone3 into new namespaces for agent {agent} failed: {source} (is this root on Linux >= 5.7?)"
    )]
    Clone { agent: String, source: io::Error },
    #[error("placing agent {agent} (pid {pid}) in its cgroup: {source}")]
    Cgroup {
        agent: String,
        pid: i32,
        source: crate::cgroup::CgroupError,
    },
    #[error("sending the sandbox spec to agent {agent}'s init: {source}")]
    SendSpec { agent: String, source: io::Error },
    #[error("agent {agent}: sandbox setup failed: {reason}")]
    Setup { agent: String, reason: String },
    #[error("agent {agent}: no report from the sandbox init within {secs} s")]
    ReportTimeout { agent: String, secs: u64 },
}

/// A started sandbox: the init's pid and pidfd, the read end of its log pipe, and the report.
pub struct Started {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub log: OwnedFd,
    pub report: Report,
}

/// Starts `spec` in a new sandbox. `cgroup_v2_dir` (the agent's cgroup2 directory, if any) is
/// entered atomically by `clone3`; `place` must add the new pid to any other (v1) hierarchies
/// and runs before the init reads its spec, so the agent never runs outside its cgroups.
pub fn spawn(
    spec: &Spec,
    cgroup_v2_dir: Option<&std::path::Path>,
    place: impl FnOnce(i32) -> Result<(), crate::cgroup::CgroupError>,
) -> Result<Started, SandboxError> {
    let agent = || spec.name.clone();
    let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
    let (spec_r, spec_w) = pipe().map_err(|e| SandboxError::Pipe {
        agent: agent(),
        source: e.into(),
    })?;
    let (report_r, report_w) = pipe().map_err(|e| SandboxError::Pipe {
        agent: agent(),
        source: e.into(),
    })?;
    let (log_r, log_w) = pipe().map_err(|e| SandboxError::Pipe {
        agent: agent(),
        source: e.into(),
    })?;
    let devnull = File::open("/dev/null").map_err(|e| SandboxError::Pipe {
        agent: agent(),
        source: e,
    })?;

    let plan = sys::ExecPlan::new("/proc/self/exe", &["nanoclaw-init", init::ARG], &[])
        .and_then(|mut p| {
            p.fd(devnull.as_fd(), 0)?;
            p.fd(log_w.as_fd(), 1)?;
            p.fd(log_w.as_fd(), 2)?;
            p.fd(spec_r.as_fd(), 3)?;
            p.fd(report_w.as_fd(), 4)?;
            p.fd(log_r.as_fd(), LOG_READ_FD)?;
            Ok(p)
        })
        .map_err(|e| SandboxError::Pipe {
            agent: agent(),
            source: e,
        })?;
    let cg_dir = cgroup_v2_dir
        .map(|p| {
            File::open(p).map_err(|e| SandboxError::CgroupDir {
                path: p.to_path_buf(),
                source: e,
            })
        })
        .transpose()?;
    let child = sys::clone3_exec(
        if spec.host_network {
            sys::SANDBOX_NAMESPACES & !(libc::CLONE_NEWNET as u64)
        } else {
            sys::SANDBOX_NAMESPACES
        },
        cg_dir.as_ref().map(|f| f.as_fd()),
        &plan,
    )
    .map_err(|e| SandboxError::Clone {
        agent: agent(),
        source: e,
    })?;
    // Our copies of the child's ends: closing them lets EOF mean "child gone".
    drop((spec_r, report_w, log_w, devnull, cg_dir));
    drop(plan);

    let kill_child = |child: &sys::Child| {
        let _ = rustix::process::pidfd_send_signal(&child.pidfd, rustix::process::Signal::KILL);
        let _ = rustix::process::waitid(
            rustix::process::WaitId::PidFd(child.pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        );
    };
    let mut json = serde_json::to_vec(spec).map_err(|e| SandboxError::SendSpec {
        agent: agent(),
        source: e.into(),
    })?;
    json.push(b'\n');
    let mut spec_w = File::from(spec_w);
    if let Err(e) = spec_w.write_all(&json) {
        kill_child(&child);
        return Err(SandboxError::SendSpec {
            agent: agent(),
            source: e,
        });
    }
    if let Err(e) = place(child.pid) {
        kill_child(&child);
        return Err(SandboxError::Cgroup {
            agent: agent(),
            pid: child.pid,
            source: e,
        });
    }
    if let Err(e) = spec_w.write_all(GO) {
        kill_child(&child);
        return Err(SandboxError::SendSpec {
            agent: agent(),
            source: e,
        });
    }
    drop(spec_w);
    match read_report(&report_r) {
        Ok(Ok(report)) => Ok(Started {
            pid: child.pid,
            pidfd: child.pidfd,
            log: log_r,
            report,
        }),
        Ok(Err(reason)) => {
            kill_child(&child);
            Err(SandboxError::Setup {
                agent: agent(),
                reason,
            })
        }
        Err(()) => {
            kill_child(&child);
            Err(SandboxError::ReportTimeout {
                agent: agent(),
                secs: REPORT_TIMEOUT.as_secs(),
            })
        }
    }
}

/// Reads the init's one-line report: `{"ok":{...}}` or `{"err":"..."}`. EOF without a line means
/// the init died before reporting. `Err(())` is a timeout.
fn read_report(fd: &OwnedFd) -> Result<Result<Report, String>, ()> {
    let deadline = std::time::Instant::now() + REPORT_TIMEOUT;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(());
        }
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let ts = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => return Err(()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Ok(Err(format!("waiting for the init's report: {e}"))),
        }
        match rustix::io::read(fd, &mut chunk) {
            Ok(0) => break,
            Ok(n) if buf.len() + n <= 4096 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return Ok(Err("the init's report is too long".into())),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Ok(Err(format!("reading the init's report: {e}"))),
        }
    }
    if buf.is_empty() {
        return Ok(Err(
            "the sandbox init exited before reporting (could it exec /proc/self/exe?)".into(),
        ));
    }
    Ok(match serde_json::from_slice::<InitReport>(&buf) {
        Ok(InitReport::Ok(r)) => Ok(r),
        Ok(InitReport::Err(e)) => Err(e),
        Err(e) => Err(format!("unreadable report from the sandbox init: {e}")),
    })
}

/// The line the init writes on fd 4.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum InitReport {
    Ok(Report),
    Err(String),
}

/// The byte that tells the init it is in all its cgroups and may fork the agent.
const GO: &[u8] = b"G";

/// Reads the spec line from the init's fd 3 (size-capped). The reader is left positioned at
/// the go byte (see [`wait_go`]).
pub(crate) fn read_spec(r: &mut impl std::io::BufRead) -> Result<Spec, String> {
    let mut buf = Vec::new();
    r.take(SPEC_MAX as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|e| format!("reading the sandbox spec: {e}"))?;
    if buf.len() > SPEC_MAX {
        return Err(format!("sandbox spec is larger than {SPEC_MAX} bytes"));
    }
    serde_json::from_slice(&buf).map_err(|e| format!("invalid sandbox spec: {e}"))
}

/// Blocks until the supervisor's go byte arrives; EOF or anything else means "do not start".
pub(crate) fn wait_go(r: &mut impl Read) -> Result<(), String> {
    let mut b = [0u8; 1];
    match r.read_exact(&mut b) {
        Ok(()) if b == GO => Ok(()),
        Ok(()) => Err(format!(
            "unexpected byte {:#x} instead of the go byte",
            b[0]
        )),
        Err(e) => Err(format!(
            "the supervisor did not confirm cgroup placement ({e}); not starting the agent"
        )),
    }
}
