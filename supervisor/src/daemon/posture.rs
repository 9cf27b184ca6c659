//! What this kernel can enforce, probed once at start-up by really using each mechanism, and
//! reported by `nanoclaw status`. Agents additionally carry what their own init applied.

use serde::Serialize;

use crate::cgroup::{Cgroups, Layout};
use crate::config::device::DeviceConfig;
use crate::sandbox::{landlock, seccomp};

#[derive(Debug, Clone, Serialize)]
pub struct Posture {
    /// `v2`, or `v1` / `v1 hybrid (cgroup2 at …)`.
    pub cgroup: String,
    pub missing_controllers: Vec<String>,
    pub seccomp: String,
    pub landlock: String,
    /// Namespaces every agent gets.
    pub namespaces: &'static str,
    /// Agents without a network grant: an empty network namespace.
    pub network: &'static str,
    /// eBPF egress control for agents with a network grant, or why it is unavailable.
    pub egress: String,
    /// Syscall monitoring, or why it is unavailable.
    pub syscall_monitor: String,
    /// BPF LSM (exec, mount, ptrace, raw sockets, file opens), or why it is unavailable and
    /// agents fall back to Landlock + seccomp.
    pub lsm: String,
    pub unsigned_bundles_allowed: bool,
    /// The cgroup2 `favordynmods` option (fast migrations), if there is a cgroup2 mount.
    pub favordynmods: Option<bool>,
}

impl Posture {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "cgroup {}, seccomp {}, landlock {}, egress {}, syscall monitor {}, lsm {}",
            self.cgroup,
            if self.seccomp.starts_with("UNAVAILABLE") {
                &self.seccomp
            } else {
                "ok"
            },
            self.landlock,
            short(&self.egress),
            short(&self.syscall_monitor),
            short(&self.lsm)
        );
        if self.favordynmods == Some(true) {
            s += ", cgroup2 favordynmods on";
        }
        if !self.missing_controllers.is_empty() {
            s += &format!(
                "; MISSING controllers: {}",
                self.missing_controllers.join(",")
            );
        }
        if self.unsigned_bundles_allowed {
            s += "; WARNING: unsigned bundles allowed (allow_unsigned)";
        }
        s
    }

    /// Each mechanism with its level: the first word of its text (`enforced`,
    /// `unavailable` …), stable enough for metric labels and the fleet's dashboard.
    pub fn levels(&self) -> [(&'static str, &str); 7] {
        [
            ("cgroup", level(&self.cgroup)),
            ("seccomp", level(&self.seccomp)),
            ("landlock", level(&self.landlock)),
            ("network", level(self.network)),
            ("egress", level(&self.egress)),
            ("syscall_monitor", level(&self.syscall_monitor)),
            ("lsm", level(&self.lsm)),
        ]
    }

    /// Something is missing or weakened: a mechanism unavailable, a cgroup controller
    /// missing, or unsigned bundles allowed.
    pub fn degraded(&self) -> bool {
        self.levels()
            .iter()
            .any(|(_, l)| l.eq_ignore_ascii_case("unavailable"))
            || !self.missing_controllers.is_empty()
            || self.unsigned_bundles_allowed
    }
}

/// The first word of a posture text (`enforced`, `unavailable:` …).
pub fn level(text: &str) -> &str {
    text.split([' ', ':', '(', ','])
        .next()
        .filter(|w| !w.is_empty())
        .unwrap_or("unknown")
}

/// "bpf" when a mechanism works, else its full reason (audit reasons are capped).
fn short(s: &str) -> &str {
    if s.starts_with("bpf") { "bpf" } else { s }
}

pub fn probe(cg: &dyn Cgroups, cfg: &DeviceConfig) -> Posture {
    let cgroup = match cg.layout() {
        Layout::V2 { .. } => "v2".to_owned(),
        Layout::V1 {
            unified: Some(u), ..
        } => format!("v1 hybrid (cgroup2 at {})", u.display()),
        Layout::V1 { unified: None, .. } => "v1".to_owned(),
    };
    let seccomp = match (
        seccomp::compile(seccomp::Profile::Default),
        seccomp::compile(seccomp::Profile::Strict),
    ) {
        (Ok(_), Ok(_)) => format!("default-deny filters for {}", std::env::consts::ARCH),
        (Err(e), _) | (_, Err(e)) => format!("UNAVAILABLE: {e}"),
    };
    Posture {
        cgroup,
        missing_controllers: cg
            .missing_controllers()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        seccomp,
        landlock: landlock::probe().to_string(),
        namespaces: "mnt,pid,ipc,uts,net,cgroup",
        network: "none (empty network namespace) unless granted",
        egress: String::new(),
        syscall_monitor: String::new(),
        lsm: String::new(),
        unsigned_bundles_allowed: cfg.allow_unsigned,
        favordynmods: None,
    }
}
