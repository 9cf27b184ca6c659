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
use serde_json::{Value, json};

use super::{
    ConfigError, FieldError, base_dir, check_len, check_name, diagnose, read_capped, resolve,
};

pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_MEMORY_RESERVE: ByteSize = ByteSize::mib(64);

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub version: u64,
    pub signers: Vec<Signer>,
    pub device: DevicePolicy,
    pub agents: BTreeMap<String, Grant>,
    /// Which agent may send which topic to which agent over the agent sockets.
    pub channels: Vec<Channel>,
    /// Agent → the exact version that may be installed even below its anti-rollback minimum
    /// (a signed fleet decision to go back to a known version).
    pub pinned_versions: BTreeMap<String, String>,
}

/// One permitted direction of inter-agent messages. `topic` `*` allows any topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub from: String,
    pub to: String,
    pub topic: String,
}

impl Channel {
    pub fn allows(&self, from: &str, to: &str, topic: &str) -> bool {
        self.from == from && self.to == to && (self.topic == "*" || self.topic == topic)
    }
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
    /// Runtime layers the agent may run on (`python3.11`, `node20`; docs/RUNTIMES.md).
    #[serde(default)]
    pub runtimes: Vec<String>,
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

/// One `on_violation` rule: exactly one trigger (an event count within `within_s`, or
/// `trust_below`) and the action to take when it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ViolationRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_connects: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_execs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_operations: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomalies: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_loops: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_messages: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_below: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_s: Option<u32>,
    pub action: ViolationAction,
}

/// What an agent did that rules count (and that lowers its trust score).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    DeniedConnect,
    DeniedExec,
    DeniedOperation,
    Anomaly,
    OomKill,
    CrashLoop,
    BadMessage,
}

impl Event {
    pub const ALL: [Event; 7] = [
        Event::DeniedConnect,
        Event::DeniedExec,
        Event::DeniedOperation,
        Event::Anomaly,
        Event::OomKill,
        Event::CrashLoop,
        Event::BadMessage,
    ];

    /// The rule key that counts this event (`denied_connects`).
    pub fn rule_key(self) -> &'static str {
        match self {
            Event::DeniedConnect => "denied_connects",
            Event::DeniedExec => "denied_execs",
            Event::DeniedOperation => "denied_operations",
            Event::Anomaly => "anomalies",
            Event::OomKill => "oom_kills",
            Event::CrashLoop => "crash_loops",
            Event::BadMessage => "bad_messages",
        }
    }
}

/// The one trigger of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Count {
        event: Event,
        count: u32,
        within_s: u32,
    },
    TrustBelow(u8),
}

/// Longest rule window: a day (the counters are bounded by it).
pub const MAX_WINDOW_S: u32 = 86_400;

impl ViolationRule {
    fn counts(&self) -> [(Event, Option<u32>); 7] {
        [
            (Event::DeniedConnect, self.denied_connects),
            (Event::DeniedExec, self.denied_execs),
            (Event::DeniedOperation, self.denied_operations),
            (Event::Anomaly, self.anomalies),
            (Event::OomKill, self.oom_kills),
            (Event::CrashLoop, self.crash_loops),
            (Event::BadMessage, self.bad_messages),
        ]
    }

    /// The rule's trigger, or (sub-key, reason) naming what is wrong with it.
    pub fn trigger(&self) -> Result<Trigger, (&'static str, String)> {
        let set: Vec<(Event, u32)> = self
            .counts()
            .into_iter()
            .filter_map(|(e, n)| n.map(|n| (e, n)))
            .collect();
        match (set.as_slice(), self.trust_below) {
            ([(event, count)], None) => {
                if *count == 0 {
                    return Err((event.rule_key(), "must be at least 1".into()));
                }
                match self.within_s {
                    None => Err((
                        "within_s",
                        "is missing; a count needs its window in seconds".into(),
                    )),
                    Some(w) if w == 0 || w > MAX_WINDOW_S => {
                        Err(("within_s", format!("{w} is outside 1..={MAX_WINDOW_S}")))
                    }
                    Some(within_s) => Ok(Trigger::Count {
                        event: *event,
                        count: *count,
                        within_s,
                    }),
                }
            }
            ([], Some(t)) => {
                if self.within_s.is_some() {
                    return Err((
                        "within_s",
                        "does not apply to trust_below; remove it".into(),
                    ));
                }
                if !(1..=100).contains(&t) {
                    return Err(("trust_below", format!("{t} is outside 1..=100")));
                }
                Ok(Trigger::TrustBelow(t))
            }
            ([], None) => Err((
                "",
                "names no trigger; use one of denied_connects, denied_execs, denied_operations, \
                 anomalies, oom_kills, crash_loops, bad_messages or trust_below"
                    .into(),
            )),
            _ => Err((
                "",
                "has more than one trigger; write one rule per trigger".into(),
            )),
        }
    }

    /// `5 denied_connects within 60 s`, for audit records.
    pub fn describe(&self) -> String {
        match self.trigger() {
            Ok(Trigger::Count {
                event,
                count,
                within_s,
            }) => format!("{count} {} within {within_s} s", event.rule_key()),
            Ok(Trigger::TrustBelow(t)) => format!("trust_below {t}"),
            Err(_) => "invalid rule".into(),
        }
    }
}

/// snake_case like the audit kinds (`"revoke_network"` in DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationAction {
    /// Only audit (and report upstream).
    Alert,
    /// Empty the agent's egress allowlist until a reload or restart.
    RevokeNetwork,
    /// Cut the agent's CPU quota to a quarter of its grant.
    Throttle,
    /// Freeze the agent's cgroup.
    Freeze,
    /// Stop the agent; it stays down until an operator starts it.
    Stop,
    /// Stop it and refuse every start until an operator clears the quarantine.
    Quarantine,
}

impl fmt::Display for ViolationAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Alert => "alert",
            Self::RevokeNetwork => "revoke_network",
            Self::Throttle => "throttle",
            Self::Freeze => "freeze",
            Self::Stop => "stop",
            Self::Quarantine => "quarantine",
        })
    }
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

/// Top-level keys of a policy document.
const POLICY_KEYS: [&str; 6] = [
    "version",
    "signers",
    "device",
    "agents",
    "channels",
    "pinned_versions",
];

impl Policy {
    /// Parses and checks each field; `origin` names the document in errors and is the
    /// base for relative key paths. The error carries every problem found.
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Self, ConfigError> {
        check_len(bytes, origin, MAX_POLICY_BYTES)?;
        Self::check(bytes, base_dir(origin)).map_err(|errs| ConfigError::invalid_all(origin, errs))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_capped(path, MAX_POLICY_BYTES)?, path)
    }

    /// Every problem of the document, each named by its JSON path, or the policy.
    /// Relative key paths resolve against `base`.
    pub fn check(bytes: &[u8], base: &Path) -> Result<Self, Vec<FieldError>> {
        let doc = diagnose::parse_unique(bytes).map_err(|e| vec![e])?;
        Self::from_value(&doc, base)
    }

    /// The same checks on an already parsed document (a signed envelope's payload).
    pub fn from_value(doc: &Value, base: &Path) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        let Some(top) = diagnose::object(doc, "(document)", &mut errs) else {
            return Err(errs);
        };
        diagnose::unknown_keys(top, "", &POLICY_KEYS, &mut errs);
        let version = match top.get("version") {
            None => {
                errs.push(FieldError::new(
                    "version",
                    "is missing; every policy carries a version number that only goes up",
                ));
                None
            }
            Some(v) => diagnose::section::<u64>(v, "version", &Value::Null, &mut errs),
        };
        let mut signers = Vec::new();
        if let Some(v) = top.get("signers") {
            match v.as_array() {
                None => errs.push(FieldError::new("signers", "must be an array")),
                Some(list) => {
                    let min = json!({"agents": "*"});
                    for (i, s) in list.iter().enumerate() {
                        let path = format!("signers[{i}]");
                        if let Some(raw) = diagnose::section::<RawSigner>(s, &path, &min, &mut errs)
                        {
                            match raw.into_signer(i, base) {
                                Ok(s) => signers.push(s),
                                Err(e) => errs.push(e),
                            }
                        }
                    }
                }
            }
        }
        let device = match top.get("device") {
            None => Some(DevicePolicy::default()),
            Some(v) => diagnose::section::<DevicePolicy>(v, "device", &json!({}), &mut errs),
        };
        let mut agents = BTreeMap::new();
        let mut declared = std::collections::BTreeSet::new();
        if let Some(v) = top.get("agents")
            && let Some(m) = diagnose::object(v, "agents", &mut errs)
        {
            let min = json!({"memory": "1MiB"});
            for (name, g) in m {
                declared.insert(name.as_str());
                if let Err(r) = check_name(name) {
                    errs.push(FieldError::new(format!("agents.{name}"), r));
                    continue;
                }
                let path = format!("agents.{name}");
                let before = errs.len();
                match diagnose::section::<Grant>(g, &path, &min, &mut errs) {
                    Some(grant) => {
                        agents.insert(name.clone(), grant);
                    }
                    // Without the keys that failed, the range checks still have something
                    // to say about the rest (every problem at once).
                    None => {
                        let failed: Vec<String> = errs[before..]
                            .iter()
                            .filter_map(|e| e.field.strip_prefix(&format!("{path}.")))
                            .map(str::to_owned)
                            .collect();
                        if let Some(rest) = diagnose::without(g, &failed)
                            && let Ok(grant) = serde_json::from_value::<Grant>(rest)
                        {
                            grant.problems(name, &mut errs);
                        }
                    }
                }
            }
        }
        let channels = match top.get("channels") {
            None => Some(Vec::new()),
            Some(v) => diagnose::section::<Vec<Channel>>(v, "channels", &Value::Null, &mut errs),
        };
        let pinned_versions = match top.get("pinned_versions") {
            None => Some(BTreeMap::new()),
            Some(v) => diagnose::section::<BTreeMap<String, String>>(
                v,
                "pinned_versions",
                &Value::Null,
                &mut errs,
            ),
        };
        let (Some(version), Some(device), Some(channels), Some(pinned_versions)) =
            (version, device, channels, pinned_versions)
        else {
            return Err(errs);
        };
        let p = Self {
            version,
            signers,
            device,
            agents,
            channels,
            pinned_versions,
        };
        p.problems_declared(&declared, &mut errs);
        if errs.is_empty() { Ok(p) } else { Err(errs) }
    }

    /// Field-by-field checks that need nothing but the policy itself; the first problem.
    pub fn validate(&self) -> Result<(), FieldError> {
        let mut errs = Vec::new();
        self.problems(&mut errs);
        errs.into_iter().next().map_or(Ok(()), Err)
    }

    /// Every field-level problem, appended to `errs`.
    pub fn problems(&self, errs: &mut Vec<FieldError>) {
        let names: std::collections::BTreeSet<&str> =
            self.agents.keys().map(String::as_str).collect();
        self.problems_declared(&names, errs);
    }

    /// [`Self::problems`], where `declared` are the agent names the document lists (including
    /// those whose grant had errors of its own, so a channel to them is not reported too).
    fn problems_declared(
        &self,
        declared: &std::collections::BTreeSet<&str>,
        errs: &mut Vec<FieldError>,
    ) {
        for (i, s) in self.signers.iter().enumerate() {
            if let Err(r) = check_pattern(&s.agents) {
                errs.push(FieldError::new(format!("signers[{i}].agents"), r));
            }
            match &s.trust {
                SignerTrust::Key(k) if k.as_os_str().is_empty() => {
                    errs.push(FieldError::new(format!("signers[{i}].key"), "is empty"));
                }
                SignerTrust::Key(_) => {}
                SignerTrust::Identity { identity, issuer } => {
                    if identity.is_empty() {
                        errs.push(FieldError::new(
                            format!("signers[{i}].identity"),
                            "is empty",
                        ));
                    }
                    if !issuer.starts_with("https://") || issuer.len() <= "https://".len() {
                        errs.push(FieldError::new(
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
                errs.push(FieldError::new(&field, format!("{pct} is outside 1..=100")));
            }
            if let Some(p) = prev
                && pct >= p
            {
                errs.push(FieldError::new(
                    field,
                    format!("{pct} must be below the previous rule's {p} (strictly descending)"),
                ));
            }
            if rule.critical.is_some() {
                errs.push(FieldError::new(
                    format!("device.battery[{i}].critical"),
                    "critical agents are never touched by battery tiers; remove it",
                ));
            } else if rule.background.is_none() && rule.normal.is_none() {
                errs.push(FieldError::new(
                    format!("device.battery[{i}]"),
                    "names no action for background or normal agents",
                ));
            }
            prev = Some(pct);
        }
        for (name, grant) in &self.agents {
            grant.problems(name, errs);
        }
        for (i, c) in self.channels.iter().enumerate() {
            for (key, agent) in [("from", &c.from), ("to", &c.to)] {
                if !declared.contains(agent.as_str()) {
                    errs.push(FieldError::new(
                        format!("channels[{i}].{key}"),
                        format!(
                            "`{}` is not an agent of this policy; add it under agents or fix the name",
                            agent.escape_default()
                        ),
                    ));
                }
            }
            if c.from == c.to {
                errs.push(FieldError::new(
                    format!("channels[{i}]"),
                    "sends to itself; a channel connects two different agents",
                ));
            }
            if let Err(r) = check_topic(&c.topic) {
                errs.push(FieldError::new(format!("channels[{i}].topic"), r));
            }
            if self.channels[..i].contains(c) {
                errs.push(FieldError::new(
                    format!("channels[{i}]"),
                    "repeats an earlier channel; remove one",
                ));
            }
        }
        for (name, v) in &self.pinned_versions {
            let field = format!("pinned_versions.{name}");
            if !declared.contains(name.as_str()) {
                errs.push(FieldError::new(
                    &field,
                    "names an agent this policy does not grant anything to",
                ));
            }
            if crate::daemon::installer::semver(v).is_none() {
                errs.push(FieldError::new(
                    field,
                    format!(
                        "`{}` is not a semantic version such as 1.4.0",
                        v.escape_default()
                    ),
                ));
            }
        }
    }
}

/// Channel topics: 1 to 64 of a-z 0-9 . _ - or exactly `*`.
fn check_topic(t: &str) -> Result<(), String> {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c);
    if t == "*" || (!t.is_empty() && t.len() <= 64 && t.bytes().all(ok)) {
        Ok(())
    } else {
        Err(format!(
            "topic `{}` must be `*` or 1 to 64 of a-z 0-9 . _ -",
            t.escape_default()
        ))
    }
}

/// Topics in socket messages follow the same rule as in channels.
pub fn valid_topic(t: &str) -> bool {
    t != "*" && check_topic(t).is_ok()
}

impl Grant {
    /// Checks one grant; the first problem (fields are named `agents.NAME.FIELD`).
    pub fn validate(&self, name: &str) -> Result<(), FieldError> {
        let mut errs = Vec::new();
        self.problems(name, &mut errs);
        errs.into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem of one grant, appended to `errs`.
    pub fn problems(&self, name: &str, errs: &mut Vec<FieldError>) {
        if let Err(r) = check_name(name) {
            errs.push(FieldError::new("agents", r));
        }
        let prefix = format!("agents.{name}");
        if let Err(e) = check_limits(
            &prefix,
            self.memory,
            self.cpus,
            self.pids,
            self.scratch,
            &self.devices,
        ) {
            errs.push(e);
        }
        if let Some(e) = &self.energy {
            if e.budget_mwh == 0 {
                errs.push(FieldError::new(
                    format!("{prefix}.energy.budget_mwh"),
                    "must be at least 1",
                ));
            }
            if e.window_s == 0 {
                errs.push(FieldError::new(
                    format!("{prefix}.energy.window_s"),
                    "must be at least 1",
                ));
            }
        }
        for (i, rt) in self.runtimes.iter().enumerate() {
            if let Err(r) = super::manifest::check_runtime_name(rt) {
                errs.push(FieldError::new(format!("{prefix}.runtimes[{i}]"), r));
            }
        }
        for (i, cap) in self.grantable.iter().enumerate() {
            if let Err(r) = cap.parse::<Capability>() {
                errs.push(FieldError::new(format!("{prefix}.grantable[{i}]"), r));
            }
        }
        for (i, rule) in self.on_violation.iter().enumerate() {
            if let Err((key, r)) = rule.trigger() {
                let field = if key.is_empty() {
                    format!("{prefix}.on_violation[{i}]")
                } else {
                    format!("{prefix}.on_violation[{i}].{key}")
                };
                errs.push(FieldError::new(field, r));
            }
        }
    }

    /// The parsed `grantable` entries (validated at parse time; bad ones are skipped).
    pub fn capabilities(&self) -> Vec<Capability> {
        self.grantable
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
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
pub(crate) fn glob_match(pat: &[u8], s: &[u8]) -> bool {
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
        assert_eq!(g.on_violation.len(), 1);
        assert_eq!(
            g.on_violation[0].trigger(),
            Ok(Trigger::Count {
                event: Event::DeniedConnect,
                count: 5,
                within_s: 60
            })
        );
        assert_eq!(g.on_violation[0].action, ViolationAction::RevokeNetwork);
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
                .contains("agents.a.memory: is missing")
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
            assert!(
                msg.contains(&format!("unknown field `{key}`"))
                    || msg.contains(&format!("{key}: is not a known key")),
                "{msg}"
            );
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
                "agents.Sensor",
            ),
            (
                r#""agents": { "sensor""#,
                r#""agents": { "../x""#,
                "agents.../x",
            ),
        ] {
            assert_eq!(invalid_field(&with(from, to)), field, "{to}");
        }
    }

    #[test]
    fn bad_values_in_json() {
        for (from, to, needle, path) in [
            (
                r#""memory": "32MiB""#,
                r#""memory": "32 MiB""#,
                "`32 MiB`",
                "agents.sensor.memory: ",
            ),
            (
                r#""network": ["10.0.0.5:6379/tcp"]"#,
                r#""network": ["10.0.0.5"]"#,
                "`10.0.0.5`",
                "agents.sensor.network: ",
            ),
            (
                r#""action": "throttle""#,
                r#""action": "explode""#,
                "unknown variant `explode`",
                "agents.sensor.energy: ",
            ),
        ] {
            let msg = parse(&with(from, to)).unwrap_err().to_string();
            assert!(msg.contains(needle) && msg.contains(path), "{msg}");
        }
        let dup = with(
            r#""agents": { "sensor""#,
            r#""agents": { "sensor": {"memory": 1048576}, "sensor""#,
        );
        assert!(
            parse(&dup)
                .unwrap_err()
                .to_string()
                .contains("agents.sensor: appears twice")
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let doc = r#"{"version": 2, "verison": 3,
          "agents": {
            "a": {"memory": "1KiB", "cpus": "lots", "pids": 0, "memroy": "1MiB"},
            "b": {"memory": "8MiB", "on_violation": [{"denied_connects": 3, "action": "stop"},
                                                     {"anomalies": 1, "trust_below": 50, "action": "alert"}]}},
          "channels": [{"from": "a", "to": "ghost", "topic": "x"}],
          "pinned_versions": {"b": "one"}}"#;
        let errs = Policy::check(doc.as_bytes(), Path::new("/")).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "verison",
                "agents.a.cpus",
                "agents.a.memroy",
                "agents.a.memory",
                "agents.b.on_violation[0].within_s",
                "agents.b.on_violation[1]",
                "channels[0].to",
                "pinned_versions.b"
            ],
            "{errs:?}"
        );
        assert!(errs[2].reason.contains("memory"), "{}", errs[2]);
        // Once the types are right, the range checks of every agent are reported too.
        let doc = r#"{"version": 2, "agents": {"a": {"memory": "1KiB", "pids": 0}, "b": {"memory": "1MiB", "cpus": 9999}}}"#;
        let errs = Policy::check(doc.as_bytes(), Path::new("/")).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["agents.a.memory", "agents.b.cpus"], "{errs:?}");
    }

    #[test]
    fn violation_rules_and_channels() {
        let p = parse(
            r#"{"version": 1,
              "agents": {"a": {"memory": "1MiB", "on_violation": [
                  {"denied_execs": 1, "within_s": 10, "action": "quarantine"},
                  {"trust_below": 40, "action": "throttle"},
                  {"bad_messages": 3, "within_s": 5, "action": "alert"}]},
                         "b": {"memory": "1MiB"}},
              "channels": [{"from": "a", "to": "b", "topic": "readings"}, {"from": "b", "to": "a", "topic": "*"}]}"#,
        )
        .unwrap();
        let r = &p.agents["a"].on_violation;
        assert_eq!(r[1].trigger(), Ok(Trigger::TrustBelow(40)));
        assert_eq!(r[0].describe(), "1 denied_execs within 10 s");
        assert!(p.channels[0].allows("a", "b", "readings"));
        assert!(!p.channels[0].allows("b", "a", "readings"));
        assert!(p.channels[1].allows("b", "a", "anything"));
        for (rule, field) in [
            (r#"{"action": "stop"}"#, "agents.a.on_violation[0]"),
            (
                r#"{"oom_kills": 0, "within_s": 1, "action": "stop"}"#,
                "agents.a.on_violation[0].oom_kills",
            ),
            (
                r#"{"trust_below": 0, "action": "stop"}"#,
                "agents.a.on_violation[0].trust_below",
            ),
            (
                r#"{"trust_below": 50, "within_s": 9, "action": "stop"}"#,
                "agents.a.on_violation[0].within_s",
            ),
            (
                r#"{"crash_loops": 1, "within_s": 999999, "action": "stop"}"#,
                "agents.a.on_violation[0].within_s",
            ),
        ] {
            let doc = format!(
                r#"{{"version": 1, "agents": {{"a": {{"memory": "1MiB", "on_violation": [{rule}]}}}}}}"#
            );
            assert_eq!(invalid_field(&doc), field, "{rule}");
        }
        let self_channel = r#"{"version": 1, "agents": {"a": {"memory": "1MiB"}}, "channels": [{"from": "a", "to": "a", "topic": "t"}]}"#;
        assert_eq!(invalid_field(self_channel), "channels[0]");
        let bad_topic = r#"{"version": 1, "agents": {"a": {"memory": "1MiB"}, "b": {"memory": "1MiB"}}, "channels": [{"from": "a", "to": "b", "topic": "A B"}]}"#;
        assert_eq!(invalid_field(bad_topic), "channels[0].topic");
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
