//! `manifest.json`: what an agent *asks for* (DESIGN.md §1). Written by the agent author,
//! so it is untrusted: capped at [`MAX_MANIFEST_BYTES`], unknown keys refused, every value
//! range-checked here. Nothing in a manifest grants anything; `crate::admission`
//! intersects it with the policy.
//!
//! [`Endpoint`] and [`SyscallProfile`] live here because requests and grants share them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::units::{ByteSize, MIB};
use super::{ConfigError, FieldError, check_len, check_name, read_capped, unique_map};

pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
pub const MAX_ENV_ENTRIES: usize = 64;
pub const MAX_VERSION_LEN: usize = 32;
pub const MAX_CPUS: f64 = 1024.0;
/// The kernel's highest possible `pid_max`.
pub const MAX_PIDS: u32 = 4_194_304;
pub const MIN_MEMORY: u64 = MIB;
/// Smallest scratch tmpfs: `size=0` means *unlimited* to tmpfs, so zero is refused.
pub const MIN_SCRATCH: u64 = 4096;
pub const MAX_STOP_GRACE_S: u32 = 300;
pub const MAX_HEARTBEAT_S: u32 = 86_400;
pub const MAX_RESTARTS_PER_HOUR: u32 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Long-running; restarted according to [`RestartSpec`].
    Service,
    /// Runs to completion.
    Task,
}

/// Scheduling / battery class; the policy's battery rules act per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    Critical,
    #[default]
    Normal,
    Background,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// Seccomp profile, ordered by how much it allows: `Strict < Default`. A request is
/// admitted only if it is `<=` the granted profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyscallProfile {
    Strict,
    Default,
}

impl fmt::Display for SyscallProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Strict => "strict",
            Self::Default => "default",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A network endpoint `ip[/prefix]:port/proto`, e.g. `10.0.0.5:6379/tcp`,
/// `10.0.0.0/24:6379/tcp` or `[fd00::/64]:53/udp`. Kept parsed so the BPF egress map is filled
/// from typed values, never from strings. `prefix` is 32 (IPv4) or 128 (IPv6) for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub prefix: u8,
}

impl Endpoint {
    fn full_prefix(ip: std::net::IpAddr) -> u8 {
        if ip.is_ipv4() { 32 } else { 128 }
    }

    /// Whether every destination of `other` is also a destination of `self`.
    pub fn covers(&self, other: &Endpoint) -> bool {
        if self.proto != other.proto
            || self.addr.port() != other.addr.port()
            || self.prefix > other.prefix
        {
            return false;
        }
        match (self.addr.ip(), other.addr.ip()) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "endpoint `{text}`: {reason}; expected ip:port/proto such as 10.0.0.5:6379/tcp or [fd00::1]:53/udp, or host:port/proto such as api.example.com:443/tcp"
)]
pub struct EndpointError {
    pub text: String,
    pub reason: &'static str,
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| EndpointError {
            text: text.into(),
            reason,
        };
        let (addr, proto) = text.rsplit_once('/').ok_or_else(|| err("missing /proto"))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(err("protocol must be tcp or udp")),
        };
        // Split off an optional /prefix: inside the brackets for IPv6, before the port for IPv4.
        let (addr, prefix): (String, Option<&str>) = match addr.strip_prefix('[') {
            Some(rest) => {
                let (inner, port) = rest.split_once(']').ok_or_else(|| err("missing ]"))?;
                match inner.split_once('/') {
                    Some((ip, p)) => (format!("[{ip}]{port}"), Some(p)),
                    None => (addr.to_owned(), None),
                }
            }
            None => {
                let (host, port) = addr.rsplit_once(':').ok_or_else(|| err("missing :port"))?;
                match host.split_once('/') {
                    Some((ip, p)) => (format!("{ip}:{port}"), Some(p)),
                    None => (addr.to_owned(), None),
                }
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| err("not an IPv4 address or [IPv6] address with a port"))?;
        let full = Endpoint::full_prefix(addr.ip());
        let prefix = match prefix {
            None => full,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= full)
                .ok_or_else(|| err("the prefix length must be 0-32 (IPv4) or 0-128 (IPv6)"))?,
        };
        // Host bits must be zero: 10.0.0.5/24 is a typo for 10.0.0.0/24 or for 10.0.0.5.
        if !host_bits_zero(addr.ip(), prefix) {
            return Err(err("the address has bits set beyond its prefix"));
        }
        if addr.port() == 0 {
            return Err(err("port 0 is not a destination"));
        }
        if addr.ip().is_unspecified() && prefix == full {
            // Connecting to 0.0.0.0 / :: reaches the local host; use a prefix for ranges.
            return Err(err("the unspecified address is not a destination"));
        }
        Ok(Self {
            addr,
            proto,
            prefix,
        })
    }
}

fn host_bits_zero(ip: std::net::IpAddr, prefix: u8) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => {
            u32::from(a) & u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0) == 0
        }
        std::net::IpAddr::V6(a) => {
            u128::from(a) & u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0) == 0
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        if self.prefix == Endpoint::full_prefix(self.addr.ip()) {
            write!(f, "{}/{proto}", self.addr)
        } else if self.addr.is_ipv4() {
            write!(
                f,
                "{}/{}:{}/{proto}",
                self.addr.ip(),
                self.prefix,
                self.addr.port()
            )
        } else {
            write!(
                f,
                "[{}/{}]:{}/{proto}",
                self.addr.ip(),
                self.prefix,
                self.addr.port()
            )
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Longest host name in a network entry (RFC 1035 presentation form, without the final dot).
pub const MAX_HOSTNAME: usize = 253;

/// A destination by name, `host.example:443/tcp`: the supervisor resolves it (DNS, refreshed on
/// the answer's TTL, or /etc/hosts) and allows the addresses it currently resolves to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// Lower case, letters, digits, `-` and `.` only, at least one letter.
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

impl HostPort {
    fn parse(proto: Proto, addr: &str) -> Result<HostPort, &'static str> {
        let (host, port) = addr.rsplit_once(':').ok_or("missing :port")?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("the port must be 1-65535")?;
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let labels_ok = name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if name.is_empty() || name.len() > MAX_HOSTNAME || !labels_ok {
            return Err("not an IP address, and not a host name (letters, digits, - and . only)");
        }
        if !name.bytes().any(|b| b.is_ascii_alphabetic()) {
            return Err("not an IPv4 address or [IPv6] address with a port");
        }
        Ok(HostPort { name, port, proto })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.name, self.port, self.proto.as_str())
    }
}

/// One entry of `requests.network` or a grant's `network`: an address (range) or a host name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    Addr(Endpoint),
    Host(HostPort),
}

impl Destination {
    /// Whether every destination of `other` is also one of `self`. A name covers only the same
    /// name, port and protocol: the addresses behind a name change, so a grant by name never
    /// covers a request by address or the other way round.
    pub fn covers(&self, other: &Destination) -> bool {
        match (self, other) {
            (Self::Addr(a), Self::Addr(b)) => a.covers(b),
            (Self::Host(a), Self::Host(b)) => a == b,
            _ => false,
        }
    }

    pub fn as_addr(&self) -> Option<&Endpoint> {
        match self {
            Self::Addr(e) => Some(e),
            Self::Host(_) => None,
        }
    }

    pub fn as_host(&self) -> Option<&HostPort> {
        match self {
            Self::Host(h) => Some(h),
            Self::Addr(_) => None,
        }
    }
}

impl FromStr for Destination {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.parse::<Endpoint>() {
            Ok(e) => Ok(Self::Addr(e)),
            Err(e) => {
                // Only a text that cannot be an address is tried as a name, so address typos
                // keep their precise error.
                let Some((addr, proto)) = text.rsplit_once('/') else {
                    return Err(e);
                };
                let proto = match proto {
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    _ => return Err(e),
                };
                let looks_like_name = !addr.starts_with('[')
                    && !addr.contains('/')
                    && addr.bytes().any(|b| b.is_ascii_alphabetic());
                if !looks_like_name {
                    return Err(e);
                }
                HostPort::parse(proto, addr)
                    .map(Self::Host)
                    .map_err(|reason| EndpointError {
                        text: text.into(),
                        reason,
                    })
            }
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(e) => e.fmt(f),
            Self::Host(h) => h.fmt(f),
        }
    }
}

impl Serialize for Destination {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requests {
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
    #[serde(default = "default_request_syscalls")]
    pub syscalls: SyscallProfile,
}

fn default_request_syscalls() -> SyscallProfile {
    SyscallProfile::Default
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub heartbeat_s: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    pub max_per_hour: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub mode: Mode,
    pub class: Class,
    pub exec: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub requests: Requests,
    pub health: Option<Health>,
    pub restart: RestartSpec,
    pub stop_grace_s: Option<u32>,
    /// An explicit syscall baseline (name → most calls per second, 0 = any rate): the monitor
    /// uses it instead of learning one.
    pub syscall_profile: Option<BTreeMap<String, u64>>,
    /// The runtime layer (a separately installed, signed bundle such as `python3.11`) mounted
    /// read-only at `/usr` in the agent's view; the policy must allow it (docs/RUNTIMES.md).
    pub runtime: Option<String>,
}

/// Most entries in `syscall_profile`.
pub const MAX_PROFILE_SYSCALLS: usize = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    mode: Mode,
    #[serde(default)]
    class: Class,
    exec: Vec<String>,
    #[serde(default, deserialize_with = "unique_map")]
    env: BTreeMap<String, String>,
    requests: Requests,
    #[serde(default)]
    health: Option<Health>,
    #[serde(default)]
    restart: Option<RawRestart>,
    #[serde(default)]
    stop_grace_s: Option<u32>,
    #[serde(default, deserialize_with = "unique_opt_map")]
    syscall_profile: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    runtime: Option<String>,
}

fn unique_opt_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, u64>>, D::Error> {
    unique_map(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    #[serde(default)]
    policy: Option<RestartPolicy>,
    #[serde(default)]
    max_per_hour: Option<u32>,
}

impl Manifest {
    /// Parses and validates a manifest; `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Self, ConfigError> {
        check_len(bytes, origin, MAX_MANIFEST_BYTES)?;
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::json(origin, e))?;
        let restart = raw.restart.unwrap_or_default();
        let m = Self {
            name: raw.name,
            version: raw.version,
            mode: raw.mode,
            class: raw.class,
            exec: raw.exec,
            env: raw.env,
            requests: raw.requests,
            health: raw.health,
            restart: RestartSpec {
                policy: restart.policy.unwrap_or(match raw.mode {
                    Mode::Service => RestartPolicy::OnFailure,
                    Mode::Task => RestartPolicy::Never,
                }),
                max_per_hour: restart.max_per_hour.unwrap_or(10),
            },
            stop_grace_s: raw.stop_grace_s,
            syscall_profile: raw.syscall_profile,
            runtime: raw.runtime,
        };
        m.validate().map_err(|e| ConfigError::invalid(origin, e))?;
        Ok(m)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_capped(path, MAX_MANIFEST_BYTES)?, path)
    }

    /// Semantic checks, naming the failing field. Also run by admission, so a manifest
    /// built in code is held to the same rules as a parsed one.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name(&self.name).map_err(|r| FieldError::new("name", r))?;
        if self.version.is_empty()
            || self.version.len() > MAX_VERSION_LEN
            || !self.version.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(FieldError::new(
                "version",
                format!(
                    "`{}` must be 1 to {MAX_VERSION_LEN} printable ASCII characters",
                    self.version.escape_default()
                ),
            ));
        }
        let Some(program) = self.exec.first() else {
            return Err(FieldError::new("exec", "must name the program to run"));
        };
        check_program(program).map_err(|r| FieldError::new("exec[0]", r))?;
        for (i, arg) in self.exec.iter().enumerate() {
            if arg.contains('\0') {
                return Err(FieldError::new(format!("exec[{i}]"), "contains a NUL byte"));
            }
        }
        if self.env.len() > MAX_ENV_ENTRIES {
            return Err(FieldError::new(
                "env",
                format!(
                    "{} entries; at most {MAX_ENV_ENTRIES} are allowed",
                    self.env.len()
                ),
            ));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(FieldError::new(
                    "env",
                    format!(
                        "key `{}` must be non-empty without `=` or NUL",
                        k.escape_default()
                    ),
                ));
            }
            if v.contains('\0') {
                return Err(FieldError::new(format!("env.{k}"), "contains a NUL byte"));
            }
        }
        if let Some(p) = &self.syscall_profile {
            if p.is_empty() || p.len() > MAX_PROFILE_SYSCALLS {
                return Err(FieldError::new(
                    "syscall_profile",
                    format!(
                        "{} entries; 1 to {MAX_PROFILE_SYSCALLS} syscall names are allowed",
                        p.len()
                    ),
                ));
            }
            if let Some(bad) = p.keys().find(|k| {
                k.is_empty()
                    || k.len() > 32
                    || !k
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            }) {
                return Err(FieldError::new(
                    "syscall_profile",
                    format!(
                        "`{}` is not a syscall name (lower-case letters, digits and _, at most 32)",
                        bad.escape_default()
                    ),
                ));
            }
        }
        if let Some(rt) = &self.runtime {
            check_runtime_name(rt).map_err(|r| FieldError::new("runtime", r))?;
        }
        let r = &self.requests;
        check_limits("requests", r.memory, r.cpus, r.pids, r.scratch, &r.devices)?;
        if let Some(h) = self.health
            && !(1..=MAX_HEARTBEAT_S).contains(&h.heartbeat_s)
        {
            return Err(FieldError::new(
                "health.heartbeat_s",
                format!("{} is outside 1..={MAX_HEARTBEAT_S}", h.heartbeat_s),
            ));
        }
        if self.mode == Mode::Task && self.restart.policy == RestartPolicy::Always {
            return Err(FieldError::new(
                "restart.policy",
                "`always` would rerun a task forever; use `on-failure` or `never`",
            ));
        }
        if !(1..=MAX_RESTARTS_PER_HOUR).contains(&self.restart.max_per_hour) {
            return Err(FieldError::new(
                "restart.max_per_hour",
                format!(
                    "{} is outside 1..={MAX_RESTARTS_PER_HOUR}",
                    self.restart.max_per_hour
                ),
            ));
        }
        if let Some(s) = self.stop_grace_s
            && s > MAX_STOP_GRACE_S
        {
            return Err(FieldError::new(
                "stop_grace_s",
                format!("{s} is more than {MAX_STOP_GRACE_S} seconds"),
            ));
        }
        Ok(())
    }
}

/// Runtime layer names: like agent names, plus dots for versions (`python3.11`, `node20`).
pub fn check_runtime_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "runtime name `{}` must be 1 to 64 of a-z 0-9 . _ -, starting with a letter or \
             digit, such as python3.11",
            name.escape_default()
        ))
    }
}

fn check_program(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    if !path.is_absolute() || p.contains('\0') {
        return Err(format!(
            "`{}` must be an absolute path inside the bundle",
            p.escape_default()
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("`{}` must not contain `..`", p.escape_default()));
    }
    Ok(())
}

/// Device nodes: absolute, under `/dev/`, no `..`, no NUL.
pub(crate) fn check_device(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    let ok = p.starts_with("/dev/")
        && !p.contains('\0')
        && path.components().count() > 2
        && path.components().all(|c| c != Component::ParentDir);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` must be a device path under /dev/ without `..`",
            p.escape_default()
        ))
    }
}

/// Range checks shared by requests and grants; `prefix` is `requests` or `agents.NAME`.
pub(crate) fn check_limits(
    prefix: &str,
    memory: ByteSize,
    cpus: Option<f64>,
    pids: Option<u32>,
    scratch: Option<ByteSize>,
    devices: &[String],
) -> Result<(), FieldError> {
    if memory.bytes() < MIN_MEMORY {
        return Err(FieldError::new(
            format!("{prefix}.memory"),
            format!("{memory} is less than the 1MiB minimum"),
        ));
    }
    if let Some(c) = cpus
        && !(c > 0.0 && c <= MAX_CPUS)
    {
        return Err(FieldError::new(
            format!("{prefix}.cpus"),
            format!("{c} must be more than 0 and at most {MAX_CPUS}"),
        ));
    }
    if let Some(p) = pids
        && !(1..=MAX_PIDS).contains(&p)
    {
        return Err(FieldError::new(
            format!("{prefix}.pids"),
            format!("{p} is outside 1..={MAX_PIDS} (the kernel's pid_max ceiling)"),
        ));
    }
    if let Some(s) = scratch
        && s.bytes() < MIN_SCRATCH
    {
        return Err(FieldError::new(
            format!("{prefix}.scratch"),
            format!("{s} is less than the {MIN_SCRATCH}-byte minimum"),
        ));
    }
    for (i, d) in devices.iter().enumerate() {
        check_device(d).map_err(|r| FieldError::new(format!("{prefix}.devices[{i}]"), r))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::temp_file;
    use std::net::{IpAddr, Ipv4Addr};

    /// DESIGN.md §1, verbatim.
    pub(crate) const EXAMPLE: &str = r#"{ "name": "sensor", "version": "1.4.0", "mode": "service", "class": "normal",
  "exec": ["/bin/sensor", "--interval", "5"], "env": {"LEVEL": "info"},
  "requests": { "memory": "32MiB", "cpus": 0.25, "pids": 16, "scratch": "8MiB",
                "network": ["10.0.0.5:6379/tcp"], "syscalls": "default" },
  "health": { "heartbeat_s": 10 }, "restart": { "policy": "on-failure", "max_per_hour": 10 } }"#;

    fn parse(s: &str) -> Result<Manifest, ConfigError> {
        Manifest::parse(s.as_bytes(), Path::new("/bundles/sensor/manifest.json"))
    }

    fn with(from: &str, to: &str) -> String {
        super::super::testing::replace_once(EXAMPLE, from, to)
    }

    fn invalid_field(s: &str) -> String {
        super::super::testing::invalid_field(parse(s))
    }

    #[test]
    fn endpoint_prefixes_parse_cover_and_print() {
        let net: Endpoint = "10.0.0.0/24:6379/tcp".parse().unwrap();
        assert_eq!(net.prefix, 24);
        assert_eq!(net.to_string(), "10.0.0.0/24:6379/tcp");
        let host: Endpoint = "10.0.0.5:6379/tcp".parse().unwrap();
        assert_eq!(host.prefix, 32);
        assert!(net.covers(&host));
        assert!(!host.covers(&net));
        assert!(!net.covers(&"10.0.1.5:6379/tcp".parse().unwrap()));
        assert!(!net.covers(&"10.0.0.5:6380/tcp".parse().unwrap()));
        assert!(!net.covers(&"10.0.0.5:6379/udp".parse().unwrap()));
        let v6: Endpoint = "[fd00::/64]:53/udp".parse().unwrap();
        assert_eq!(
            (v6.prefix, v6.to_string().as_str()),
            (64, "[fd00::/64]:53/udp")
        );
        assert!(v6.covers(&"[fd00::1]:53/udp".parse().unwrap()));
        assert!(!v6.covers(&"10.0.0.5:53/udp".parse().unwrap()));
        let any: Endpoint = "0.0.0.0/0:443/tcp".parse().unwrap();
        assert!(any.covers(&host.to_string().replace("6379", "443").parse().unwrap()));
        for bad in [
            "10.0.0.5/24:6379/tcp",
            "10.0.0.0/33:1/tcp",
            "[fd00::/129]:1/udp",
            "10.0.0.0/x:1/tcp",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn design_example_parses() {
        let m = parse(EXAMPLE).unwrap();
        assert_eq!(m.name, "sensor");
        assert_eq!(m.version, "1.4.0");
        assert_eq!(m.mode, Mode::Service);
        assert_eq!(m.class, Class::Normal);
        assert_eq!(m.exec, ["/bin/sensor", "--interval", "5"]);
        assert_eq!(m.env.get("LEVEL").map(String::as_str), Some("info"));
        assert_eq!(m.requests.memory, ByteSize::mib(32));
        assert_eq!(m.requests.cpus, Some(0.25));
        assert_eq!(m.requests.pids, Some(16));
        assert_eq!(m.requests.scratch, Some(ByteSize::mib(8)));
        assert_eq!(
            m.requests.network,
            [Destination::Addr(Endpoint {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 6379),
                proto: Proto::Tcp,
                prefix: 32,
            })]
        );
        assert!(m.requests.devices.is_empty());
        assert_eq!(m.requests.syscalls, SyscallProfile::Default);
        assert_eq!(m.health, Some(Health { heartbeat_s: 10 }));
        assert_eq!(
            m.restart,
            RestartSpec {
                policy: RestartPolicy::OnFailure,
                max_per_hour: 10
            }
        );
        assert_eq!(m.stop_grace_s, None);
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let svc = parse(
            r#"{"name":"a","version":"1","mode":"service","exec":["/a"],"requests":{"memory":"1MiB"}}"#,
        )
        .unwrap();
        assert_eq!(svc.class, Class::Normal);
        assert_eq!(svc.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(svc.restart.max_per_hour, 10);
        assert_eq!(svc.requests.syscalls, SyscallProfile::Default);
        assert!(svc.env.is_empty() && svc.requests.network.is_empty());
        let task = parse(
            r#"{"name":"a","version":"1","mode":"task","exec":["/a"],"requests":{"memory":1048576}}"#,
        )
        .unwrap();
        assert_eq!(task.restart.policy, RestartPolicy::Never);
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let top = parse(&with(
            r#""mode": "service""#,
            r#""mode": "service", "moed": 1"#,
        ));
        let msg = top.unwrap_err().to_string();
        assert!(msg.contains("unknown field `moed`"), "{msg}");
        assert!(msg.contains("manifest.json"), "{msg}");
        let nested = parse(&with(r#""pids": 16"#, r#""pids": 16, "memroy": "1MiB""#));
        let msg = nested.unwrap_err().to_string();
        assert!(msg.contains("unknown field `memroy`"), "{msg}");
        let deeper = parse(&with(
            r#""heartbeat_s": 10"#,
            r#""heartbeat_s": 10, "x": 1"#,
        ));
        assert!(
            deeper
                .unwrap_err()
                .to_string()
                .contains("unknown field `x`")
        );
    }

    #[test]
    fn malformed_json_names_file_and_line() {
        let err = parse("{\n\"name\": \"sensor\",\n,}").unwrap_err();
        assert!(matches!(err, ConfigError::Json { .. }));
        let msg = err.to_string();
        assert!(msg.starts_with("/bundles/sensor/manifest.json: "), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn oversize_is_refused_before_parsing() {
        let big = format!("{}{}", EXAMPLE, " ".repeat(MAX_MANIFEST_BYTES as usize));
        assert!(matches!(parse(&big), Err(ConfigError::TooLarge { .. })));
        let (_dir_path, path) = temp_file("manifest-big.json", big.as_bytes());
        let err = Manifest::load(&path).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::TooLarge {
                limit: MAX_MANIFEST_BYTES,
                ..
            }
        ));
        let (_dir_ok, ok) = temp_file("manifest-ok.json", EXAMPLE.as_bytes());
        assert_eq!(Manifest::load(&ok).unwrap().name, "sensor");
    }

    #[test]
    fn bad_names() {
        for bad in ["../x", "Sensor", "a/b", "", &"a".repeat(65)] {
            let s = with(r#""name": "sensor""#, &format!(r#""name": "{bad}""#));
            assert_eq!(invalid_field(&s), "name", "{bad}");
        }
    }

    #[test]
    fn bad_sizes() {
        let err = parse(&with(r#""memory": "32MiB""#, r#""memory": "32XB""#)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`32XB`") && msg.contains("line 3"), "{msg}");
        let s = with(r#""memory": "32MiB""#, r#""memory": "512KiB""#);
        assert_eq!(invalid_field(&s), "requests.memory");
        let s = with(r#""scratch": "8MiB""#, r#""scratch": 0"#);
        assert_eq!(invalid_field(&s), "requests.scratch");
        let huge = with(r#""memory": "32MiB""#, r#""memory": "99999999999999GiB""#);
        assert!(parse(&huge).unwrap_err().to_string().contains("64 bits"));
    }

    #[test]
    fn field_checks() {
        let cases = [
            (r#""version": "1.4.0""#, r#""version": """#, "version"),
            (r#""version": "1.4.0""#, r#""version": "1 4""#, "version"),
            (
                r#""exec": ["/bin/sensor", "--interval", "5"]"#,
                r#""exec": []"#,
                "exec",
            ),
            (r#""/bin/sensor""#, r#""bin/sensor""#, "exec[0]"),
            (r#""/bin/sensor""#, r#""/bin/../sbin/x""#, "exec[0]"),
            (r#""--interval""#, r#""a\u0000b""#, "exec[1]"),
            (r#""LEVEL": "info""#, r#""A=B": "info""#, "env"),
            (r#""LEVEL": "info""#, r#""": "info""#, "env"),
            (r#""LEVEL": "info""#, r#""LEVEL": "\u0000""#, "env.LEVEL"),
            (r#""cpus": 0.25"#, r#""cpus": 0"#, "requests.cpus"),
            (r#""cpus": 0.25"#, r#""cpus": 1025"#, "requests.cpus"),
            (r#""pids": 16"#, r#""pids": 0"#, "requests.pids"),
            (
                r#""heartbeat_s": 10"#,
                r#""heartbeat_s": 0"#,
                "health.heartbeat_s",
            ),
            (
                r#""max_per_hour": 10"#,
                r#""max_per_hour": 0"#,
                "restart.max_per_hour",
            ),
            (
                r#""syscalls": "default""#,
                r#""syscalls": "default", "devices": ["/etc/passwd"]"#,
                "requests.devices[0]",
            ),
            (
                r#""syscalls": "default""#,
                r#""syscalls": "default", "devices": ["/dev/../etc/shadow"]"#,
                "requests.devices[0]",
            ),
        ];
        for (from, to, field) in cases {
            assert_eq!(invalid_field(&with(from, to)), field, "{to}");
        }
        let env: String = (0..65).map(|i| format!(r#""K{i}": "v","#)).collect();
        let s = with(r#""LEVEL": "info""#, &format!(r#"{env} "LEVEL": "info""#));
        assert_eq!(invalid_field(&s), "env");
        let task_always = with(r#""mode": "service""#, r#""mode": "task""#)
            .replace(r#""policy": "on-failure""#, r#""policy": "always""#);
        assert_eq!(invalid_field(&task_always), "restart.policy");
    }

    #[test]
    fn duplicate_env_key_refused() {
        let s = with(r#""LEVEL": "info""#, r#""LEVEL": "info", "LEVEL": "debug""#);
        assert!(
            parse(&s)
                .unwrap_err()
                .to_string()
                .contains("duplicate key `LEVEL`")
        );
    }

    #[test]
    fn endpoints() {
        let e: Endpoint = "[fd00::1]:53/udp".parse().unwrap();
        assert_eq!(e.proto, Proto::Udp);
        assert_eq!(e.to_string(), "[fd00::1]:53/udp");
        assert_eq!(
            "10.0.0.5:6379/tcp".parse::<Endpoint>().unwrap().to_string(),
            "10.0.0.5:6379/tcp"
        );
        for bad in [
            "10.0.0.5:6379",
            "10.0.0.5/tcp",
            "10.0.0.5:6379/sctp",
            "fd00::1:53/udp",
            "host.example:80/tcp",
            "10.0.0.5:0/tcp",
            "0.0.0.0:80/tcp",
            "[::]:80/tcp",
            "10.0.0.5:65536/tcp",
        ] {
            let err = bad.parse::<Endpoint>().unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{bad}");
        }
        let s = with("10.0.0.5:6379/tcp", "10.0.0.5:6379/icmp");
        let msg = parse(&s).unwrap_err().to_string();
        assert!(
            msg.contains("10.0.0.5:6379/icmp") && msg.contains("line 4"),
            "{msg}"
        );
    }

    #[test]
    fn destinations_by_name() {
        let d: Destination = "API.Example.com.:443/tcp".parse().unwrap();
        let h = d.as_host().unwrap();
        assert_eq!(
            (h.name.as_str(), h.port, h.proto),
            ("api.example.com", 443, Proto::Tcp)
        );
        assert_eq!(d.to_string(), "api.example.com:443/tcp");
        let ip: Destination = "10.0.0.5:6379/tcp".parse().unwrap();
        assert!(ip.as_addr().is_some());
        // A name covers only itself; names and addresses never cover each other.
        assert!(d.covers(&"api.example.com:443/tcp".parse().unwrap()));
        assert!(!d.covers(&"api.example.com:80/tcp".parse().unwrap()));
        assert!(!d.covers(&"api.example.com:443/udp".parse().unwrap()));
        assert!(!d.covers(&"x.example.com:443/tcp".parse().unwrap()));
        assert!(!d.covers(&ip) && !ip.covers(&d));
        for bad in [
            "api.example.com/tcp",
            "api.example.com:0/tcp",
            "api.example.com:99999/tcp",
            "api..example.com:443/tcp",
            "-api.example.com:443/tcp",
            "api_x.example.com:443/tcp",
            "api.example.com:443/sctp",
            "10.0.0.300:80/tcp",
            "[fd00::zz]:53/udp",
        ] {
            let err = bad.parse::<Destination>().unwrap_err();
            assert!(
                err.to_string().contains(&format!("`{bad}`")),
                "{bad}: {err}"
            );
        }
        let long = format!("{}.com:443/tcp", "a".repeat(250));
        assert!(long.parse::<Destination>().is_err());
        let s = with("10.0.0.5:6379/tcp", "broker.local:1883/tcp");
        let m = parse(&s).unwrap();
        assert_eq!(m.requests.network[0].to_string(), "broker.local:1883/tcp");
    }

    #[test]
    fn syscall_profiles_are_ordered() {
        assert!(SyscallProfile::Strict < SyscallProfile::Default);
    }
}
