//! The policy: what the fleet operator *grants* (DESIGN.md §1). Zero by default: an agent
//! absent from `agents` gets nothing, an omitted list grants nothing and an omitted
//! `syscalls` grants only the strict profile. Parsing checks every field on its own
//! ([`Policy::validate`]); checks that need the device (the memory sum) are in
//! `crate::admission::validate_policy`, which re-runs these too.
//!
//! Signer key paths are resolved against the policy file's directory, like device.json.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::manifest::{Destination, Endpoint, SyscallProfile, check_device, check_limits};
use super::units::ByteSize;
use super::{
    ConfigError, FieldError, base_dir, check_len, check_name, read_capped, resolve, unique_map,
};

pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_MEMORY_RESERVE: ByteSize = ByteSize::mib(64);

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub version: u64,
    pub signers: Vec<Signer>,
    pub device: DevicePolicy,
    pub agents: BTreeMap<String, Grant>,
}

/// Who may sign bundles for the agents whose names match `agents` (a glob where `*`
/// matches any run of characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub agents: String,
    pub trust: SignerTrust,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerTrust {
    /// A public key file (resolved against the policy file's directory).
    Key(PathBuf),
    /// A Sigstore keyless identity: certificate SAN and OIDC issuer.
    Identity { identity: String, issuer: String },
}

impl Signer {
    pub fn matches(&self, agent: &str) -> bool {
        glob_match(self.agents.as_bytes(), agent.as_bytes())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePolicy {
    /// Memory kept back from agents for the kernel and the supervisor.
    #[serde(default = "default_reserve")]
    pub memory_reserve: ByteSize,
    /// Rules by battery level, thresholds strictly descending.
    #[serde(default)]
    pub battery: Vec<BatteryRule>,
}

fn default_reserve() -> ByteSize {
    DEFAULT_MEMORY_RESERVE
}

impl Default for DevicePolicy {
    fn default() -> Self {
        Self {
            memory_reserve: DEFAULT_MEMORY_RESERVE,
            battery: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatteryRule {
    pub below_percent: u8,
    #[serde(default)]
    pub background: Option<BatteryAction>,
    #[serde(default)]
    pub normal: Option<BatteryAction>,
    #[serde(default)]
    pub critical: Option<BatteryAction>,
}

/// What to do to an agent when a battery rule or its energy budget trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatteryAction {
    Freeze,
    Throttle,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub memory: ByteSize,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pids: Option<u32>,
    #[serde(default)]
    pub scratch: Option<ByteSize>,
    #[serde(default)]
    pub network: Vec<Destination>,
    #[serde(default)]
    pub devices: Vec<String>,
    /// The most permissive profile granted.
    #[serde(default = "default_grant_syscalls")]
    pub syscalls: SyscallProfile,
    #[serde(default)]
    pub energy: Option<Energy>,
    /// Capabilities the agent may ask for at run time with a grant token
    /// (`net:ip:port/proto` or `dev:/dev/...`; see [`Capability`]).
    #[serde(default)]
    pub grantable: Vec<String>,
    #[serde(default)]
    pub on_violation: Vec<ViolationRule>,
    /// Mechanisms without which the agent must not start (no silent fallback).
    #[serde(default)]
    pub require: Vec<Mechanism>,
}

/// An enforcement mechanism a policy can require (`"require": ["bpf-egress"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// eBPF egress allowlist (otherwise: no network at all).
    BpfEgress,
    /// BPF LSM exec/file/mount/ptrace/socket policy (otherwise: Landlock + seccomp + mounts).
    BpfLsm,
    /// Landlock filesystem rules (otherwise: read-only mounts + seccomp).
    Landlock,
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mechanism::BpfEgress => "bpf-egress",
            Mechanism::BpfLsm => "bpf-lsm",
            Mechanism::Landlock => "landlock",
        })
    }
}

fn default_grant_syscalls() -> SyscallProfile {
    SyscallProfile::Strict
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Energy {
    pub budget_mwh: u64,
    pub window_s: u32,
    pub action: BatteryAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViolationRule {
    pub denied_connects: u32,
    pub within_s: u32,
    pub action: ViolationAction,
}

/// snake_case like the audit kinds (`"revoke_network"` in DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationAction {
    RevokeNetwork,
    Freeze,
    Stop,
    Quarantine,
}

/// A run-time grantable capability, parsed from a `grantable` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Capability {
    Net(Endpoint),
    Device(String),
}

impl FromStr for Capability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(ep) = s.strip_prefix("net:") {
            ep.parse().map(Self::Net).map_err(|e| e.to_string())
        } else if let Some(dev) = s.strip_prefix("dev:") {
            check_device(dev)?;
            Ok(Self::Device(dev.into()))
        } else {
            Err(format!(
                "`{}` is not a capability; use net:IP:PORT/PROTO or dev:/dev/NAME",
                s.escape_default()
            ))
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Net(ep) => write!(f, "net:{ep}"),
            Self::Device(d) => write!(f, "dev:{d}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u64,
    #[serde(default)]
    signers: Vec<RawSigner>,
    #[serde(default)]
    device: DevicePolicy,
    #[serde(default, deserialize_with = "unique_map")]
    agents: BTreeMap<String, Grant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigner {
    agents: String,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
}

impl RawSigner {
    fn into_signer(self, i: usize, base: &Path) -> Result<Signer, FieldError> {
        let field = |f: &str| format!("signers[{i}]{f}");
        let trust = match (self.key, self.identity, self.issuer) {
            (Some(key), None, None) => SignerTrust::Key(if key.as_os_str().is_empty() {
                key
            } else {
                resolve(base, &key)
            }),
            (None, Some(identity), Some(issuer)) => SignerTrust::Identity { identity, issuer },
            (None, Some(_), None) => {
                return Err(FieldError::new(
                    field(".issuer"),
                    "missing; `identity` needs the OIDC `issuer`",
                ));
            }
            (None, None, Some(_)) => {
                return Err(FieldError::new(
                    field(".identity"),
                    "missing; `issuer` needs the certificate `identity`",
                ));
            }
            (None, None, None) => {
                return Err(FieldError::new(
                    field(""),
                    "needs either `key` or `identity` and `issuer`",
                ));
            }
            (Some(_), _, _) => {
                return Err(FieldError::new(
                    field(""),
                    "has both `key` and `identity`/`issuer`; use one form per signer",
                ));
            }
        };
        Ok(Signer {
            agents: self.agents,
            trust,
        })
    }
}

impl Policy {
    /// Parses and checks each field; `origin` names the document in errors and is the
    /// base for relative key paths.
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Self, ConfigError> {
        check_len(bytes, origin, MAX_POLICY_BYTES)?;
        let raw: RawPolicy =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::json(origin, e))?;
        let base = base_dir(origin);
        let signers = raw
            .signers
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.into_signer(i, base))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::invalid(origin, e))?;
        let p = Self {
            version: raw.version,
            signers,
            device: raw.device,
            agents: raw.agents,
        };
        p.validate().map_err(|e| ConfigError::invalid(origin, e))?;
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_capped(path, MAX_POLICY_BYTES)?, path)
    }

    /// Field-by-field checks that need nothing but the policy itself.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (i, s) in self.signers.iter().enumerate() {
            check_pattern(&s.agents)
                .map_err(|r| FieldError::new(format!("signers[{i}].agents"), r))?;
            match &s.trust {
                SignerTrust::Key(k) if k.as_os_str().is_empty() => {
                    return Err(FieldError::new(format!("signers[{i}].key"), "is empty"));
                }
                SignerTrust::Key(_) => {}
                SignerTrust::Identity { identity, issuer } => {
                    if identity.is_empty() {
                        return Err(FieldError::new(
                            format!("signers[{i}].identity"),
                            "is empty",
                        ));
                    }
                    if !issuer.starts_with("https://") || issuer.len() <= "https://".len() {
                        return Err(FieldError::new(
                            format!("signers[{i}].issuer"),
                            format!("`{}` must be an https:// URL", issuer.escape_default()),
                        ));
                    }
                }
            }
        }
        let mut prev: Option<u8> = None;
        for (i, rule) in self.device.battery.iter().enumerate() {
            let field = format!("device.battery[{i}].below_percent");
            let pct = rule.below_percent;
            if !(1..=100).contains(&pct) {
                return Err(FieldError::new(field, format!("{pct} is outside 1..=100")));
            }
            if let Some(p) = prev
                && pct >= p
            {
                return Err(FieldError::new(
                    field,
                    format!("{pct} must be below the previous rule's {p} (strictly descending)"),
                ));
            }
            if rule.background.is_none() && rule.normal.is_none() && rule.critical.is_none() {
                return Err(FieldError::new(
                    format!("device.battery[{i}]"),
                    "names no action for background, normal or critical",
                ));
            }
            prev = Some(pct);
        }
        for (name, grant) in &self.agents {
            grant.validate(name)?;
        }
        Ok(())
    }
}

impl Grant {
    /// Checks one grant; fields are named `agents.NAME.FIELD`.
    pub fn validate(&self, name: &str) -> Result<(), FieldError> {
        check_name(name).map_err(|r| FieldError::new("agents", r))?;
        let prefix = format!("agents.{name}");
        check_limits(
            &prefix,
            self.memory,
            self.cpus,
            self.pids,
            self.scratch,
            &self.devices,
        )?;
        if let Some(e) = &self.energy {
            if e.budget_mwh == 0 {
                return Err(FieldError::new(
                    format!("{prefix}.energy.budget_mwh"),
                    "must be at least 1",
                ));
            }
            if e.window_s == 0 {
                return Err(FieldError::new(
                    format!("{prefix}.energy.window_s"),
                    "must be at least 1",
                ));
            }
        }
        for (i, cap) in self.grantable.iter().enumerate() {
            cap.parse::<Capability>()
                .map_err(|r| FieldError::new(format!("{prefix}.grantable[{i}]"), r))?;
        }
        for (i, rule) in self.on_violation.iter().enumerate() {
            if rule.denied_connects == 0 {
                return Err(FieldError::new(
                    format!("{prefix}.on_violation[{i}].denied_connects"),
                    "must be at least 1",
                ));
            }
            if rule.within_s == 0 {
                return Err(FieldError::new(
                    format!("{prefix}.on_violation[{i}].within_s"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

/// Signer patterns: agent-name characters plus `*`, non-empty.
fn check_pattern(p: &str) -> Result<(), String> {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*".contains(&c);
    if p.is_empty() || p.len() > 64 || !p.bytes().all(ok) {
        return Err(format!(
            "pattern `{}` must be 1 to 64 of a-z 0-9 _ - *",
            p.escape_default()
        ));
    }
    Ok(())
}

/// `*` matches any run (including empty); everything else matches itself.
fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pat.len() && pat[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::temp_file;

    /// DESIGN.md §1, verbatim.
    pub(crate) const EXAMPLE: &str = r#"{ "version": 7,
  "signers": [ { "agents": "sensor*", "key": "keys/vendor.pub" },
               { "agents": "*", "identity": "https://github.com/acme/agents/.github/workflows/release.yml@refs/heads/main",
                 "issuer": "https://token.actions.githubusercontent.com" } ],
  "device": { "memory_reserve": "64MiB",
              "battery": [ { "below_percent": 30, "background": "freeze", "normal": "throttle" },
                           { "below_percent": 10, "normal": "stop" } ] },
  "agents": { "sensor": { "memory": "32MiB", "cpus": 0.25, "pids": 16, "scratch": "8MiB",
                          "network": ["10.0.0.5:6379/tcp"],
                          "energy": { "budget_mwh": 500, "window_s": 3600, "action": "throttle" },
                          "grantable": ["net:10.0.0.9:6379/tcp"],
                          "on_violation": [ { "denied_connects": 5, "within_s": 60, "action": "revoke_network" } ] } } }"#;

    fn parse(s: &str) -> Result<Policy, ConfigError> {
        Policy::parse(s.as_bytes(), Path::new("/etc/nanoclaw/policy.json"))
    }

    fn with(from: &str, to: &str) -> String {
        super::super::testing::replace_once(EXAMPLE, from, to)
    }

    fn invalid_field(s: &str) -> String {
        super::super::testing::invalid_field(parse(s))
    }

    #[test]
    fn design_example_parses() {
        let p = parse(EXAMPLE).unwrap();
        assert_eq!(p.version, 7);
        assert_eq!(
            p.signers,
            [
                Signer {
                    agents: "sensor*".into(),
                    trust: SignerTrust::Key("/etc/nanoclaw/keys/vendor.pub".into()),
                },
                Signer {
                    agents: "*".into(),
                    trust: SignerTrust::Identity {
                        identity: "https://github.com/acme/agents/.github/workflows/release.yml@refs/heads/main".into(),
                        issuer: "https://token.actions.githubusercontent.com".into(),
                    },
                },
            ]
        );
        assert_eq!(p.device.memory_reserve, ByteSize::mib(64));
        assert_eq!(
            p.device.battery,
            [
                BatteryRule {
                    below_percent: 30,
                    background: Some(BatteryAction::Freeze),
                    normal: Some(BatteryAction::Throttle),
                    critical: None,
                },
                BatteryRule {
                    below_percent: 10,
                    background: None,
                    normal: Some(BatteryAction::Stop),
                    critical: None,
                },
            ]
        );
        let g = &p.agents["sensor"];
        assert_eq!(g.memory, ByteSize::mib(32));
        assert_eq!(g.cpus, Some(0.25));
        assert_eq!(g.pids, Some(16));
        assert_eq!(g.scratch, Some(ByteSize::mib(8)));
        assert_eq!(g.network, ["10.0.0.5:6379/tcp".parse().unwrap()]);
        assert!(g.devices.is_empty());
        assert_eq!(g.syscalls, SyscallProfile::Strict);
        assert_eq!(
            g.energy,
            Some(Energy {
                budget_mwh: 500,
                window_s: 3600,
                action: BatteryAction::Throttle
            })
        );
        assert_eq!(
            g.grantable[0].parse::<Capability>(),
            Ok(Capability::Net("10.0.0.9:6379/tcp".parse().unwrap()))
        );
        assert_eq!(
            g.on_violation,
            [ViolationRule {
                denied_connects: 5,
                within_s: 60,
                action: ViolationAction::RevokeNetwork
            }]
        );
    }

    #[test]
    fn empty_policy_grants_nothing() {
        let p = parse(r#"{"version": 1}"#).unwrap();
        assert!(p.agents.is_empty() && p.signers.is_empty());
        assert_eq!(p.device, DevicePolicy::default());
        let p = parse(r#"{"version": 1, "agents": {"a": {"memory": "4MiB"}}}"#).unwrap();
        let g = &p.agents["a"];
        assert_eq!(g.syscalls, SyscallProfile::Strict);
        assert!(g.network.is_empty() && g.devices.is_empty() && g.grantable.is_empty());
        assert_eq!((g.cpus, g.pids, g.scratch), (None, None, None));
        assert!(
            parse(r#"{"version": 1, "agents": {"a": {}}}"#)
                .unwrap_err()
                .to_string()
                .contains("missing field `memory`")
        );
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        for (from, to, key) in [
            (
                r#""version": 7"#,
                r#""version": 7, "verison": 8"#,
                "verison",
            ),
            (
                r#""memory_reserve": "64MiB""#,
                r#""memory_reserve": "64MiB", "swap": 1"#,
                "swap",
            ),
            (
                r#""below_percent": 30"#,
                r#""below_percent": 30, "idle": "stop""#,
                "idle",
            ),
            (r#""pids": 16"#, r#""pids": 16, "pid": 1"#, "pid"),
            (r#""window_s": 3600"#, r#""window_s": 3600, "w": 1"#, "w"),
            (r#""within_s": 60"#, r#""within_s": 60, "n": 1"#, "n"),
            (
                r#""agents": "sensor*""#,
                r#""agents": "sensor*", "kid": "x""#,
                "kid",
            ),
        ] {
            let msg = parse(&with(from, to)).unwrap_err().to_string();
            assert!(msg.contains(&format!("unknown field `{key}`")), "{msg}");
            assert!(msg.starts_with("/etc/nanoclaw/policy.json: "), "{msg}");
        }
    }

    #[test]
    fn malformed_json_names_file_and_line() {
        let msg = parse(&with(r#""pids": 16,"#, r#""pids": 16,,"#))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("/etc/nanoclaw/policy.json: "), "{msg}");
        assert!(msg.contains("line 8"), "{msg}");
    }

    #[test]
    fn oversize_is_refused() {
        let big = format!("{}{}", EXAMPLE, " ".repeat(MAX_POLICY_BYTES as usize));
        assert!(matches!(parse(&big), Err(ConfigError::TooLarge { .. })));
        let (_dir_path, path) = temp_file("policy-big.json", big.as_bytes());
        assert!(matches!(
            Policy::load(&path),
            Err(ConfigError::TooLarge {
                limit: MAX_POLICY_BYTES,
                ..
            })
        ));
        let (_dir_ok, ok) = temp_file("policy-ok.json", EXAMPLE.as_bytes());
        let p = Policy::load(&ok).unwrap();
        assert_eq!(
            p.signers[0].trust,
            SignerTrust::Key(ok.parent().unwrap().join("keys/vendor.pub"))
        );
    }

    #[test]
    fn signer_forms() {
        let key_and_identity = with(
            r#""key": "keys/vendor.pub""#,
            r#""key": "keys/vendor.pub", "identity": "x", "issuer": "https://i""#,
        );
        assert_eq!(invalid_field(&key_and_identity), "signers[0]");
        let no_issuer = with(
            r#",
                 "issuer": "https://token.actions.githubusercontent.com""#,
            "",
        );
        assert_eq!(invalid_field(&no_issuer), "signers[1].issuer");
        let neither = with(r#", "key": "keys/vendor.pub""#, "");
        assert_eq!(invalid_field(&neither), "signers[0]");
        let empty = with(r#""agents": "sensor*""#, r#""agents": """#);
        assert_eq!(invalid_field(&empty), "signers[0].agents");
        let http = with(
            "https://token.actions.githubusercontent.com",
            "http://token.actions.githubusercontent.com",
        );
        assert_eq!(invalid_field(&http), "signers[1].issuer");
        let absolute_key = with("keys/vendor.pub", "/opt/keys/v.pub");
        assert_eq!(
            parse(&absolute_key).unwrap().signers[0].trust,
            SignerTrust::Key("/opt/keys/v.pub".into())
        );
    }

    #[test]
    fn glob() {
        let s = |p: &str| Signer {
            agents: p.into(),
            trust: SignerTrust::Key("k".into()),
        };
        assert!(s("sensor*").matches("sensor"));
        assert!(s("sensor*").matches("sensor-2"));
        assert!(!s("sensor*").matches("xsensor"));
        assert!(s("*").matches("anything"));
        assert!(s("a*b*c").matches("aXbYbc"));
        assert!(!s("a*b*c").matches("aXbYbd"));
        assert!(s("exact").matches("exact") && !s("exact").matches("exact2"));
    }

    #[test]
    fn field_checks() {
        for (from, to, field) in [
            (
                r#""below_percent": 30"#,
                r#""below_percent": 0"#,
                "device.battery[0].below_percent",
            ),
            (
                r#""below_percent": 30"#,
                r#""below_percent": 101"#,
                "device.battery[0].below_percent",
            ),
            (
                r#""below_percent": 10"#,
                r#""below_percent": 30"#,
                "device.battery[1].below_percent",
            ),
            (
                r#""below_percent": 10"#,
                r#""below_percent": 40"#,
                "device.battery[1].below_percent",
            ),
            (r#", "normal": "stop""#, "", "device.battery[1]"),
            (r#""cpus": 0.25"#, r#""cpus": -1"#, "agents.sensor.cpus"),
            (r#""pids": 16"#, r#""pids": 0"#, "agents.sensor.pids"),
            (
                r#""memory": "32MiB""#,
                r#""memory": "1KiB""#,
                "agents.sensor.memory",
            ),
            (
                r#""budget_mwh": 500"#,
                r#""budget_mwh": 0"#,
                "agents.sensor.energy.budget_mwh",
            ),
            (
                r#""net:10.0.0.9:6379/tcp""#,
                r#""10.0.0.9:6379/tcp""#,
                "agents.sensor.grantable[0]",
            ),
            (
                r#""net:10.0.0.9:6379/tcp""#,
                r#""net:10.0.0.9/tcp""#,
                "agents.sensor.grantable[0]",
            ),
            (
                r#""denied_connects": 5"#,
                r#""denied_connects": 0"#,
                "agents.sensor.on_violation[0].denied_connects",
            ),
            (
                r#""agents": { "sensor""#,
                r#""agents": { "Sensor""#,
                "agents",
            ),
            (r#""agents": { "sensor""#, r#""agents": { "../x""#, "agents"),
        ] {
            assert_eq!(invalid_field(&with(from, to)), field, "{to}");
        }
    }

    #[test]
    fn bad_values_in_json() {
        for (from, to, needle) in [
            (r#""memory": "32MiB""#, r#""memory": "32 MiB""#, "`32 MiB`"),
            (
                r#""network": ["10.0.0.5:6379/tcp"]"#,
                r#""network": ["10.0.0.5"]"#,
                "`10.0.0.5`",
            ),
            (
                r#""action": "throttle""#,
                r#""action": "explode""#,
                "unknown variant `explode`",
            ),
        ] {
            let msg = parse(&with(from, to)).unwrap_err().to_string();
            assert!(msg.contains(needle) && msg.contains("line "), "{msg}");
        }
        let dup = with(
            r#""agents": { "sensor""#,
            r#""agents": { "sensor": {"memory": 1048576}, "sensor""#,
        );
        assert!(
            parse(&dup)
                .unwrap_err()
                .to_string()
                .contains("duplicate key `sensor`")
        );
    }

    #[test]
    fn capabilities() {
        assert_eq!(
            "dev:/dev/ttyUSB0".parse::<Capability>(),
            Ok(Capability::Device("/dev/ttyUSB0".into()))
        );
        assert!("dev:/etc/passwd".parse::<Capability>().is_err());
        assert!("file:/x".parse::<Capability>().is_err());
        let c: Capability = "net:[fd00::1]:53/udp".parse().unwrap();
        assert_eq!(c.to_string(), "net:[fd00::1]:53/udp");
    }
}
