//! Per-agent supervisor state: what is installed, what admission decided, and where the
//! running instance is. Everything here is bounded (fixed log ring, bounded restart history),
//! so the supervisor's memory does not grow with uptime.

pub mod install;
pub mod persist;
pub mod restart;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;

use serde::Serialize;

use crate::admission::Effective;
use crate::config::manifest::{Manifest, Mode, RestartPolicy};
use crate::logring::LogRing;
use crate::sandbox::Report;

/// Lifecycle state, as printed by `nanoclaw agents` (the contract in DESIGN.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    Running,
    Stopped,
    Exited,
    Failed,
    Frozen,
    Throttled,
    Quarantined,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Starting,
        State::Running,
        State::Stopped,
        State::Exited,
        State::Failed,
        State::Frozen,
        State::Throttled,
        State::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Stopped => "stopped",
            State::Exited => "exited",
            State::Failed => "failed",
            State::Frozen => "frozen",
            State::Throttled => "throttled",
            State::Quarantined => "quarantined",
        }
    }
}

/// A running instance.
pub struct Instance {
    /// Host PID of the sandbox init (PID 1 of the agent's namespace).
    pub pid: i32,
    pub pidfd: Rc<smol::Async<OwnedFd>>,
    pub started_ms: u64,
    pub report: Option<Report>,
    /// True when a previous supervisor started it and this one took it over.
    pub adopted: bool,
    /// The cgroup id the egress programs hold, when the agent has network access.
    pub egress_cgid: Option<u64>,
    /// How this instance's network is held (for `status`).
    pub network: String,
    /// The cgroup id whose syscalls the monitor counts, when it runs.
    pub monitor_cgid: Option<u64>,
    /// The cgroup id the BPF LSM holds, when it runs here.
    pub lsm_cgid: Option<u64>,
    /// Serves the agent's socket; dropped (and so stopped) with the instance.
    pub socket: Option<smol::Task<()>>,
}

pub struct Agent {
    pub manifest: Manifest,
    pub bundle: PathBuf,
    /// `Err` holds the admission error text; such an agent never starts.
    pub admission: Result<Effective, String>,
    /// Index into the reserved uid range (uid = uid_base + slot).
    pub slot: u32,
    pub state: State,
    pub instance: Option<Instance>,
    /// Bumped on every start; tasks of an older generation stop acting.
    pub generation: u64,
    pub restarts: u32,
    pub tracker: restart::Tracker,
    pub last_exit: Option<restart::Exit>,
    /// Why the agent is in its current state (for `why`).
    pub reason: String,
    pub stop_requested: bool,
    /// The pending stop keeps the agent down until an operator starts it (operator stop).
    pub hold_after_stop: bool,
    /// Stays down until an operator starts it (crash loop, finished task, operator stop);
    /// persisted so a restarted supervisor honours it.
    pub held: bool,
    pub oom_seen: u64,
    /// The cgroup id of the latest instance with egress control, kept after it exits so that
    /// denials still in the ring buffer are attributed to this agent.
    pub last_egress_cgid: Option<u64>,
    /// The cgroup id of the last instance held by the BPF LSM (maps late denials to the agent).
    pub last_lsm_cgid: Option<u64>,
    /// Syscall baseline and monitoring state (`daemon::monitor`).
    pub syscalls: crate::daemon::monitor::Watch,
    /// Recent events, `on_violation` state and the trust score (`policy::rules`).
    pub rules: crate::policy::rules::Tracker,
    /// An `on_violation` rule emptied its egress allowlist (until the next start).
    pub network_revoked: bool,
    /// An `on_violation` rule cut its CPU quota (until the next start).
    pub throttled: bool,
    /// Stopped by a `quarantine` rule; no start until an operator clears it (persisted).
    pub quarantined: bool,
    /// Last heartbeat on its agent socket (ms since the epoch), when it sends them.
    pub last_heartbeat_ms: Option<u64>,
    /// The status text of its last heartbeat.
    pub health_status: String,
    /// Energy attributed to it and its budget window (`daemon::energy`).
    pub energy: crate::daemon::energy::AgentEnergy,
    /// What the battery tier in force does to it.
    pub tier_hold: Option<crate::config::policy::BatteryAction>,
    /// An `on_violation` rule froze it (until the next start).
    pub frozen_by_rule: bool,
    /// Stopped by an energy budget or a battery tier: started again when that lifts.
    pub power_stopped: bool,
    /// When the last `oom_kill` record of this instance was written (coalescing).
    pub oom_audited_ms: u64,
    /// Violation events since the daemon started, by `Event as usize` (metrics, `sim`).
    pub events: [u64; crate::config::policy::Event::ALL.len()],
    /// Highest memory use seen in any instance since the daemon started (bytes).
    pub memory_peak: u64,
    /// Connects and datagrams each egress rule allowed in instances that ended.
    pub network_use: std::collections::BTreeMap<String, u64>,
    pub logs: LogRing,
}

impl Agent {
    pub fn new(manifest: Manifest, bundle: PathBuf, slot: u32, log_bytes: usize) -> Self {
        let tracker = restart::Tracker::new(manifest.restart.max_per_hour);
        Self {
            manifest,
            bundle,
            admission: Err("not admitted yet".into()),
            slot,
            state: State::Stopped,
            instance: None,
            generation: 0,
            restarts: 0,
            tracker,
            last_exit: None,
            reason: String::new(),
            stop_requested: false,
            hold_after_stop: false,
            held: false,
            oom_seen: 0,
            last_egress_cgid: None,
            last_lsm_cgid: None,
            rules: Default::default(),
            network_revoked: false,
            throttled: false,
            quarantined: false,
            last_heartbeat_ms: None,
            health_status: String::new(),
            energy: Default::default(),
            tier_hold: None,
            frozen_by_rule: false,
            power_stopped: false,
            syscalls: Default::default(),
            oom_audited_ms: 0,
            events: [0; crate::config::policy::Event::ALL.len()],
            memory_peak: 0,
            network_use: Default::default(),
            logs: LogRing::new(log_bytes),
        }
    }

    pub fn restart_policy(&self) -> restart::Policy {
        match self.manifest.restart.policy {
            RestartPolicy::Always => restart::Policy::Always,
            RestartPolicy::OnFailure => restart::Policy::OnFailure,
            RestartPolicy::Never => restart::Policy::Never,
        }
    }

    /// The persisted form of this agent's restart history and hold.
    pub fn record(&self) -> persist::Record {
        let held = match (self.held, self.state) {
            _ if self.quarantined => Some(persist::HeldState::Quarantined),
            (true, State::Stopped) => Some(persist::HeldState::Stopped),
            (true, State::Exited) => Some(persist::HeldState::Exited),
            (true, State::Failed) => Some(persist::HeldState::Failed),
            _ => None,
        };
        persist::Record {
            version: self.manifest.version.clone(),
            starts: self.tracker.starts(),
            restarts: self.restarts,
            held: held.map(|state| persist::Held {
                state,
                reason: self.reason.clone(),
            }),
            trust: Some(self.rules.trust),
        }
    }

    /// Restores history and hold from a record of the same bundle version; a quarantine and
    /// the trust score hold for every version.
    pub fn restore(&mut self, rec: persist::Record) {
        if let Some(t) = rec.trust {
            self.rules.trust = t;
        }
        if let Some(h) = &rec.held
            && h.state == persist::HeldState::Quarantined
        {
            self.quarantined = true;
            self.held = true;
            self.state = State::Quarantined;
            self.reason = h.reason.clone();
            return;
        }
        if rec.version != self.manifest.version {
            return;
        }
        self.tracker.restore(&rec.starts);
        self.restarts = rec.restarts;
        if let Some(h) = rec.held {
            self.held = true;
            self.state = h.state.state();
            self.reason = h.reason;
        }
    }

    pub fn is_service(&self) -> bool {
        self.manifest.mode == Mode::Service
    }
}
