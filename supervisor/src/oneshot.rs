//! `nanoclaw run`: one command in a full agent sandbox, without a daemon or a bundle.
//!
//! For field engineers ("does this binary run under our sandbox?") and for the start-latency
//! benchmark, which compares it process-for-process with `bwrap` and `runc`. It uses exactly
//! the daemon's path — the same cgroup code, `sandbox::spawn`, init, seccomp and Landlock — in
//! a throwaway cgroup `nanoclaw-run/agents/run-<pid>` that is removed afterwards.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use crate::cgroup::{self, Limits};
use crate::config::units::ByteSize;
use crate::sandbox::{self, Spec};

#[derive(Debug, Clone, PartialEq)]
pub struct RunOpts {
    pub rootfs: PathBuf,
    pub exec: Vec<String>,
    pub memory: u64,
    pub pids: u32,
    pub cpus: f64,
    pub scratch: u64,
    pub syscalls: String,
    pub uid: u32,
    pub cgroup_root: PathBuf,
    /// Print `spawn_to_exec_us N` on stderr.
    pub timing: bool,
}

impl Default for RunOpts {
    fn default() -> Self {
        Self {
            rootfs: PathBuf::new(),
            exec: Vec::new(),
            memory: 64 << 20,
            pids: 32,
            cpus: 1.0,
            scratch: 16 << 20,
            syscalls: "default".into(),
            uid: 60999,
            cgroup_root: PathBuf::from(cgroup::DEFAULT_ROOT),
            timing: false,
        }
    }
}

/// Parses `run` options (everything after `run`).
pub fn parse(args: &[String]) -> Result<RunOpts, String> {
    let mut o = RunOpts::default();
    let mut it = args.iter();
    let size = |v: &str| {
        v.parse::<ByteSize>()
            .map(|b| b.0)
            .map_err(|e| e.to_string())
    };
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--rootfs" => o.rootfs = PathBuf::from(val("--rootfs")?),
            "--memory" => o.memory = size(&val("--memory")?)?,
            "--scratch" => o.scratch = size(&val("--scratch")?)?,
            "--pids" => {
                o.pids = val("--pids")?
                    .parse()
                    .map_err(|_| "--pids wants a number".to_owned())?
            }
            "--cpus" => {
                o.cpus = val("--cpus")?
                    .parse()
                    .map_err(|_| "--cpus wants a number".to_owned())?
            }
            "--uid" => {
                o.uid = val("--uid")?
                    .parse()
                    .map_err(|_| "--uid wants a number".to_owned())?
            }
            "--syscalls" => o.syscalls = val("--syscalls")?,
            "--cgroup-root" => o.cgroup_root = PathBuf::from(val("--cgroup-root")?),
            "--timing" => o.timing = true,
            "--" => {
                o.exec = it.by_ref().cloned().collect();
            }
            other => return Err(format!("run: unknown option {other}")),
        }
    }
    if o.rootfs.as_os_str().is_empty() {
        return Err("run needs --rootfs DIR".into());
    }
    if o.exec.is_empty() {
        return Err("run needs a command after --".into());
    }
    if o.uid == 0 {
        return Err("run: --uid 0 is not allowed: agents never run as root".into());
    }
    if o.cpus.is_nan() || o.cpus <= 0.0 {
        return Err("run: --cpus must be more than 0".into());
    }
    Ok(o)
}

/// Runs the command and returns its exit code (128 + signal when killed).
pub fn run(o: &RunOpts) -> Result<u8, String> {
    for mp in crate::sandbox::mount::MOUNT_POINTS {
        let p = o.rootfs.join(mp);
        if !p.is_dir() {
            std::fs::create_dir_all(&p)
                .map_err(|e| format!("creating mount point {}: {e}", p.display()))?;
        }
    }
    let layout = cgroup::detect(&o.cgroup_root).map_err(|e| e.to_string())?;
    let cg = cgroup::open(layout, "nanoclaw-run").map_err(|e| e.to_string())?;
    let name = format!("run-{}", std::process::id());
    let period = cgroup::DEFAULT_CPU_PERIOD_US;
    let limits = Limits {
        memory_max: o.memory,
        memory_high: None,
        pids_max: u64::from(o.pids),
        cpu_quota_us: Some(((o.cpus * period as f64) as u64).max(1000)),
        cpu_period_us: period,
    };
    cg.create(&name, &limits).map_err(|e| e.to_string())?;
    let result = run_in(o, cg.as_ref(), &name);
    let _ = cg.kill_all(&name);
    let _ = cg.remove(&name);
    result
}

fn run_in(o: &RunOpts, cg: &dyn cgroup::Cgroups, name: &str) -> Result<u8, String> {
    let spec = Spec {
        name: name.to_owned(),
        rootfs: o.rootfs.clone(),
        exec: o.exec.clone(),
        env: sandbox::base_env(),
        uid: o.uid,
        gid: o.uid,
        scratch_bytes: o.scratch,
        nproc: u64::from(o.pids),
        syscalls: o.syscalls.clone(),
        seccomp_filter: sandbox::filter_for(&o.syscalls, false)?,
        host_network: false,
        devices: Vec::new(),
        socket_dir: None,
        runtime: None,
    };
    let t0 = Instant::now();
    let v2 = cg.unified_dir(name);
    let started = sandbox::spawn(&spec, v2.as_deref(), |pid| cg.add_process(name, pid))
        .map_err(|e| e.to_string())?;
    let exec_us = t0.elapsed().as_micros();
    if o.timing {
        crate::log!("spawn_to_exec_us {exec_us}");
    }
    let mut log = std::fs::File::from(started.log);
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 8192];
    loop {
        match log.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = out.write_all(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = out.flush();
    let status = rustix::process::waitid(
        rustix::process::WaitId::PidFd(started.pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    )
    .map_err(|e| format!("waiting for the sandbox: {e}"))?;
    Ok(status
        .and_then(|s| {
            s.exit_status()
                .or_else(|| s.terminating_signal().map(|sig| 128 + sig))
        })
        .map_or(255, |c| c.clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_options_and_command() {
        let o = parse(&args(
            "--rootfs /r --memory 32MiB --pids 4 --syscalls strict -- /bin/x a -b",
        ))
        .unwrap();
        assert_eq!(o.memory, 32 << 20);
        assert_eq!(o.pids, 4);
        assert_eq!(o.exec, args("/bin/x a -b"));
        assert_eq!(o.syscalls, "strict");
    }

    #[test]
    fn rejects_missing_parts() {
        assert!(parse(&args("-- /bin/x")).unwrap_err().contains("--rootfs"));
        assert!(parse(&args("--rootfs /r")).unwrap_err().contains("command"));
        assert!(
            parse(&args("--rootfs /r --uid 0 -- /x"))
                .unwrap_err()
                .contains("root")
        );
        assert!(parse(&args("--rootfs /r --memory lots -- /x")).is_err());
    }
}
