//! Audit records: what the supervisor decided about which agent, and why.
//!
//! The same record is stored in the device's append-only audit log and, later, shipped to the
//! fleet server, so it lives here rather than in the supervisor.

use heapless::String;
use serde::{Deserialize, Serialize};

/// Longest agent name, in bytes (names are also cgroup and directory names).
pub const AGENT_NAME_MAX: usize = 64;
/// Longest reason text, in bytes; longer reasons are cut at a character boundary.
pub const REASON_MAX: usize = 256;

/// What happened. Serialized as snake_case in JSON (`oom_kill`), as a variant index in postcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// The supervisor daemon started (agent is empty).
    DaemonStart,
    /// The supervisor daemon stopped cleanly.
    DaemonStop,
    /// An agent was installed from a bundle.
    Install,
    /// Admission refused an agent: the reason names the field.
    AdmissionDenied,
    /// An agent process was started.
    Start,
    /// An agent process exited (status in the reason).
    Exit,
    /// The kernel OOM-killed an agent (peak usage in the reason).
    OomKill,
    /// An agent is restarting after an exit (attempt and delay in the reason).
    Restart,
    /// An agent was stopped on request.
    Stop,
    /// An agent restarted too often and was marked failed.
    CrashLoop,
    /// A re-started supervisor took over an agent that was already running.
    Adopt,
    /// An agent's sandbox could not be set up (the mechanism is in the reason).
    SandboxError,
    /// An agent ignored SIGTERM and was killed after its grace period.
    StopTimeout,
    /// A denied network connection (eBPF egress).
    DeniedConnect,
    /// A denied exec.
    DeniedExec,
    /// A policy was (re)loaded.
    PolicyReload,
    /// A policy or config was rejected; the last good one stays in force.
    PolicyRejected,
    /// Enforcement weaker than the policy's primary mechanism (allowed fallback), or a warning
    /// that must be seen, such as running unsigned bundles.
    Posture,
    /// A policy `on_violation` rule fired (the action and the count are in the reason).
    Violation,
    /// A syscall outside the agent's learned baseline, or a jump in a syscall's rate.
    SyscallAnomaly,
    /// A denied operation other than exec or connect (BPF LSM: mount, ptrace, raw socket,
    /// file open); the operation, target and rule are in the reason.
    DeniedOperation,
    /// A bundle install was refused (signature, admission, anti-rollback, archive, space).
    InstallRefused,
    /// An agent was switched back to an earlier installed version.
    Rollback,
    /// A grant token was accepted and its capability applied (capability, expiry, nonce).
    GrantApplied,
    /// A grant token was refused (the reason says which check failed).
    GrantRefused,
    /// A granted capability was removed (expired, or no longer grantable).
    GrantExpired,
    /// An agent sent a malformed, oversized or too frequent message on its socket.
    BadMessage,
    /// An inter-agent message along no declared channel was refused.
    ChannelRefused,
    /// An agent missed its heartbeat deadline (`health.heartbeat_s`).
    HealthCheck,
    /// An operator cleared an agent's quarantine.
    Cleared,
    /// An agent's energy budget was used up (action in the reason) or its window rolled over.
    Energy,
    /// The battery tier in force changed, or what it does to an agent.
    Battery,
    /// A console command, unlock or lock, with who ran it (`nanoclaw console`).
    Console,
}

/// One audit record. `seq` is assigned by the log and is strictly increasing per device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub agent: String<AGENT_NAME_MAX>,
    pub kind: AuditKind,
    pub reason: String<REASON_MAX>,
}

impl AuditRecord {
    /// Builds a record, cutting `agent` and `reason` at a character boundary if too long.
    pub fn new(seq: u64, time_ms: u64, agent: &str, kind: AuditKind, reason: &str) -> Self {
        Self {
            seq,
            time_ms,
            agent: truncated(agent),
            kind,
            reason: truncated(reason),
        }
    }
}

fn truncated<const N: usize>(s: &str) -> String<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::new();
    // Cannot fail: `end <= N` bytes.
    let _ = out.push_str(&s[..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(200); // 400 bytes
        let r = AuditRecord::new(1, 2, "a", AuditKind::Exit, &reason);
        assert!(r.reason.len() <= REASON_MAX);
        assert!(r.reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn postcard_round_trip() {
        let r = AuditRecord::new(
            7,
            1_700_000_000_000,
            "sensor",
            AuditKind::OomKill,
            "peak 33554432",
        );
        let bytes = postcard::to_allocvec(&r).unwrap();
        assert!(bytes.len() < 40, "compact: {} bytes", bytes.len());
        let back: AuditRecord = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
    }
}
