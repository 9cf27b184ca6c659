//! Harness of the host test tier: the static `nanoclaw` binary and the `demo-agent` example
//! agent against the real kernel — real cgroups, namespaces, seccomp and processes. Needs root.
//!
//! Every test builds a [`Device`]: a temporary directory holding `device.json`, `policy.json`
//! and `agents/<name>/{manifest.json, rootfs/bin/demo-agent}`, with its own cgroup subtree
//! (`nanoclaw-test-<pid>-<n>`), control socket, state directory and agent uid range, so tests
//! run in parallel without sharing anything. [`Device::start`] runs `nanoclaw daemon` as a child
//! of the test; dropping the `Device` stops that daemon, kills whatever is still in *its own*
//! cgroup subtree (and nothing else) and removes the subtree from every hierarchy.
//!
//! Waits poll for a condition ([`Device::wait`], [`wait_until`]) with generous timeouts; no
//! test relies on a fixed sleep where a condition exists, and no test asserts on timing.

// Test-only support code: a failing setup step (a missing binary, an unwritable temp dir) must
// fail the calling test with its message, so panicking is the right behaviour here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod cdp;
pub mod fleet;

/// Where cgroup filesystems are mounted on the test host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Hierarchies the supervisor may create directories in (cgroup v1 + the hybrid cgroup2 mount;
/// see `supervisor/src/cgroup/v1.rs`). On a pure cgroup v2 host only the root is used.
const V1_HIERARCHIES: [&str; 5] = ["memory", "pids", "cpu", "freezer", "unified"];
/// Agents per fixture: each fixture owns `uid_base .. uid_base + MAX_AGENTS`.
const MAX_AGENTS: u32 = 16;
/// Generous bound for anything a healthy daemon does in well under a second.
pub const LONG: Duration = Duration::from_secs(30);

/// The two static binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    pub nanoclaw: PathBuf,
    pub demo_agent: PathBuf,
}

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The binaries: `NANOCLAW_BIN` / `NANOCLAW_DEMO_AGENT` when set, else built once per test
/// process with the same command `cargo xtask test` runs first (a no-op when it is fresh).
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let from_env = |k: &str| std::env::var_os(k).map(PathBuf::from);
        let (nanoclaw, demo_agent) = (from_env("NANOCLAW_BIN"), from_env("NANOCLAW_DEMO_AGENT"));
        let bins = match (nanoclaw, demo_agent) {
            (Some(nanoclaw), Some(demo_agent)) => Bins {
                nanoclaw,
                demo_agent,
            },
            (nanoclaw, demo_agent) => {
                let built = build_static();
                Bins {
                    nanoclaw: nanoclaw.unwrap_or(built.nanoclaw),
                    demo_agent: demo_agent.unwrap_or(built.demo_agent),
                }
            }
        };
        for p in [&bins.nanoclaw, &bins.demo_agent] {
            assert!(p.is_file(), "binary {} does not exist", p.display());
        }
        bins
    })
}

fn build_static() -> Bins {
    let root = workspace_root();
    let target = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--release", "--target", &target])
        .args(["-p", "nanoclaw", "-p", "nanoclaw-demo-agent"])
        .status()
        .unwrap_or_else(|e| panic!("running {cargo:?} build: {e}"));
    assert!(
        status.success(),
        "building the static binaries failed ({status}); see the cargo output above"
    );
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"));
    let dir = target_dir.join(&target).join("release");
    Bins {
        nanoclaw: dir.join("nanoclaw"),
        demo_agent: dir.join("demo-agent"),
    }
}

/// Panics unless the test runs as root (cgroups, namespaces and uid switches need it).
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the host tier needs root: run `cargo xtask test` as root"
    );
}

/// Polls `f` every 50 ms until it returns `Some`, or `None` after `timeout`.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The result of one CLI run.
#[derive(Debug, Clone)]
pub struct CliOut {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOut {
    fn from_output(out: std::process::Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs a CLI command to completion.
pub fn run(cmd: &mut Command) -> CliOut {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    CliOut::from_output(out)
}

/// `nanoclaw ARGS` with no socket preset (for usage errors and unreachable daemons).
pub fn nanoclaw(args: &[&str]) -> CliOut {
    run(Command::new(&bins().nanoclaw).args(args))
}

/// True if the cgroup v1 memory hierarchy is mounted (this host: v1 hybrid).
pub fn cgroup_v1() -> bool {
    Path::new(CGROUP_ROOT)
        .join("memory/memory.limit_in_bytes")
        .exists()
}

/// Pids listed in a `cgroup.procs` file (empty if it does not exist).
pub fn read_procs(file: &Path) -> Vec<i32> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// argv of a process, from `/proc/PID/cmdline`.
pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// True if `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            rest.split_whitespace()
                .next()
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

/// Numbers found in `text` right after `key` (e.g. `pid 123` -> 123 for key "pid ").
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A fresh, private device: config, policy, bundles, state, socket and cgroup subtree of its own.
pub struct Device {
    dir: tempfile::TempDir,
    /// `cgroup_subtree` of this device (`nanoclaw-test-<pid>-<n>`).
    pub subtree: String,
    /// First agent uid; agent in slot `i` runs as `uid_base + i`.
    pub uid_base: u32,
    /// `device.json` as written by [`Device::write_configs`]; edit before starting.
    pub device: Value,
    /// `policy.json` as written by [`Device::write_configs`].
    pub policy: Value,
    daemon: Option<Child>,
    /// stderr files of every daemon started, in order.
    logs: Vec<PathBuf>,
    /// Environment variables the daemon is started with (a service manager's, say).
    pub daemon_env: Vec<(String, String)>,
    /// Shell commands run before the daemon is exec'd in the same process (`sh -c "CMDS;
    /// exec nanoclaw daemon …"`), as an init script would start it.
    pub daemon_shell: Option<String>,
    /// Where the daemon's stdout and stderr go instead of its log file (`/dev/full`, say).
    pub daemon_output: Option<PathBuf>,
}

impl Default for Device {
    fn default() -> Self {
        Self::new()
    }
}

impl Device {
    /// An empty device (no agents, an empty policy). Builds the binaries on first use.
    pub fn new() -> Self {
        require_root();
        bins();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("nc-")
            .tempdir()
            .expect("creating a temp dir");
        let subtree = format!("nanoclaw-test-{pid}-{n}");
        // Unique per fixture and per test process, so concurrently running tests (even of two
        // `cargo test` runs) never share an agent uid: RLIMIT_NPROC counts per uid.
        let uid_base = 100_000 + ((pid % 1_000_000) * 64 + n % 64) * MAX_AGENTS;
        let socket = dir.path().join("ctl.sock");
        assert!(socket.as_os_str().len() < 100, "{}", socket.display());
        let device = json!({
            "state_dir": "state",
            "socket": socket,
            "board": "sim",
            "agents_dir": "agents",
            "policy": "policy.json",
            "allow_local_policy": true,
            "allow_unsigned": true,
            "cgroup_subtree": subtree,
            "uid_base": uid_base,
            "max_agents": MAX_AGENTS,
            "stop_grace_s": 2,
        });
        let policy = json!({
            "version": 1,
            "signers": [ { "agents": "*", "key": "keys/demo-vendor.pub" } ],
            "device": { "memory_reserve": "64MiB" },
            "agents": {},
        });
        fs::create_dir_all(dir.path().join("agents")).expect("creating agents/");
        Self {
            dir,
            subtree,
            uid_base,
            device,
            policy,
            daemon: None,
            logs: Vec::new(),
            daemon_env: Vec::new(),
            daemon_shell: None,
            daemon_output: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("ctl.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("device.json")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.path().join("policy.json")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    /// The bundle directory of agent `name` (whether or not it exists).
    pub fn bundle(&self, name: &str) -> PathBuf {
        self.path().join("agents").join(name)
    }

    /// Writes a bundle (`manifest.json` + `rootfs/bin/demo-agent`) and, if `grant` is given,
    /// grants it in the policy.
    pub fn add_agent(&mut self, name: &str, manifest: Value, grant: Option<Value>) -> &mut Self {
        let bin = self.bundle(name).join("rootfs/bin");
        fs::create_dir_all(&bin).expect("creating the bundle");
        fs::copy(&bins().demo_agent, bin.join("demo-agent")).expect("copying demo-agent");
        self.write_manifest(name, &manifest);
        if let Some(g) = grant {
            self.grant(name, g);
        }
        self
    }

    /// Overwrites `agents/<name>/manifest.json`.
    pub fn write_manifest(&self, name: &str, manifest: &Value) {
        let dir = self.bundle(name);
        fs::create_dir_all(&dir).expect("creating the bundle");
        fs::write(
            dir.join("manifest.json"),
            serde_json::to_vec_pretty(manifest).expect("manifest JSON"),
        )
        .expect("writing manifest.json");
    }

    /// Sets `policy.agents.<name>` (written at the next [`Device::write_configs`]).
    pub fn grant(&mut self, name: &str, grant: Value) -> &mut Self {
        self.policy["agents"][name] = grant;
        self
    }

    /// Adds one of the example agents exactly as `configs/demo` ships it (manifest and grant).
    pub fn add_demo_agent(&mut self, name: &str) -> &mut Self {
        let demo = workspace_root().join("configs/demo");
        let read = |p: PathBuf| -> Value {
            let text = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let manifest = read(demo.join("agents").join(name).join("manifest.json"));
        let grant = read(demo.join("policy.json"))["agents"][name].clone();
        assert!(
            !grant.is_null(),
            "configs/demo/policy.json grants no {name}"
        );
        self.add_agent(name, manifest, Some(grant))
    }

    /// Writes `device.json` and `policy.json` from [`Device::device`] and [`Device::policy`].
    pub fn write_configs(&self) {
        fs::write(
            self.config_path(),
            serde_json::to_vec_pretty(&self.device).expect("device JSON"),
        )
        .expect("writing device.json");
        fs::write(
            self.policy_path(),
            serde_json::to_vec_pretty(&self.policy).expect("policy JSON"),
        )
        .expect("writing policy.json");
    }

    fn spawn_daemon(&mut self) -> &mut Child {
        assert!(self.daemon.is_none(), "a daemon of this device is running");
        let log = self.path().join(format!("daemon-{}.err", self.logs.len()));
        let file = match &self.daemon_output {
            Some(p) => fs::OpenOptions::new().write(true).open(p),
            None => fs::File::create(&log),
        }
        .expect("opening the daemon's output");
        let out = file.try_clone().expect("cloning the daemon log fd");
        let mut cmd = match &self.daemon_shell {
            Some(cmds) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{cmds}; exec \"$0\" \"$@\""))
                    .arg(&bins().nanoclaw);
                c
            }
            None => Command::new(&bins().nanoclaw),
        };
        let child = cmd
            .arg("daemon")
            .arg("--config")
            .arg(self.config_path())
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .spawn()
            .expect("spawning nanoclaw daemon");
        self.logs.push(log);
        self.daemon.insert(child)
    }

    /// Writes the configs and starts `nanoclaw daemon` without waiting for it (for a test that
    /// watches the start-up itself).
    pub fn spawn(&mut self) {
        self.write_configs();
        self.spawn_daemon();
    }

    /// Writes the configs and starts `nanoclaw daemon`; returns once the control socket
    /// accepts connections. Panics (with the daemon's stderr) if the daemon exits instead.
    pub fn start(&mut self) -> &mut Self {
        self.write_configs();
        let socket = self.socket();
        self.spawn_daemon();
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(status) = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.daemon = None;
                panic!(
                    "nanoclaw daemon exited during start-up ({status}):\n{}",
                    self.daemon_stderr()
                );
            }
            if UnixStream::connect(&socket).is_ok() {
                return self;
            }
            assert!(
                Instant::now() < deadline,
                "the control socket {} did not come up within {LONG:?}:\n{}",
                socket.display(),
                self.daemon_stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the daemon on the files as they are (call [`Device::write_configs`] first, then
    /// break what the test is about) and waits for it to exit on its own. Returns its exit code
    /// (`None` if it was still running after `timeout`; it is then stopped) and its stderr.
    pub fn run_expecting_exit(&mut self, timeout: Duration) -> (Option<i32>, String) {
        self.spawn_daemon();
        let status = wait_until(timeout, || {
            self.daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
        });
        let code = match status {
            Some(s) => {
                self.daemon = None;
                Some(s.code().unwrap_or(-1))
            }
            None => {
                self.sigterm();
                None
            }
        };
        (code, self.last_daemon_stderr())
    }

    /// Runs a second daemon on this device's config while the first keeps running (an operator
    /// mistake, or a service manager restarting too early), waits up to `timeout` for it to exit
    /// and returns its exit code (`None` if it was still running; it is then stopped) and stderr.
    pub fn run_second_daemon(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let first = self.daemon.take();
        let (code, stderr) = self.run_expecting_exit(timeout);
        self.daemon = first;
        (code, stderr)
    }

    /// Pid of the running daemon.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|c| c.id() as i32)
    }

    /// The stderr of every daemon this device ran (it prints its audit lines there).
    pub fn daemon_stderr(&self) -> String {
        let mut out = String::new();
        for (i, l) in self.logs.iter().enumerate() {
            out += &format!("--- daemon #{i} stderr ({}) ---\n", l.display());
            out += &fs::read_to_string(l).unwrap_or_default();
        }
        out
    }

    /// The stderr of the latest daemon.
    pub fn last_daemon_stderr(&self) -> String {
        self.logs
            .last()
            .map(|l| fs::read_to_string(l).unwrap_or_default())
            .unwrap_or_default()
    }

    /// SIGKILLs the daemon (agents keep running) and reaps it.
    pub fn kill9(&mut self) {
        let mut c = self.daemon.take().expect("no daemon running");
        c.kill().expect("SIGKILL to the daemon");
        c.wait().expect("reaping the daemon");
    }

    /// Sends `sig` to the daemon and waits for it to exit on its own (panics after [`LONG`]).
    pub fn signal_exit(&mut self, sig: rustix::process::Signal) -> ExitStatus {
        let mut c = self.daemon.take().expect("no daemon running");
        if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
            rustix::process::kill_process(pid, sig).expect("signalling the daemon");
        }
        match wait_until(LONG, || c.try_wait().ok().flatten()) {
            Some(s) => s,
            None => {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the daemon did not exit on {sig:?}");
            }
        }
    }

    /// SIGTERMs the daemon and waits for it (SIGKILL after a minute). Returns its status.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut c = self.daemon.take().expect("no daemon running");
        stop_child(&mut c, Duration::from_secs(60))
    }

    /// `nanoclaw --socket <this device's socket> ARGS`.
    pub fn cli(&self, args: &[&str]) -> CliOut {
        run(self.command().args(args))
    }

    /// A `nanoclaw --socket <socket>` command, to add arguments or a wrapper to.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&bins().nanoclaw);
        c.arg("--socket").arg(self.socket());
        c
    }

    /// Runs `ARGS --json`, asserts exit 0 and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a);
        assert_eq!(
            out.code,
            0,
            "nanoclaw {a:?} failed: {out:?}\n{}",
            self.daemon_stderr()
        );
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("nanoclaw {a:?}: stdout is not JSON ({e}): {out:?}"))
    }

    /// `agents --json`.
    pub fn agents_json(&self) -> Vec<Value> {
        match self.json(&["agents"]) {
            Value::Array(v) => v,
            other => panic!("agents --json is not an array: {other}"),
        }
    }

    /// One agent's row of `agents --json`.
    pub fn agent(&self, name: &str) -> Value {
        self.agents_json()
            .into_iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("agent {name} is not listed"))
    }

    /// Every audit record (`audit -n 100000 --json`), oldest first.
    pub fn audit_json(&self) -> Vec<Value> {
        match self.json(&["audit", "-n", "100000"]) {
            Value::Array(v) => v,
            other => panic!("audit --json is not an array: {other}"),
        }
    }

    /// Audit records of `kind` (any agent).
    pub fn audit_of(&self, kind: &str) -> Vec<Value> {
        self.audit_json()
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    /// The agent's captured output lines.
    pub fn logs(&self, name: &str) -> Vec<String> {
        self.json(&["logs", name, "-n", "10000"])["lines"]
            .as_array()
            .expect("logs --json has lines")
            .iter()
            .map(|l| l.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Polls `f` until it returns `Some` and returns that; panics naming `what` (with the
    /// daemon's stderr) after `timeout`.
    pub fn wait<T>(&self, timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
        wait_until(timeout, f).unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.daemon_stderr()
            )
        })
    }

    /// Waits until the agent's `state` is `state`; returns its row.
    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        self.wait(LONG, &format!("{name} to be {state}"), || {
            let a = self.agent(name);
            (a["state"] == state).then_some(a)
        })
    }

    /// Waits until some log line of `name` contains `needle`; returns all lines.
    pub fn wait_log(&self, name: &str, needle: &str) -> Vec<String> {
        self.wait(LONG, &format!("{name} to print {needle:?}"), || {
            let l = self.logs(name);
            l.iter().any(|l| l.contains(needle)).then_some(l)
        })
    }

    /// A file of the agent's cgroup in `controller` (`memory`, `pids`, ...; ignored on v2).
    pub fn cgroup_file(&self, controller: &str, agent: &str, file: &str) -> PathBuf {
        let root = Path::new(CGROUP_ROOT);
        let base = if cgroup_v1() {
            root.join(controller)
        } else {
            root.to_path_buf()
        };
        base.join(&self.subtree)
            .join("agents")
            .join(agent)
            .join(file)
    }

    /// Processes in the agent's cgroup (the memory hierarchy on v1).
    pub fn procs(&self, agent: &str) -> Vec<i32> {
        read_procs(&self.cgroup_file("memory", agent, "cgroup.procs"))
    }

    /// The agent's hard memory limit as the kernel has it.
    pub fn memory_limit(&self, agent: &str) -> u64 {
        let file = if cgroup_v1() {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        let p = self.cgroup_file("memory", agent, file);
        let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", p.display()))
    }

    /// This device's subtree in every hierarchy that exists on this host.
    fn subtree_dirs(&self) -> Vec<PathBuf> {
        let root = Path::new(CGROUP_ROOT);
        if cgroup_v1() {
            V1_HIERARCHIES
                .iter()
                .map(|h| root.join(h).join(&self.subtree))
                .collect()
        } else {
            vec![root.join(&self.subtree)]
        }
    }

    /// Every pid in any cgroup of this device's subtree, in any hierarchy.
    pub fn subtree_procs(&self) -> BTreeSet<i32> {
        let mut out = BTreeSet::new();
        for d in self.subtree_dirs() {
            for f in walk_dirs(&d) {
                out.extend(read_procs(&f.join("cgroup.procs")));
            }
        }
        out
    }

    /// Pids in the agents' cgroups of this device (not the supervisor's own cgroup).
    pub fn agent_procs(&self) -> BTreeSet<i32> {
        let mut out = BTreeSet::new();
        for d in self.subtree_dirs() {
            for f in walk_dirs(&d.join("agents")) {
                out.extend(read_procs(&f.join("cgroup.procs")));
            }
        }
        out
    }

    /// Kills what is left in this device's own subtree. Only processes in these cgroups are
    /// signalled: they were started by this device's daemon.
    fn kill_leftovers(&self) {
        let unified_kill = |d: &Path| {
            for dir in walk_dirs(d) {
                let kill = dir.join("cgroup.kill");
                if kill.exists() {
                    let _ = fs::write(kill, "1");
                }
                let freeze = dir.join("freezer.state");
                if freeze.exists() {
                    let _ = fs::write(freeze, "THAWED");
                }
            }
        };
        for d in self.subtree_dirs() {
            unified_kill(&d);
        }
        let gone = wait_until(Duration::from_secs(5), || {
            let left = self.subtree_procs();
            if left.is_empty() {
                return Some(());
            }
            for pid in left {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            None
        });
        if gone.is_none() {
            eprintln!(
                "warning: processes {:?} are still in cgroup subtree {}",
                self.subtree_procs(),
                self.subtree
            );
        }
    }

    /// Removes this device's subtree from every hierarchy, deepest first.
    fn remove_subtree(&self) {
        for d in self.subtree_dirs() {
            if !d.exists() {
                continue;
            }
            let mut dirs = walk_dirs(&d);
            dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for dir in dirs {
                let ok = wait_until(Duration::from_secs(5), || {
                    (fs::remove_dir(&dir).is_ok() || !dir.exists()).then_some(())
                });
                if ok.is_none() {
                    eprintln!("warning: cannot remove cgroup {}", dir.display());
                }
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.daemon_stderr());
        }
        if let Some(mut c) = self.daemon.take() {
            stop_child(&mut c, Duration::from_secs(30));
        }
        self.kill_leftovers();
        self.remove_subtree();
        // Pinned eBPF maps and links of this device (a clean daemon stop removes them; a
        // killed one leaves them, by design, for the next daemon).
        let _ = fs::remove_dir_all(Path::new("/sys/fs/bpf").join(&self.subtree));
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
fn stop_child(c: &mut Child, grace: Duration) -> ExitStatus {
    if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    match wait_until(grace, || c.try_wait().ok().flatten()) {
        Some(s) => s,
        None => {
            let _ = c.kill();
            c.wait().expect("reaping the daemon")
        }
    }
}

/// `dir` and every directory below it (cgroup directories), parents first.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        out.push(d);
    }
    out
}

/// Writes `bytes` at the end of `path`.
pub fn append(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(bytes).expect("appending");
}

/// A minimal manifest running `demo-agent ARGS...` with the given memory request.
pub fn manifest(name: &str, mode: &str, args: &[&str], memory: &str) -> Value {
    let mut exec = vec!["/bin/demo-agent".to_owned()];
    exec.extend(args.iter().map(|s| (*s).to_owned()));
    json!({
        "name": name,
        "version": "1.0.0",
        "mode": mode,
        "exec": exec,
        "requests": { "memory": memory, "scratch": "1MiB" },
    })
}

/// A grant with `memory`, 8 pids, 1 MiB scratch and the default syscall profile.
pub fn grant(memory: &str) -> Value {
    json!({ "memory": memory, "cpus": 0.5, "pids": 8, "scratch": "1MiB", "syscalls": "default" })
}

/// `nanoclaw bundle pack SRC -o FILE` then `bundle sign FILE --key KEY`, both must succeed.
pub fn pack_and_sign(src: &Path, file: &Path, key: &Path) {
    let nc = |args: &[&std::ffi::OsStr]| run(Command::new(&bins().nanoclaw).args(args));
    let out = nc(&[
        "bundle".as_ref(),
        "pack".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        file.as_os_str(),
    ]);
    assert_eq!(out.code, 0, "bundle pack: {out:?}");
    let out = nc(&[
        "bundle".as_ref(),
        "sign".as_ref(),
        file.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
    ]);
    assert_eq!(out.code, 0, "bundle sign: {out:?}");
}

/// A key pair made with openssl, as PEM files `DIR/NAME.pem` (private, PKCS#8) and
/// `DIR/NAME.pub`: `ec` true for ECDSA P-256, false for Ed25519.
pub fn keypair(dir: &Path, name: &str, ec: bool) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub"));
    let mut genpkey = Command::new("openssl");
    genpkey.arg("genpkey");
    if ec {
        genpkey.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    } else {
        genpkey.args(["-algorithm", "ed25519"]);
    }
    let out = run(genpkey.arg("-out").arg(&key));
    assert_eq!(out.code, 0, "openssl genpkey: {out:?}");
    let out = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public));
    assert_eq!(out.code, 0, "openssl pkey: {out:?}");
    (key, public)
}
