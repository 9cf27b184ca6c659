//! Admission: the effective sandbox is manifest requests ∩ policy grants (DESIGN.md §1).
//! Pure logic, no I/O, so every rule is unit-tested without root.
//!
//! Rules:
//! - An agent absent from `policy.agents` is refused: zero permissions by default.
//! - Each numeric request must be `<=` the grant, else [`AdmissionError::NotGranted`]
//!   naming the field (`requests.memory`). An omitted request takes the granted value.
//! - A grant that omits `cpus`, `pids` or `scratch` grants the defaults
//!   [`DEFAULT_GRANT_CPUS`] (1.0), [`DEFAULT_GRANT_PIDS`] (32) and [`DEFAULT_GRANT_SCRATCH`]
//!   (16MiB). These are the bounded minimum every sandbox has anyway (one CPU's worth of
//!   quota, a few processes, a small tmpfs); refusing to start would not make the agent
//!   safer, and "unlimited" would break the zero-by-default model. Memory has no default:
//!   both sides must state it.
//! - Each requested network endpoint and device must appear in the grant, else `NotGranted`
//!   naming `requests.network[i]` / `requests.devices[i]`. The effective lists are the
//!   *requested* ones, never widened to everything granted.
//! - The requested syscall profile must be `<=` the granted one (grants default to strict,
//!   requests to default, so an agent needs an explicit `"syscalls": "default"` grant).
//!
//! [`validate_policy`] checks a policy as a whole before anything starts.

use crate::config::units::ByteSize;
use crate::config::{Destination, FieldError, Grant, Manifest, Policy, SyscallProfile};

pub const DEFAULT_GRANT_CPUS: f64 = 1.0;
pub const DEFAULT_GRANT_PIDS: u32 = 32;
pub const DEFAULT_GRANT_SCRATCH: ByteSize = ByteSize::mib(16);
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses a `cpu.max` quota below 1 ms; tiny `cpus` values are rounded up.
pub const MIN_CPU_QUOTA_US: u64 = 1_000;

/// What the sandbox enforces for one admitted agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub name: String,
    pub memory_max: u64,
    /// 90% of `memory_max`: the `memory.high` throttle point applied when the agent is
    /// throttled (battery/energy). Unthrottled agents run with `memory.high` = max, since
    /// without swap reclaim above it only delays the OOM kill.
    pub memory_high: u64,
    pub cpus: f64,
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
    pub pids_max: u32,
    pub scratch_bytes: u64,
    pub network: Vec<Destination>,
    pub devices: Vec<String>,
    pub syscalls: SyscallProfile,
    /// Mechanisms the policy requires (`agents.X.require`).
    pub require: Vec<crate::config::policy::Mechanism>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy: {0}")]
    Invalid(#[from] FieldError),
    #[error(
        "policy: agents' memory grants total {} ({total} bytes), more than the {} \
         ({available} bytes) available: device memory {} minus device.memory_reserve {}; \
         lower agents.*.memory or the reserve",
        ByteSize(*.total), ByteSize(*.available), ByteSize(*.device_memory), ByteSize(*.reserve)
    )]
    MemoryOvercommit {
        total: u64,
        available: u64,
        device_memory: u64,
        reserve: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error(
        "agent {agent}: not in the policy, which grants it nothing; add agents.{agent} to the policy"
    )]
    NotInPolicy { agent: String },
    #[error("agent {agent}: {field} {requested} {} the policy grant {granted}", relation(.field))]
    NotGranted {
        agent: String,
        field: String,
        requested: String,
        granted: String,
    },
    #[error("agent {agent}: invalid manifest: {source}")]
    InvalidManifest { agent: String, source: FieldError },
    #[error("agent {agent}: invalid policy grant: {source}")]
    InvalidGrant { agent: String, source: FieldError },
}

fn relation(field: &str) -> &'static str {
    if field.ends_with(']') {
        "is not in"
    } else {
        "exceeds"
    }
}

/// Checks the policy as a whole: every field ([`Policy::validate`]) and that the memory
/// grants fit in `device_memory` minus `device.memory_reserve`.
pub fn validate_policy(p: &Policy, device_memory: u64) -> Result<(), PolicyError> {
    p.validate()?;
    let total = p
        .agents
        .values()
        .fold(0u64, |sum, g| sum.saturating_add(g.memory.bytes()));
    let reserve = p.device.memory_reserve.bytes();
    let available = device_memory.saturating_sub(reserve);
    if total > available {
        return Err(PolicyError::MemoryOvercommit {
            total,
            available,
            device_memory,
            reserve,
        });
    }
    Ok(())
}

/// Intersects `m`'s requests with its grant in `p`; see the module doc for the rules.
pub fn admit(m: &Manifest, p: &Policy) -> Result<Effective, AdmissionError> {
    let agent = &m.name;
    m.validate()
        .map_err(|source| AdmissionError::InvalidManifest {
            agent: agent.clone(),
            source,
        })?;
    let grant: &Grant = p
        .agents
        .get(agent)
        .ok_or_else(|| AdmissionError::NotInPolicy {
            agent: agent.clone(),
        })?;
    grant
        .validate(agent)
        .map_err(|source| AdmissionError::InvalidGrant {
            agent: agent.clone(),
            source,
        })?;
    let refuse = |field: String, requested: String, granted: String| AdmissionError::NotGranted {
        agent: agent.clone(),
        field,
        requested,
        granted,
    };
    let r = &m.requests;

    if r.memory > grant.memory {
        return Err(refuse(
            "requests.memory".into(),
            r.memory.to_string(),
            grant.memory.to_string(),
        ));
    }
    let cpus_granted = grant.cpus.unwrap_or(DEFAULT_GRANT_CPUS);
    let cpus = r.cpus.unwrap_or(cpus_granted);
    if cpus > cpus_granted {
        return Err(refuse(
            "requests.cpus".into(),
            cpus.to_string(),
            cpus_granted.to_string(),
        ));
    }
    let pids_granted = grant.pids.unwrap_or(DEFAULT_GRANT_PIDS);
    let pids = r.pids.unwrap_or(pids_granted);
    if pids > pids_granted {
        return Err(refuse(
            "requests.pids".into(),
            pids.to_string(),
            pids_granted.to_string(),
        ));
    }
    let scratch_granted = grant.scratch.unwrap_or(DEFAULT_GRANT_SCRATCH);
    let scratch = r.scratch.unwrap_or(scratch_granted);
    if scratch > scratch_granted {
        return Err(refuse(
            "requests.scratch".into(),
            scratch.to_string(),
            scratch_granted.to_string(),
        ));
    }
    if let Some((i, ep)) = r
        .network
        .iter()
        .enumerate()
        .find(|(_, ep)| !grant.network.iter().any(|g| g.covers(ep)))
    {
        return Err(refuse(
            format!("requests.network[{i}]"),
            ep.to_string(),
            list(&grant.network),
        ));
    }
    if let Some((i, dev)) = r
        .devices
        .iter()
        .enumerate()
        .find(|(_, d)| !grant.devices.contains(d))
    {
        return Err(refuse(
            format!("requests.devices[{i}]"),
            dev.clone(),
            list(&grant.devices),
        ));
    }
    if r.syscalls > grant.syscalls {
        return Err(refuse(
            "requests.syscalls".into(),
            r.syscalls.to_string(),
            grant.syscalls.to_string(),
        ));
    }
    if let Some(rt) = &m.runtime
        && !grant.runtimes.contains(rt)
    {
        return Err(refuse("runtime".into(), rt.clone(), list(&grant.runtimes)));
    }

    let memory_max = r.memory.bytes();
    // cpus is validated to (0, 1024], so the product fits easily in u64.
    let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
    Ok(Effective {
        name: agent.clone(),
        memory_max,
        memory_high: (u128::from(memory_max) * 9 / 10) as u64,
        cpus,
        cpu_quota_us: quota.max(MIN_CPU_QUOTA_US),
        cpu_period_us: CPU_PERIOD_US,
        pids_max: pids,
        scratch_bytes: scratch.bytes(),
        network: r.network.clone(),
        devices: r.devices.clone(),
        syscalls: r.syscalls,
        require: grant.require.clone(),
    })
}

/// Admission for an agent that is already running when the policy changes: the strict
/// [`admit`] if it passes; otherwise the intersection of its requests with the new grant (a
/// budget lowered below the request, a network entry no longer granted), with the names of
/// the narrowed fields. A running agent is narrowed live rather than stopped; fields that
/// cannot be narrowed (syscalls, devices, scratch) still refuse.
pub fn admit_running(
    m: &Manifest,
    p: &Policy,
) -> Result<(Effective, Vec<&'static str>), AdmissionError> {
    let strict = match admit(m, p) {
        Ok(e) => return Ok((e, Vec::new())),
        Err(e) => e,
    };
    let Some(grant) = p.agents.get(&m.name) else {
        return Err(strict);
    };
    let mut clamped = m.clone();
    let r = &mut clamped.requests;
    let mut narrowed = Vec::new();
    if r.memory > grant.memory {
        r.memory = grant.memory;
        narrowed.push("memory");
    }
    let cpus = grant.cpus.unwrap_or(DEFAULT_GRANT_CPUS);
    if r.cpus.is_some_and(|c| c > cpus) {
        r.cpus = Some(cpus);
        narrowed.push("cpus");
    }
    let pids = grant.pids.unwrap_or(DEFAULT_GRANT_PIDS);
    if r.pids.is_some_and(|n| n > pids) {
        r.pids = Some(pids);
        narrowed.push("pids");
    }
    let before = r.network.len();
    r.network
        .retain(|ep| grant.network.iter().any(|g| g.covers(ep)));
    if r.network.len() != before {
        narrowed.push("network");
    }
    match admit(&clamped, p) {
        Ok(e) if !narrowed.is_empty() => Ok((e, narrowed)),
        _ => Err(strict),
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(T::to_string).collect();
    format!("[{}]", inner.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::manifest::tests::EXAMPLE as MANIFEST;
    use crate::config::policy::tests::EXAMPLE as POLICY;
    use std::path::Path;

    fn manifest(s: &str) -> Manifest {
        Manifest::parse(s.as_bytes(), Path::new("manifest.json")).unwrap()
    }

    fn policy(s: &str) -> Policy {
        Policy::parse(s.as_bytes(), Path::new("policy.json")).unwrap()
    }

    /// The DESIGN.md manifest with its syscalls request lowered to what the DESIGN.md
    /// policy grants (the example policy grants no syscalls, i.e. strict).
    fn sensor() -> Manifest {
        manifest(&MANIFEST.replace(r#""syscalls": "default""#, r#""syscalls": "strict""#))
    }

    fn not_granted_field(r: Result<Effective, AdmissionError>) -> String {
        match r {
            Err(AdmissionError::NotGranted { field, .. }) => field,
            other => panic!("expected NotGranted, got {other:?}"),
        }
    }

    #[test]
    fn grant_ok() {
        let e = admit(&sensor(), &policy(POLICY)).unwrap();
        assert_eq!(
            e,
            Effective {
                name: "sensor".into(),
                memory_max: 32 << 20,
                memory_high: (32 << 20) * 9 / 10,
                cpus: 0.25,
                cpu_quota_us: 25_000,
                cpu_period_us: 100_000,
                pids_max: 16,
                scratch_bytes: 8 << 20,
                network: vec!["10.0.0.5:6379/tcp".parse().unwrap()],
                devices: vec![],
                syscalls: SyscallProfile::Strict,
                require: vec![],
            }
        );
    }

    #[test]
    fn design_examples_as_written_refuse_the_default_syscall_profile() {
        let err = admit(&manifest(MANIFEST), &policy(POLICY)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "agent sensor: requests.syscalls default exceeds the policy grant strict"
        );
        let granted = POLICY.replace(r#""pids": 16,"#, r#""pids": 16, "syscalls": "default","#);
        let e = admit(&manifest(MANIFEST), &policy(&granted)).unwrap();
        assert_eq!(e.syscalls, SyscallProfile::Default);
    }

    #[test]
    fn memory_over_grant_names_requests_memory() {
        let m = sensor();
        let p = policy(&POLICY.replace(r#""memory": "32MiB""#, r#""memory": "16MiB""#));
        let err = admit(&m, &p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "agent sensor: requests.memory 32MiB exceeds the policy grant 16MiB"
        );
        assert_eq!(
            err,
            AdmissionError::NotGranted {
                agent: "sensor".into(),
                field: "requests.memory".into(),
                requested: "32MiB".into(),
                granted: "16MiB".into(),
            }
        );
    }

    #[test]
    fn numeric_requests_over_grant() {
        let p = policy(POLICY);
        let mut m = sensor();
        m.requests.cpus = Some(0.5);
        assert_eq!(not_granted_field(admit(&m, &p)), "requests.cpus");
        let mut m = sensor();
        m.requests.pids = Some(17);
        assert_eq!(not_granted_field(admit(&m, &p)), "requests.pids");
        let mut m = sensor();
        m.requests.scratch = Some(ByteSize::mib(9));
        assert_eq!(not_granted_field(admit(&m, &p)), "requests.scratch");
    }

    #[test]
    fn network_endpoint_not_granted_names_the_index() {
        let mut m = sensor();
        m.requests.network = vec!["10.0.0.9:6379/tcp".parse().unwrap()];
        let err = admit(&m, &policy(POLICY)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "agent sensor: requests.network[0] 10.0.0.9:6379/tcp is not in the policy grant \
             [10.0.0.5:6379/tcp]"
        );
        // Same address, other protocol: still not granted.
        m.requests.network = vec![
            "10.0.0.5:6379/tcp".parse().unwrap(),
            "10.0.0.5:6379/udp".parse().unwrap(),
        ];
        assert_eq!(
            not_granted_field(admit(&m, &policy(POLICY))),
            "requests.network[1]"
        );
    }

    #[test]
    fn devices_must_be_granted() {
        let mut m = sensor();
        m.requests.devices = vec!["/dev/ttyUSB0".into()];
        assert_eq!(
            not_granted_field(admit(&m, &policy(POLICY))),
            "requests.devices[0]"
        );
        let p = policy(&POLICY.replace(
            r#""pids": 16,"#,
            r#""pids": 16, "devices": ["/dev/ttyUSB0", "/dev/i2c-1"],"#,
        ));
        assert_eq!(admit(&m, &p).unwrap().devices, ["/dev/ttyUSB0"]);
    }

    #[test]
    fn effective_lists_are_the_requested_ones() {
        let mut m = sensor();
        m.requests.network.clear();
        let e = admit(&m, &policy(POLICY)).unwrap();
        assert!(e.network.is_empty(), "never widened to the grant");
    }

    #[test]
    fn agent_absent_from_policy() {
        let m = manifest(&sensor_renamed("camera"));
        let err = admit(&m, &policy(POLICY)).unwrap_err();
        assert_eq!(
            err,
            AdmissionError::NotInPolicy {
                agent: "camera".into()
            }
        );
        assert!(err.to_string().contains("agent camera: not in the policy"));
    }

    fn sensor_renamed(name: &str) -> String {
        MANIFEST.replace(r#""name": "sensor""#, &format!(r#""name": "{name}""#))
    }

    #[test]
    fn omitted_requests_take_the_grant_or_the_defaults() {
        let m = manifest(
            r#"{"name":"a","version":"1","mode":"task","exec":["/a"],
                "requests":{"memory":"4MiB","syscalls":"strict"}}"#,
        );
        let p = policy(r#"{"version":1,"agents":{"a":{"memory":"8MiB","cpus":2,"pids":64}}}"#);
        let e = admit(&m, &p).unwrap();
        assert_eq!((e.memory_max, e.cpus, e.pids_max), (4 << 20, 2.0, 64));
        assert_eq!(e.cpu_quota_us, 200_000);
        assert_eq!(e.scratch_bytes, 16 << 20);
        let bare = policy(r#"{"version":1,"agents":{"a":{"memory":"8MiB"}}}"#);
        let e = admit(&m, &bare).unwrap();
        assert_eq!((e.cpus, e.pids_max, e.scratch_bytes), (1.0, 32, 16 << 20));
        assert_eq!(e.cpu_quota_us, 100_000);
        assert!(e.network.is_empty() && e.devices.is_empty());
        let mut greedy = m.clone();
        greedy.requests.cpus = Some(1.5);
        assert_eq!(not_granted_field(admit(&greedy, &bare)), "requests.cpus");
        // The default request profile is refused under the default (strict) grant.
        let mut default_syscalls = m;
        default_syscalls.requests.syscalls = SyscallProfile::Default;
        assert_eq!(
            not_granted_field(admit(&default_syscalls, &bare)),
            "requests.syscalls"
        );
    }

    #[test]
    fn tiny_cpu_quota_is_raised_to_the_kernel_minimum() {
        let mut m = sensor();
        m.requests.cpus = Some(0.001);
        assert_eq!(admit(&m, &policy(POLICY)).unwrap().cpu_quota_us, 1_000);
    }

    #[test]
    fn admission_revalidates_inputs_built_in_code() {
        let mut m = sensor();
        m.exec = vec!["relative".into()];
        assert!(matches!(
            admit(&m, &policy(POLICY)),
            Err(AdmissionError::InvalidManifest { source, .. }) if source.field == "exec[0]"
        ));
        let mut p = policy(POLICY);
        if let Some(g) = p.agents.get_mut("sensor") {
            g.pids = Some(0);
        }
        assert!(matches!(
            admit(&sensor(), &p),
            Err(AdmissionError::InvalidGrant { source, .. }) if source.field == "agents.sensor.pids"
        ));
    }

    #[test]
    fn validate_policy_memory_sum() {
        let two = POLICY.replace(
            r#""agents": { "sensor": {"#,
            r#""agents": { "camera": { "memory": "64MiB" }, "sensor": {"#,
        );
        let p = policy(&two);
        // 32MiB + 64MiB = 96MiB; 160MiB - 64MiB reserve = 96MiB: fits exactly.
        assert_eq!(validate_policy(&p, 160 << 20), Ok(()));
        let err = validate_policy(&p, (160 << 20) - 1).unwrap_err();
        assert_eq!(
            err,
            PolicyError::MemoryOvercommit {
                total: 96 << 20,
                available: (96 << 20) - 1,
                device_memory: (160 << 20) - 1,
                reserve: 64 << 20,
            }
        );
        let msg = err.to_string();
        for needle in ["96MiB", "100663296 bytes", "100663295 bytes", "64MiB"] {
            assert!(msg.contains(needle), "{needle}: {msg}");
        }
        // A reserve above the device's memory leaves nothing for agents.
        assert!(matches!(
            validate_policy(&p, 32 << 20),
            Err(PolicyError::MemoryOvercommit { available: 0, .. })
        ));
        assert_eq!(validate_policy(&policy(r#"{"version":1}"#), 0), Ok(()));
    }

    #[test]
    fn validate_policy_rechecks_fields() {
        let mut p = policy(POLICY);
        p.device.battery[1].below_percent = 30;
        assert_eq!(
            validate_policy(&p, 1 << 30),
            Err(PolicyError::Invalid(FieldError::new(
                "device.battery[1].below_percent",
                "30 must be below the previous rule's 30 (strictly descending)"
            )))
        );
        let mut p = policy(POLICY);
        p.signers[0].agents.clear();
        assert!(matches!(
            validate_policy(&p, 1 << 30),
            Err(PolicyError::Invalid(e)) if e.field == "signers[0].agents"
        ));
        let mut p = policy(POLICY);
        if let Some(g) = p.agents.remove("sensor") {
            p.agents.insert("Bad".into(), g);
        }
        assert!(matches!(
            validate_policy(&p, 1 << 30),
            Err(PolicyError::Invalid(e)) if e.field == "agents"
        ));
    }
}
