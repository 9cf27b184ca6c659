//! The fleet-wide master policy: limits that every device policy must stay within.
//!
//! The fleet operator writes one master policy for a whole fleet (or device class) and many
//! device policies; the master is the guard rail that a hurried edit of one device policy
//! cannot cross (no agent gets more than X memory, talks outside these networks, is signed by
//! anyone else). Every key is optional: an absent key constrains nothing, an empty list
//! allows nothing. [`MasterPolicy::check`] names the device policy's path that is out of
//! bounds and the master rule it breaks.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use super::manifest::{Destination, SyscallProfile};
use super::policy::{Capability, Mechanism, Policy, SignerTrust};
use super::units::ByteSize;
use super::{ConfigError, FieldError, base_dir, check_len, diagnose, read_capped, resolve};

pub const MAX_MASTER_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MasterPolicy {
    pub version: u64,
    pub limits: Limits,
    /// Destinations that grants (and grantable `net:` capabilities) must fall within.
    pub network: Option<Vec<Destination>>,
    pub devices: Option<Vec<String>>,
    /// Runtime layers that grants may list in `runtimes`.
    pub runtimes: Option<Vec<String>>,
    /// The most permissive syscall profile any agent may be granted.
    pub syscalls: Option<SyscallProfile>,
    /// Capabilities that may appear in `grantable` (a `net:` entry covers narrower ones).
    pub grantable: Option<Vec<Capability>>,
    /// The only signers a device policy may list.
    pub signers: Option<Vec<SignerTrust>>,
    /// Mechanisms every agent's grant must require (no silent fallback anywhere).
    pub require: Vec<Mechanism>,
}

/// Per-agent ceilings.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default)]
    pub memory: Option<ByteSize>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pids: Option<u32>,
    #[serde(default)]
    pub scratch: Option<ByteSize>,
    /// Most agents in one device policy.
    #[serde(default)]
    pub agents: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigner {
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
}

const KEYS: [&str; 9] = [
    "version",
    "limits",
    "network",
    "devices",
    "runtimes",
    "syscalls",
    "grantable",
    "signers",
    "require",
];

impl MasterPolicy {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = read_capped(path, MAX_MASTER_BYTES)?;
        check_len(&bytes, path, MAX_MASTER_BYTES)?;
        Self::check_doc(&bytes, base_dir(path)).map_err(|e| ConfigError::invalid_all(path, e))
    }

    /// Parses a master policy, reporting every problem.
    pub fn check_doc(bytes: &[u8], base: &Path) -> Result<Self, Vec<FieldError>> {
        let doc = diagnose::parse_unique(bytes).map_err(|e| vec![e])?;
        let mut errs = Vec::new();
        let Some(top) = diagnose::object(&doc, "(document)", &mut errs) else {
            return Err(errs);
        };
        diagnose::unknown_keys(top, "", &KEYS, &mut errs);
        let mut m = MasterPolicy::default();
        match top.get("version") {
            Some(v) => {
                m.version = diagnose::section(v, "version", &Value::Null, &mut errs).unwrap_or(0)
            }
            None => errs.push(FieldError::new("version", "is missing")),
        }
        if let Some(v) = top.get("limits") {
            m.limits = diagnose::section(v, "limits", &json!({}), &mut errs).unwrap_or_default();
        }
        if let Some(v) = top.get("network") {
            m.network = diagnose::section(v, "network", &Value::Null, &mut errs);
        }
        if let Some(v) = top.get("devices") {
            m.devices = diagnose::section(v, "devices", &Value::Null, &mut errs);
        }
        if let Some(v) = top.get("runtimes") {
            m.runtimes = diagnose::section(v, "runtimes", &Value::Null, &mut errs);
        }
        if let Some(v) = top.get("syscalls") {
            m.syscalls = diagnose::section(v, "syscalls", &Value::Null, &mut errs);
        }
        if let Some(v) = top.get("require") {
            m.require =
                diagnose::section(v, "require", &Value::Null, &mut errs).unwrap_or_default();
        }
        if let Some(v) = top.get("grantable")
            && let Some(list) =
                diagnose::section::<Vec<String>>(v, "grantable", &Value::Null, &mut errs)
        {
            let mut caps = Vec::new();
            for (i, c) in list.iter().enumerate() {
                match c.parse::<Capability>() {
                    Ok(c) => caps.push(c),
                    Err(r) => errs.push(FieldError::new(format!("grantable[{i}]"), r)),
                }
            }
            m.grantable = Some(caps);
        }
        if let Some(v) = top.get("signers")
            && let Some(list) =
                diagnose::section::<Vec<RawSigner>>(v, "signers", &Value::Null, &mut errs)
        {
            let mut out = Vec::new();
            for (i, s) in list.into_iter().enumerate() {
                match (s.key, s.identity, s.issuer) {
                    (Some(k), None, None) => out.push(SignerTrust::Key(resolve(base, &k))),
                    (None, Some(identity), Some(issuer)) => {
                        out.push(SignerTrust::Identity { identity, issuer })
                    }
                    _ => errs.push(FieldError::new(
                        format!("signers[{i}]"),
                        "needs either `key` or both `identity` and `issuer`",
                    )),
                }
            }
            m.signers = Some(out);
        }
        if let Some(c) = m.limits.cpus
            && (c.is_nan() || c <= 0.0)
        {
            errs.push(FieldError::new("limits.cpus", "must be more than 0"));
        }
        if errs.is_empty() { Ok(m) } else { Err(errs) }
    }

    /// Every place where `p` goes beyond this master policy.
    pub fn check(&self, p: &Policy) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let l = &self.limits;
        if let Some(max) = l.agents
            && p.agents.len() > max as usize
        {
            over(
                &mut errs,
                "agents".into(),
                format!("{} agents", p.agents.len()),
                "limits.agents",
                max.to_string(),
            );
        }
        for (name, g) in &p.agents {
            let at = |f: &str| format!("agents.{name}.{f}");
            if let Some(max) = l.memory
                && g.memory > max
            {
                over(
                    &mut errs,
                    at("memory"),
                    g.memory.to_string(),
                    "limits.memory",
                    max.to_string(),
                );
            }
            if let Some(max) = l.cpus {
                let cpus = g.cpus.unwrap_or(crate::admission::DEFAULT_GRANT_CPUS);
                if cpus > max {
                    over(
                        &mut errs,
                        at("cpus"),
                        cpus.to_string(),
                        "limits.cpus",
                        max.to_string(),
                    );
                }
            }
            if let Some(max) = l.pids {
                let pids = g.pids.unwrap_or(crate::admission::DEFAULT_GRANT_PIDS);
                if pids > max {
                    over(
                        &mut errs,
                        at("pids"),
                        pids.to_string(),
                        "limits.pids",
                        max.to_string(),
                    );
                }
            }
            if let Some(max) = l.scratch {
                let s = g.scratch.unwrap_or(crate::admission::DEFAULT_GRANT_SCRATCH);
                if s > max {
                    over(
                        &mut errs,
                        at("scratch"),
                        s.to_string(),
                        "limits.scratch",
                        max.to_string(),
                    );
                }
            }
            if let Some(allowed) = &self.network {
                for (i, d) in g.network.iter().enumerate() {
                    if !allowed.iter().any(|a| a.covers(d)) {
                        errs.push(FieldError::new(
                            at(&format!("network[{i}]")),
                            format!("{d} is outside the master policy's network list; remove it or add it there"),
                        ));
                    }
                }
            }
            for (key, list, allowed) in [
                ("devices", &g.devices, &self.devices),
                ("runtimes", &g.runtimes, &self.runtimes),
            ] {
                let Some(allowed) = allowed else { continue };
                for (i, d) in list.iter().enumerate() {
                    if !allowed.contains(d) {
                        errs.push(FieldError::new(
                            at(&format!("{key}[{i}]")),
                            format!("{d} is not in the master policy's {key}"),
                        ));
                    }
                }
            }
            if let Some(max) = self.syscalls
                && g.syscalls > max
            {
                over(
                    &mut errs,
                    at("syscalls"),
                    g.syscalls.to_string(),
                    "syscalls",
                    max.to_string(),
                );
            }
            if let Some(allowed) = &self.grantable {
                for (i, c) in g.grantable.iter().enumerate() {
                    let Ok(cap) = c.parse::<Capability>() else {
                        continue;
                    };
                    if !allowed.iter().any(|a| capability_covers(a, &cap)) {
                        errs.push(FieldError::new(
                            at(&format!("grantable[{i}]")),
                            format!("{cap} is not grantable under the master policy; remove it or add it to the master's grantable"),
                        ));
                    }
                }
            }
            for m in &self.require {
                if !g.require.contains(m) {
                    errs.push(FieldError::new(
                        at("require"),
                        format!(
                            "must include \"{m}\" (the master policy requires it for every agent)"
                        ),
                    ));
                }
            }
        }
        if let Some(allowed) = &self.signers {
            for (i, s) in p.signers.iter().enumerate() {
                if !allowed.iter().any(|a| same_signer(a, &s.trust)) {
                    errs.push(FieldError::new(
                        format!("signers[{i}]"),
                        "is not one of the master policy's signers; only those may sign bundles",
                    ));
                }
            }
        }
        errs
    }
}

fn over(errs: &mut Vec<FieldError>, field: String, have: String, rule: &str, max: String) {
    errs.push(FieldError::new(
        field,
        format!(
            "{have} exceeds the master policy's {rule} {max}; lower it or change the master policy"
        ),
    ));
}

/// A `net:` capability covers narrower endpoints; devices match exactly.
fn capability_covers(a: &Capability, b: &Capability) -> bool {
    match (a, b) {
        (Capability::Net(x), Capability::Net(y)) => x.covers(y),
        (Capability::Device(x), Capability::Device(y)) => x == y,
        _ => false,
    }
}

/// Identities compare by value; keys by the key file's content (paths differ per document).
fn same_signer(a: &SignerTrust, b: &SignerTrust) -> bool {
    match (a, b) {
        (SignerTrust::Key(x), SignerTrust::Key(y)) => {
            x == y
                || matches!(
                    (std::fs::read(x), std::fs::read(y)),
                    (Ok(kx), Ok(ky)) if kx == ky
                )
        }
        (
            SignerTrust::Identity { identity, issuer },
            SignerTrust::Identity {
                identity: i2,
                issuer: s2,
            },
        ) => identity == i2 && issuer == s2,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &str = r#"{ "version": 3,
      "limits": { "memory": "64MiB", "cpus": 1, "pids": 64, "scratch": "16MiB", "agents": 8 },
      "network": ["10.0.0.0/8:6379/tcp"],
      "runtimes": ["python3.11"],
      "syscalls": "default",
      "grantable": ["net:10.0.0.0/8:6379/tcp"],
      "signers": [ { "identity": "https://ci.example/release", "issuer": "https://token.example" } ],
      "require": ["bpf-egress"] }"#;

    fn master() -> MasterPolicy {
        MasterPolicy::check_doc(MASTER.as_bytes(), Path::new("/m")).unwrap()
    }

    fn policy(s: &str) -> Policy {
        Policy::check(s.as_bytes(), Path::new("/p")).unwrap()
    }

    #[test]
    fn within_bounds_passes() {
        let p = policy(
            r#"{"version": 1,
            "signers": [ { "agents": "*", "identity": "https://ci.example/release", "issuer": "https://token.example" } ],
            "agents": {"a": {"memory": "32MiB", "cpus": 0.5, "pids": 16, "network": ["10.1.2.3:6379/tcp"],
                             "runtimes": ["python3.11"],
                             "grantable": ["net:10.0.0.9:6379/tcp"], "require": ["bpf-egress"]}}}"#,
        );
        assert_eq!(master().check(&p), []);
    }

    #[test]
    fn every_excess_is_named() {
        let p = policy(
            r#"{"version": 1,
            "signers": [ { "agents": "*", "identity": "https://evil.example/x", "issuer": "https://token.example" } ],
            "agents": {"a": {"memory": "128MiB", "cpus": 2, "pids": 100, "scratch": "32MiB",
                             "network": ["192.168.1.1:80/tcp"], "syscalls": "default",
                             "runtimes": ["node20"],
                             "grantable": ["net:8.8.8.8:53/udp"]}}}"#,
        );
        let errs = master().check(&p);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "agents.a.memory",
                "agents.a.cpus",
                "agents.a.pids",
                "agents.a.scratch",
                "agents.a.network[0]",
                "agents.a.runtimes[0]",
                "agents.a.grantable[0]",
                "agents.a.require",
                "signers[0]"
            ],
            "{errs:?}"
        );
        assert!(
            errs[0]
                .reason
                .contains("128MiB exceeds the master policy's limits.memory 64MiB"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn bad_master_documents() {
        let e = MasterPolicy::check_doc(br#"{"version": 1, "limit": {}}"#, Path::new("/m"))
            .unwrap_err();
        assert_eq!(e[0].field, "limit");
        assert!(e[0].reason.contains("did you mean `limits`"), "{e:?}");
        let e = MasterPolicy::check_doc(
            br#"{"version": 1, "limits": {"memory": "lots"}, "grantable": ["x"]}"#,
            Path::new("/m"),
        )
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["limits.memory", "grantable[0]"], "{e:?}");
    }
}
