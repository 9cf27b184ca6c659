//! `nanoclaw daemon`: the supervisor's event loop.
//!
//! One thread, one `smol::LocalExecutor`. Each running agent has three small tasks (exit via
//! pidfd, OOM notifications from its cgroup, output relay); the control socket and the
//! signalfd have one each. State lives in one `RefCell<Daemon>` that no task holds across an
//! `.await`, so there is no locking and no ordering surprise.
//!
//! Start-up order matters for fail-closed behaviour: config → policy (validated as a whole) →
//! cgroups and mechanism probes → audit log → re-adopt agents a previous supervisor left
//! running → start the rest → serve the control socket.

mod adopt;
pub mod agentsock;
pub mod egress;
pub mod energy;
pub mod fleet;
pub mod grants;
pub mod health;
pub mod installer;
pub mod lifecycle;
pub mod lsm;
pub mod metrics;
pub mod monitor;
pub mod names;
pub mod notify;
pub mod policy;
pub mod posture;
pub mod ratelimit;
mod rings;
pub mod runtimes;
pub mod violations;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nanoclaw_proto::audit::AuditKind;
use smol::LocalExecutor;

use crate::agents::{Agent, install};
use crate::audit::{AuditLimits, AuditLog};
use crate::cgroup::{self, Cgroups};
use crate::config::device::DeviceConfig;
use crate::config::policy::Policy;
use crate::control;

/// Typed exit codes of `nanoclaw daemon`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const CONFIG: u8 = 6;
    pub const SETUP: u8 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{path}: board: {reason}")]
    Board { path: PathBuf, reason: String },
    #[error("policy {path}: {reason}")]
    Policy { path: PathBuf, reason: String },
    #[error("cgroups: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("installing agents: {0}")]
    Install(#[from] install::InstallError),
}

impl DaemonError {
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) | DaemonError::Policy { .. } | DaemonError::Board { .. } => {
                exit::CONFIG
            }
            _ => exit::SETUP,
        }
    }
}

pub struct Daemon {
    pub cfg: DeviceConfig,
    pub cgroups: Box<dyn Cgroups>,
    pub audit: AuditLog,
    pub policy: Policy,
    pub agents: BTreeMap<String, Agent>,
    pub posture: posture::Posture,
    pub board: crate::board::Board,
    pub started_ms: u64,
    pub device_memory: u64,
    pub shutting_down: bool,
    /// `Some(prev)` when the daemon changed `favordynmods` and restores `prev` at shutdown.
    pub dynmods_restore: Option<bool>,
    /// eBPF egress control, when this kernel loads and attaches it.
    pub egress: Option<crate::bpf::Egress>,
    /// BPF LSM hooks, when this kernel loads them and they pass the self-test.
    pub lsm: Option<crate::bpf::Lsm>,
    /// What host names in egress grants resolve to.
    pub names: names::Names,
    /// An install is running (one at a time).
    pub installing: bool,
    /// The fleet key and master policy pinned by device.json.
    pub anchors: policy::Anchors,
    /// The accepted policy document in force (`policy` is its parsed content).
    pub in_force: crate::policy::Accepted,
    /// This device's identity for grant tokens.
    pub device_id: String,
    /// Capabilities granted at run time by tokens.
    pub grants: grants::Grants,
    /// Wakes the grant expiry task when a grant is added.
    pub grants_wake: Option<smol::channel::Sender<()>>,
    /// Agent socket connections and queued inter-agent messages.
    pub socks: BTreeMap<String, agentsock::Socks>,
    /// Bounds the audit records misbehaving socket clients cause.
    pub sock_limiter: ratelimit::Limiter,
    /// Records agents put for the fleet (`None` when it cannot be opened).
    pub outbox: Option<crate::outbox::Outbox>,
    /// Violation events noted where no task context is at hand (`violations::drain`).
    pub pending_events: Vec<(String, crate::config::policy::Event)>,
    /// Power sensing, attribution and battery tiers.
    pub energy: Option<energy::Energy>,
    /// Fleet sync counters and its wake-up (when device.json has `fleet`).
    pub fleet: Option<fleet::Status>,
}

/// Shared by every task.
pub struct Ctx {
    pub ex: LocalExecutor<'static>,
    pub d: RefCell<Daemon>,
}

pub type CtxRef = Rc<Ctx>;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A random u64 for backoff jitter (std's per-process random hash keys, no extra crate).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish()
}

impl Daemon {
    /// Appends an audit record. Security decisions (`durable`) are fsynced before returning.
    /// An audit failure is reported on stderr: the supervisor keeps enforcing either way.
    pub fn audit(&mut self, agent: &str, kind: AuditKind, reason: &str, durable: bool) {
        if let Err(e) = self.audit.append(now_ms(), agent, kind, reason, durable) {
            crate::log!("nanoclaw: audit log write failed: {e}");
        }
        if fleet::is_urgent(kind) {
            fleet::wake(self, fleet::Wake::Event);
        }
        crate::log!("nanoclaw: [{}] {agent}: {reason}", kind_name(kind));
    }

    /// Notes a violation event for `agent`'s `on_violation` rules and trust score; acted on
    /// by `violations::drain` within the next health tick.
    pub fn event(&mut self, agent: &str, e: crate::config::policy::Event) {
        if self.pending_events.len() >= 4096 {
            self.pending_events.remove(0);
        }
        self.pending_events.push((agent.to_owned(), e));
    }

    pub fn uid_of(&self, a: &Agent) -> u32 {
        self.cfg.uid_base + a.slot
    }

    pub fn run_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("run")
    }

    /// Persisted per-agent history and holds (`agents::persist`).
    pub fn agents_state_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("agents")
    }
}

pub fn kind_name(kind: AuditKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn device_memory(cfg: &DeviceConfig) -> Result<u64, DaemonError> {
    match cfg.device_memory {
        Some(m) => Ok(m.0),
        None => mem_total(),
    }
}

/// This machine's memory (`MemTotal` in /proc/meminfo), in bytes.
pub fn mem_total() -> Result<u64, DaemonError> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| DaemonError::Io {
        what: "reading /proc/meminfo".into(),
        source: e,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| DaemonError::Io {
            what: "reading MemTotal from /proc/meminfo".into(),
            source: std::io::Error::other("no MemTotal line"),
        })
}

/// The power readers (and, on `sim`, the simulated battery publishing where they read).
fn energy_setup(cfg: &DeviceConfig, board: &crate::board::Board) -> energy::Energy {
    let sim_root = cfg.state_dir.join("sim").join("sys");
    let sim = board.power.battery.clone().map(|spec| {
        let mut s =
            crate::power::sim::Sim::new(spec, &sim_root, cfg.sim.start_percent, cfg.sim.speed);
        if let Err(e) = s.publish() {
            crate::log!("nanoclaw: simulated battery: {e}");
        }
        s
    });
    let root = match (&cfg.sysfs_root, &sim) {
        (Some(r), _) => r.clone(),
        (None, Some(_)) => sim_root,
        (None, None) => PathBuf::from("/sys"),
    };
    energy::Energy::new(
        crate::power::Sensor::new(root, board.power.sources.clone()),
        sim,
    )
}

/// The configured `device_id`, else /etc/machine-id, else the host name.
fn device_id(cfg: &DeviceConfig) -> String {
    if !cfg.device_id.is_empty() {
        return cfg.device_id.clone();
    }
    ["/etc/machine-id", "/proc/sys/kernel/hostname"]
        .iter()
        .find_map(|p| {
            let s = std::fs::read_to_string(p).ok()?;
            let s = s.trim();
            (!s.is_empty() && s.len() <= 128).then(|| s.to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the daemon until SIGTERM/SIGINT. Returns the process exit code.
pub fn run(config_path: &Path) -> Result<u8, DaemonError> {
    // Block the signals we handle before any thread exists, so every thread inherits the mask.
    let sigfd = crate::sys::signalfd(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2])
        .map_err(|e| DaemonError::Io {
        what: "creating the signalfd".into(),
        source: e,
    })?;
    let cfg = DeviceConfig::load(config_path)?;
    let board =
        crate::board::resolve(&cfg.board, Path::new("/")).map_err(|reason| DaemonError::Board {
            path: config_path.to_path_buf(),
            reason,
        })?;
    let device_memory = device_memory(&cfg)?;
    let anchors = policy::Anchors::load(&cfg)?;
    let (in_force, policy_warnings) = policy::initial(&cfg, &anchors, device_memory)?;
    let policy = in_force.policy.clone();
    let device_id = device_id(&cfg);
    // Bind the control socket before touching cgroups, the audit log or agents: a second
    // daemon started on the same config must stop here (bind refuses a socket another daemon
    // listens on) instead of adopting, starting or killing the agents the first one supervises.
    let listener = control::server::bind(&cfg.socket).map_err(|e| DaemonError::Io {
        what: format!("binding the control socket {}", cfg.socket.display()),
        source: e,
    })?;
    let metrics_listen = cfg.metrics.as_ref().map(|m| m.listen);
    let metrics = metrics::bind(metrics_listen).map_err(|e| DaemonError::Io {
        what: format!(
            "binding the metrics address {}",
            metrics_listen.map_or_else(String::new, |a| a.to_string())
        ),
        source: e,
    })?;
    let layout = cgroup::detect(&cfg.cgroup_root)?;
    // Previous favordynmods state to restore on a clean shutdown (only if we changed it).
    let dynmods_restore = if cfg.cgroup_favordynmods {
        match cgroup::dynmods::set_favordynmods(&layout, true)? {
            Some(false) => Some(false),
            _ => None,
        }
    } else {
        None
    };
    let favordynmods = cgroup::dynmods::favordynmods(&layout).ok().flatten();
    let cgroups = cgroup::open(layout, &cfg.cgroup_subtree)?;
    cgroups.enter_supervisor()?;
    // A freshly installed device has none of these yet (its package or tarball need not
    // make them).
    for dir in [&cfg.state_dir, &cfg.state_dir.join("run"), &cfg.agents_dir] {
        std::fs::create_dir_all(dir).map_err(|e| DaemonError::Io {
            what: format!("creating state directory {}", dir.display()),
            source: e,
        })?;
    }
    let audit = AuditLog::open(
        &cfg.state_dir.join("audit"),
        AuditLimits {
            segment_bytes: cfg.audit_segment_bytes.0,
            max_segments: cfg.audit_segments as usize,
        },
    )?;
    let mut posture = posture::probe(cgroups.as_ref(), &cfg);
    posture.favordynmods = favordynmods;
    let (egress, egress_posture) =
        egress::init(cgroups.layout(), &cfg.cgroup_subtree, cfg.syscall_monitor);
    posture.egress = egress_posture;
    posture.syscall_monitor = match egress.as_ref().map(crate::bpf::Egress::monitor) {
        Some(Ok(())) => match cfg.syscall_sampling {
            None => "bpf tracepoint (raw) sys_enter, learned baseline, continuous".into(),
            Some(s) => format!(
                "bpf tracepoint (raw) sys_enter, learned baseline, sampled {} s of every {} s",
                s.on_s, s.every_s
            ),
        },
        Some(Err(e)) => format!("unavailable: {e}"),
        None => "unavailable: eBPF programs did not load".into(),
    };
    let (lsm, lsm_posture) = lsm::init(cgroups.layout(), &cfg.cgroup_subtree);
    posture.lsm = lsm_posture;
    let daemon = Daemon {
        cfg,
        cgroups,
        audit,
        policy,
        agents: BTreeMap::new(),
        posture,
        board,
        started_ms: now_ms(),
        device_memory,
        shutting_down: false,
        dynmods_restore,
        egress,
        lsm,
        names: names::Names::default(),
        installing: false,
        anchors,
        in_force,
        device_id,
        grants: grants::Grants::default(),
        grants_wake: None,
        socks: BTreeMap::new(),
        sock_limiter: ratelimit::Limiter::new(agentsock::AUDITS_PER_SECOND),
        outbox: None,
        pending_events: Vec::new(),
        energy: None,
        fleet: None,
    };
    let ctx: CtxRef = Rc::new(Ctx {
        ex: LocalExecutor::new(),
        d: RefCell::new(daemon),
    });
    {
        let mut d = ctx.d.borrow_mut();
        let recovered = d.audit.recovered_bytes();
        if recovered > 0 {
            d.audit(
                "",
                AuditKind::DaemonStart,
                &format!("audit log recovered: cut a torn tail of {recovered} bytes"),
                true,
            );
        }
        let summary = d.posture.summary();
        d.audit(
            "",
            AuditKind::DaemonStart,
            &format!("nanoclaw {} started; {summary}", env!("CARGO_PKG_VERSION")),
            true,
        );
        for w in &policy_warnings {
            d.audit("", AuditKind::PolicyRejected, w, true);
        }
        let in_force = d.in_force.clone();
        policy::keep(&mut d, &in_force);
        let text = format!(
            "policy version {} in force ({})",
            in_force.policy.version, in_force.origin
        );
        d.audit("", AuditKind::PolicyReload, &text, true);
        d.grants = grants::Grants::load(&d);
        d.energy = Some(energy_setup(&d.cfg, &d.board));
        let path = d.cfg.state_dir.join("outbox").join("outbox.log");
        match crate::outbox::Outbox::open(&path, d.cfg.outbox_bytes.0) {
            Ok(o) => {
                if o.recovered > 0 {
                    let text =
                        format!("outbox recovered: cut a torn tail of {} bytes", o.recovered);
                    d.audit("", AuditKind::DaemonStart, &text, true);
                }
                d.outbox = Some(o);
            }
            Err(e) => {
                let text = format!("outbox unavailable: {e}");
                d.audit("", AuditKind::Posture, &text, true);
            }
        }
    }
    installer::cleanup(&ctx.d.borrow());
    egress::spawn_denial_reader(&ctx);
    lsm::spawn_event_reader(&ctx);
    names::spawn(&ctx);
    grants::spawn(&ctx);
    lifecycle::install_all(&ctx)?;
    adopt::adopt_or_clean(&ctx);
    lifecycle::start_all(&ctx);
    monitor::spawn(&ctx);
    health::spawn(&ctx);
    energy::spawn(&ctx);
    fleet::spawn(&ctx);
    if let Some(l) = metrics {
        metrics::spawn(&ctx, l);
    }

    let ctl = ctx.clone();
    ctx.ex
        .spawn(async move { control::server::serve(ctl, listener).await })
        .detach();
    crate::log!(
        "nanoclaw: daemon ready, control socket {}",
        ctx.d.borrow().cfg.socket.display()
    );
    let notifier = notify::Notifier::from_env().map(Rc::new);
    if let Some(n) = &notifier {
        n.send("READY=1");
        if let Some(every) = notify::watchdog_interval() {
            let n = n.clone();
            ctx.ex
                .spawn(async move {
                    loop {
                        n.send("WATCHDOG=1");
                        smol::Timer::after(every).await;
                    }
                })
                .detach();
        }
    }

    let code = smol::block_on(ctx.ex.run(signals(ctx.clone(), sigfd, notifier)));
    Ok(code)
}

/// Waits for signals: SIGHUP reloads, SIGTERM/SIGINT shut down gracefully, SIGUSR2 hands
/// over: the daemon exits and leaves its agents running for the next one to re-adopt (an
/// upgrade of nanoclaw itself: `systemctl kill -s USR2 nanoclaw` with `Restart=always`).
async fn signals(ctx: CtxRef, sigfd: OwnedFd, notifier: Option<Rc<notify::Notifier>>) -> u8 {
    let Ok(sigfd) = smol::Async::new(sigfd) else {
        crate::log!("nanoclaw: cannot watch signals; stopping");
        return exit::SETUP;
    };
    loop {
        if sigfd.readable().await.is_err() {
            continue;
        }
        let sig = match crate::sys::read_signalfd(std::os::fd::AsFd::as_fd(sigfd.get_ref())) {
            Ok(Some(s)) => s,
            _ => continue,
        };
        if sig == libc::SIGHUP {
            let _ = policy::reload(&ctx);
            continue;
        }
        if let Some(n) = &notifier {
            n.send("STOPPING=1");
        }
        if sig == libc::SIGUSR2 {
            let mut d = ctx.d.borrow_mut();
            let n = d.agents.values().filter(|a| a.instance.is_some()).count();
            let why = format!(
                "handing over on SIGUSR2: {n} agent(s) left running for the next supervisor"
            );
            d.audit("", AuditKind::DaemonStop, &why, true);
            crate::log!("nanoclaw: {why}");
            return exit::OK;
        }
        return shutdown(&ctx).await;
    }
}

/// Stops every agent gracefully (SIGTERM, then SIGKILL after its grace period), removes their
/// cgroups and exits 0.
async fn shutdown(ctx: &CtxRef) -> u8 {
    let names: Vec<String> = {
        let mut d = ctx.d.borrow_mut();
        d.shutting_down = true;
        d.agents.keys().cloned().collect()
    };
    for n in &names {
        lifecycle::stop(ctx, n, "supervisor shutting down", false);
    }
    let grace = ctx.d.borrow().cfg.stop_grace_s;
    let deadline = std::time::Instant::now() + Duration::from_secs(u64::from(grace) + 3);
    while std::time::Instant::now() < deadline {
        let running = ctx.d.borrow().agents.values().any(|a| a.instance.is_some());
        if !running {
            break;
        }
        smol::Timer::after(Duration::from_millis(20)).await;
    }
    let mut d = ctx.d.borrow_mut();
    for n in &names {
        let _ = d.cgroups.kill_all(n);
        if let Err(e) = d.cgroups.remove(n) {
            crate::log!("nanoclaw: removing cgroup of {n}: {e}");
        }
        let _ = std::fs::remove_file(d.run_dir().join(format!("{n}.json")));
    }
    if let Some(prev) = d.dynmods_restore
        && let Err(e) = cgroup::dynmods::set_favordynmods(d.cgroups.layout(), prev)
    {
        crate::log!("nanoclaw: restoring the cgroup2 favordynmods option: {e}");
    }
    if let Some(l) = d.lsm.as_ref() {
        l.unpin();
    }
    if let Some(e) = d.egress.as_ref() {
        e.unpin_all();
    }
    d.audit("", AuditKind::DaemonStop, "stopped on signal", true);
    let _ = std::fs::remove_file(&d.cfg.socket);
    exit::OK
}
