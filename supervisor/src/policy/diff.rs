//! What a policy change means for one agent: which fields the kernel can change under the
//! running process (cgroup limits, egress map entries, rules kept by the supervisor) and
//! which need the agent restarted (its seccomp filter, filesystem view and scratch size are
//! fixed when it starts).

use serde::Serialize;

use crate::admission::Effective;
use crate::config::policy::Grant;

/// The change for one agent, in field names of the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Applied to the running agent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub live: Vec<&'static str>,
    /// Take effect through a graceful restart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart: Vec<&'static str>,
    /// Requests the new grant no longer covers: the running agent gets the intersection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub narrowed: Vec<&'static str>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart.is_empty()
    }

    /// Whether the cgroup limits must be written.
    pub fn limits(&self) -> bool {
        self.live
            .iter()
            .any(|f| matches!(*f, "memory" | "cpus" | "pids"))
    }

    pub fn network(&self) -> bool {
        self.live.contains(&"network")
    }
}

/// Compares what a running agent has (`old`) with what the new policy admits (`new`).
pub fn diff(
    old: &Effective,
    new: &Effective,
    old_g: Option<&Grant>,
    new_g: Option<&Grant>,
) -> Change {
    let mut c = Change::default();
    if old.memory_max != new.memory_max || old.memory_high != new.memory_high {
        c.live.push("memory");
    }
    if old.cpu_quota_us != new.cpu_quota_us || old.cpu_period_us != new.cpu_period_us {
        c.live.push("cpus");
    }
    if old.pids_max != new.pids_max {
        c.live.push("pids");
    }
    if old.network != new.network {
        c.live.push("network");
    }
    if old.require != new.require {
        c.live.push("require");
    }
    if let (Some(a), Some(b)) = (old_g, new_g) {
        if a.energy != b.energy {
            c.live.push("energy");
        }
        if a.on_violation != b.on_violation {
            c.live.push("on_violation");
        }
        if a.grantable != b.grantable {
            c.live.push("grantable");
        }
    }
    if old.syscalls != new.syscalls {
        c.restart.push("syscalls");
    }
    if old.devices != new.devices {
        c.restart.push("devices");
    }
    if old.scratch_bytes != new.scratch_bytes {
        c.restart.push("scratch");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::manifest::SyscallProfile;

    fn eff() -> Effective {
        Effective {
            name: "a".into(),
            memory_max: 32 << 20,
            memory_high: 29 << 20,
            cpus: 0.5,
            cpu_quota_us: 50_000,
            cpu_period_us: 100_000,
            pids_max: 16,
            scratch_bytes: 8 << 20,
            network: vec![],
            devices: vec![],
            syscalls: SyscallProfile::Default,
            require: vec![],
        }
    }

    #[test]
    fn live_and_restart_fields() {
        let a = eff();
        assert!(diff(&a, &a, None, None).is_empty());
        let mut b = eff();
        b.memory_max = 16 << 20;
        b.network = vec!["10.0.0.1:80/tcp".parse().unwrap()];
        b.syscalls = SyscallProfile::Strict;
        let c = diff(&a, &b, None, None);
        assert_eq!(c.live, ["memory", "network"]);
        assert_eq!(c.restart, ["syscalls"]);
        assert!(c.limits() && c.network());
        let mut g1: Grant = serde_json::from_str(r#"{"memory": "32MiB"}"#).unwrap();
        let g2 = g1.clone();
        g1.grantable = vec!["net:10.0.0.9:1/tcp".into()];
        assert_eq!(diff(&a, &a, Some(&g1), Some(&g2)).live, ["grantable"]);
    }
}
