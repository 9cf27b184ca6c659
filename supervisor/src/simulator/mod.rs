//! `nanoclaw sim --agent DIR ...`: a complete supervisor on a developer's machine.
//!
//! The same daemon as on a device (same sandbox, cgroups, eBPF, seccomp, Landlock) on the
//! `sim` board with a throw-away state directory, so an agent author sees how the agent fares
//! under production restrictions before shipping it: every security decision is printed as it
//! happens, and at the end a report per agent says what was denied and the grant that would
//! allow it, which grants went unused, peak memory against the budget and the energy used.
//! Without `--policy` the policy grants exactly what each manifest requests.

mod report;

use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::control::{Request, client, exit};

const USAGE: &str = "usage: nanoclaw sim --agent DIR|FILE... [--runtime DIR|FILE]... [--policy FILE] [--seconds N] [--json] [--keep]
  DIR holds manifest.json and rootfs/ (a bundle directory), FILE is a bundle archive (.nclaw);
  --runtime installs a runtime layer the agents name (docs/RUNTIMES.md); runs as root.
  Ends after N seconds, when every agent is a task that has finished, or on Ctrl-C.";

struct Opts {
    agents: Vec<PathBuf>,
    runtimes: Vec<PathBuf>,
    policy: Option<PathBuf>,
    seconds: Option<u64>,
    json: bool,
    keep: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        agents: Vec::new(),
        runtimes: Vec::new(),
        policy: None,
        seconds: None,
        json: false,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--agent" => o.agents.push(PathBuf::from(v()?)),
            "--runtime" => o.runtimes.push(PathBuf::from(v()?)),
            "--policy" => o.policy = Some(PathBuf::from(v()?)),
            "--seconds" => {
                let s = v()?;
                o.seconds = Some(
                    s.parse()
                        .ok()
                        .filter(|n| (1..=86_400).contains(n))
                        .ok_or_else(|| format!("--seconds wants 1 to 86400, got {s:?}"))?,
                );
            }
            "--json" => o.json = true,
            "--keep" => o.keep = true,
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    if o.agents.is_empty() {
        return Err("give at least one --agent DIR".into());
    }
    Ok(o)
}

pub fn main(args: &[String]) -> u8 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            crate::log!("nanoclaw sim: {e}\n{USAGE}");
            return exit::USAGE;
        }
    };
    if !rustix::process::geteuid().is_root() {
        crate::log!(
            "nanoclaw sim: the sandbox needs root (cgroups, namespaces, eBPF): run it with sudo"
        );
        return exit::PERMISSION;
    }
    let dir = std::env::temp_dir().join(format!("nanoclaw-sim-{}", std::process::id()));
    let code = match Sim::prepare(&o, &dir).and_then(|mut s| s.run(&o)) {
        Ok(()) => exit::OK,
        Err(e) => {
            crate::log!("nanoclaw sim: {e}");
            exit::FAILED
        }
    };
    if o.keep {
        crate::log!("nanoclaw sim: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    code
}

struct Sim {
    dir: PathBuf,
    socket: PathBuf,
    subtree: String,
    daemon: Option<Child>,
    generated_policy: bool,
}

impl Sim {
    /// The temporary device: agents linked in, a policy, device.json.
    fn prepare(o: &Opts, dir: &Path) -> Result<Sim, String> {
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let agents_dir = dir.join("agents");
        std::fs::create_dir_all(&agents_dir).map_err(|e| io(&dir.display().to_string(), e))?;
        let mut grants = serde_json::Map::new();
        for (i, a) in o.agents.iter().enumerate() {
            let src = std::fs::canonicalize(a).map_err(|e| io(&a.display().to_string(), e))?;
            let src = as_directory(&src, &dir.join(format!("agent-{i}")))?;
            let m = crate::agents::install::check(&src).map_err(|e| e.to_string())?;
            let name = m.manifest.name.clone();
            if grants.contains_key(&name) {
                return Err(format!("two --agent directories are named {name:?}"));
            }
            std::os::unix::fs::symlink(&src, agents_dir.join(&name))
                .map_err(|e| io("linking the agent", e))?;
            // The grant a policy would need: the manifest's requests, as written.
            let raw: Value = std::fs::read(src.join("manifest.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let mut grant = raw["requests"].clone();
            // A manifest that does not name a profile asks for `default`; a policy that does
            // not name one grants `strict`: the grant says it.
            if grant.get("syscalls").is_none() {
                grant["syscalls"] = json!("default");
            }
            if let Some(rt) = &m.manifest.runtime {
                grant["runtimes"] = json!([rt]);
            }
            grants.insert(name, grant);
        }
        let policy = dir.join("policy.json");
        let generated_policy = o.policy.is_none();
        let text = match &o.policy {
            Some(p) => std::fs::read(p).map_err(|e| io(&p.display().to_string(), e))?,
            None => serde_json::to_vec_pretty(&json!({
                "version": 1,
                "signers": [],
                "device": { "memory_reserve": "16MiB" },
                "agents": grants,
            }))
            .map_err(|e| e.to_string())?,
        };
        std::fs::write(&policy, text).map_err(|e| io("writing the policy", e))?;
        let socket = dir.join("ctl.sock");
        let subtree = format!("nanoclaw-sim-{}", std::process::id());
        let device = json!({
            "state_dir": dir.join("state"),
            "socket": socket,
            "board": "sim",
            "agents_dir": agents_dir,
            "policy": policy,
            "allow_local_policy": true,
            "allow_unsigned": true,
            "cgroup_subtree": subtree,
            "stop_grace_s": 3,
            "syscall_baseline_s": 5,
            // Short tasks get their energy attributed before they end.
            "energy_period_ms": 250,
        });
        let config = dir.join("device.json");
        std::fs::write(&config, device.to_string()).map_err(|e| io("writing device.json", e))?;
        let log = std::fs::File::create(dir.join("daemon.log")).map_err(|e| io("daemon.log", e))?;
        let exe = std::env::current_exe().map_err(|e| io("finding this program", e))?;
        // Its own process group: Ctrl-C in the terminal ends the simulation, and the report
        // is read from the daemon before it is stopped.
        let daemon = Command::new(exe)
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| io("daemon.log", e))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| io("starting the daemon", e))?;
        Ok(Sim {
            dir: dir.to_path_buf(),
            socket,
            subtree,
            daemon: Some(daemon),
            generated_policy,
        })
    }

    fn call(&self, req: &Request) -> Result<Value, String> {
        client::value(&self.socket, req, Duration::from_secs(30))
    }

    fn daemon_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn run(&mut self, o: &Opts) -> Result<(), String> {
        let t0 = Instant::now();
        // The daemon is up when its socket answers.
        let status = loop {
            if let Ok(v) = self.call(&Request::Status) {
                break v;
            }
            let exited = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten());
            if let Some(st) = exited {
                return Err(format!("the daemon exited ({st}):\n{}", self.daemon_log()));
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "the daemon did not come up:\n{}",
                    self.daemon_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Layers: an unsigned copy (the simulated device trusts no signer, but allows
        // unsigned bundles), installed through the daemon like on a device.
        for (i, r) in o.runtimes.iter().enumerate() {
            let layer = self.dir.join(format!("runtime-{i}.nclaw"));
            if r.is_dir() {
                crate::bundle::pack::pack(r, &layer, false).map_err(|e| e.to_string())?;
            } else {
                std::fs::copy(r, &layer).map_err(|e| format!("{}: {e}", r.display()))?;
            }
            let done = self
                .call(&Request::Install { path: layer })
                .map_err(|e| format!("runtime layer {}: {e}", r.display()))?;
            println!(
                "nanoclaw sim: {}",
                done["result"].as_str().unwrap_or("installed")
            );
        }
        let p = &status["posture"];
        println!(
            "nanoclaw sim: {} agent(s) on the sim board with production enforcement; policy: {}\n  cgroups {}; seccomp {}; landlock {}; egress {}; lsm {}\n  Ctrl-C ends the run and prints the report",
            o.agents.len(),
            if self.generated_policy {
                "exactly what each manifest requests".to_owned()
            } else {
                o.policy
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            },
            p["cgroup"].as_str().unwrap_or("?"),
            p["seccomp"].as_str().unwrap_or("?"),
            p["landlock"].as_str().unwrap_or("?"),
            p["egress"].as_str().unwrap_or("?"),
            p["lsm"].as_str().unwrap_or("?"),
        );
        let sigs = crate::sys::signalfd(&[libc::SIGINT, libc::SIGTERM])
            .map_err(|e| format!("signals: {e}"))?;
        let mut last_seq = 0u64;
        loop {
            last_seq = self.print_new(last_seq, t0);
            if o.seconds
                .is_some_and(|s| t0.elapsed() >= Duration::from_secs(s))
            {
                break;
            }
            if self.all_tasks_done() {
                println!(
                    "[{:>6.1}s] every agent has finished",
                    t0.elapsed().as_secs_f64()
                );
                break;
            }
            let mut fds = [rustix::event::PollFd::new(
                &sigs,
                rustix::event::PollFlags::IN,
            )];
            let ts = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 250_000_000,
            };
            if rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0) > 0 {
                println!();
                break;
            }
            if let Some(st) = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten())
            {
                return Err(format!("the daemon exited ({st}):\n{}", self.daemon_log()));
            }
        }
        self.print_new(last_seq, t0);
        let report = self.report(t0.elapsed().as_secs_f64())?;
        if o.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else {
            print!("{}", report::render(&report));
        }
        let _ = std::io::stdout().flush();
        Ok(())
    }

    /// Prints audit records newer than `after`; returns the newest seq seen.
    fn print_new(&self, after: u64, t0: Instant) -> u64 {
        let Ok(v) = self.call(&Request::Audit {
            agent: None,
            n: 1000,
        }) else {
            return after;
        };
        let mut last = after;
        for r in v.as_array().into_iter().flatten() {
            let seq = r["seq"].as_u64().unwrap_or(0);
            if seq <= after {
                continue;
            }
            last = last.max(seq);
            let kind = r["kind"].as_str().unwrap_or("");
            let tag = match kind {
                k if k.starts_with("denied_") => "DENY",
                "admission_denied" | "install_refused" | "grant_refused" | "channel_refused"
                | "bad_message" | "policy_rejected" => "DENY",
                "oom_kill" | "crash_loop" | "stop_timeout" => "KILL",
                "posture" | "syscall_anomaly" | "violation" | "health_check" | "energy"
                | "battery" | "sandbox_error" => "WARN",
                _ => "    ",
            };
            println!(
                "[{:>6.1}s] {tag} {:<14} {:<16} {}",
                t0.elapsed().as_secs_f64(),
                r["agent"].as_str().filter(|a| !a.is_empty()).unwrap_or("-"),
                kind,
                r["reason"].as_str().unwrap_or("")
            );
        }
        last
    }

    /// Every agent is a task and none is running or about to restart.
    fn all_tasks_done(&self) -> bool {
        let Ok(v) = self.call(&Request::Agents) else {
            return false;
        };
        let agents = v.as_array().cloned().unwrap_or_default();
        !agents.is_empty()
            && agents.iter().all(|a| {
                a["mode"] == "task"
                    && matches!(a["state"].as_str(), Some("exited" | "failed" | "stopped"))
            })
    }

    fn report(&self, seconds: f64) -> Result<Value, String> {
        let agents = self.call(&Request::Agents)?;
        let status = self.call(&Request::Status)?;
        let battery = self.call(&Request::Battery)?;
        let mut out = Vec::new();
        for info in agents.as_array().into_iter().flatten() {
            let name = info["name"].as_str().unwrap_or("");
            let find = |list: &Value| {
                list.as_array()
                    .and_then(|l| l.iter().find(|e| e["agent"] == name).cloned())
                    .unwrap_or_default()
            };
            let records = self.call(&Request::Audit {
                agent: Some(name.to_owned()),
                n: 5000,
            })?;
            out.push(report::agent(
                name,
                info,
                &find(&status["enforcement"]),
                &find(&battery["agents"]),
                records.as_array().map_or(&[][..], Vec::as_slice),
            ));
        }
        Ok(json!({ "seconds": seconds, "board": status["board"], "agents": out }))
    }
}

impl Drop for Sim {
    /// Stops the daemon (our child, by its PID) and removes its cgroups.
    fn drop(&mut self) {
        let Some(mut d) = self.daemon.take() else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(d.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let t0 = Instant::now();
        while d.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = d.kill();
                let _ = d.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(layout) = crate::cgroup::detect(Path::new(crate::cgroup::DEFAULT_ROOT)) {
            let _ = crate::cgroup::remove_subtree(&layout, &self.subtree);
        }
    }
}

/// An agent as a directory the daemon can run: a bundle directory whose manifest has its
/// `requests` as it is; an archive, or a directory whose requests are declared in code
/// (`bundle::derive`), packed as `bundle pack` would and unpacked into `scratch`.
fn as_directory(src: &Path, scratch: &Path) -> Result<PathBuf, String> {
    let has_requests = || {
        std::fs::read(src.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|m| m.get("requests").is_some())
    };
    if src.is_dir() && has_requests() {
        return Ok(src.to_path_buf());
    }
    let archive = if src.is_dir() {
        let f = scratch.with_extension("nclaw");
        crate::bundle::pack::pack(src, &f, false).map_err(|e| e.to_string())?;
        f
    } else {
        src.to_path_buf()
    };
    let stream = crate::bundle::unpack::open_archive(&archive).map_err(|e| e.to_string())?;
    crate::bundle::unpack::unpack(stream, scratch, crate::bundle::unpack::Limits::default())
        .map_err(|e| format!("{}: {e}", archive.display()))?;
    Ok(scratch.to_path_buf())
}
