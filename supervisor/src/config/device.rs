//! `device.json`: per-device provisioning (DESIGN.md §1), root-owned under `/etc/nanoclaw/`.
//! Trusted, but still capped, strict about keys and range-checked, because a typo here
//! (say a uid range overlapping real users, or a cgroup subtree outside `nanoclaw`) would
//! weaken every sandbox on the device. Relative paths are resolved against the directory
//! holding the file, so a config and its files can move together.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::units::{ByteSize, KIB, MIB};
use super::{ConfigError, FieldError, base_dir, check_len, check_name, read_capped, resolve};

pub const MAX_DEVICE_BYTES: u64 = 64 * 1024;
pub const MAX_AGENTS: usize = 256;
pub const MIN_UID_BASE: u32 = 1000;
/// `sockaddr_un.sun_path` is 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Board profile name (`boards/<board>.json`).
    pub board: String,
    pub agents_dir: PathBuf,
    pub policy: PathBuf,
    /// Accept a policy from the local file (standalone mode) rather than only OTA.
    #[serde(default)]
    pub allow_local_policy: bool,
    /// Run bundles without a valid signature. Off unless provisioning says so.
    #[serde(default)]
    pub allow_unsigned: bool,
    #[serde(default)]
    pub trusted_root: Option<PathBuf>,
    /// The fleet's public key (PEM): policies and grant tokens must be signed by it.
    #[serde(default)]
    pub policy_key: Option<PathBuf>,
    /// The fleet-wide master policy every device policy must stay within.
    #[serde(default)]
    pub master_policy: Option<PathBuf>,
    /// This device's identity (grant tokens may be bound to it); empty: /etc/machine-id.
    #[serde(default)]
    pub device_id: String,
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: PathBuf,
    /// Relative to `cgroup_root`; must contain `nanoclaw` so nothing else is touched.
    #[serde(default = "default_cgroup_subtree")]
    pub cgroup_subtree: String,
    /// Turn on the host-wide cgroup2 `favordynmods` mount option while the daemon runs: fast
    /// process migrations (sandbox starts) at a small fork/exit cost. See `cgroup::dynmods`.
    #[serde(default)]
    pub cgroup_favordynmods: bool,
    /// Agent `i` runs as uid/gid `uid_base + i`.
    #[serde(default = "default_uid_base")]
    pub uid_base: u32,
    #[serde(default = "default_max_agents")]
    pub max_agents: usize,
    /// Per-agent stdout/stderr ring.
    #[serde(default = "default_log_ring")]
    pub log_ring_bytes: ByteSize,
    #[serde(default = "default_audit_segment")]
    pub audit_segment_bytes: ByteSize,
    #[serde(default = "default_audit_segments")]
    pub audit_segments: u32,
    /// SIGTERM-to-SIGKILL grace when a manifest does not set its own.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_s: u32,
    /// Count agents' syscalls with an eBPF `sys_enter` raw tracepoint. While it is attached the
    /// kernel takes its slower syscall path for every task on the device (docs/BENCHMARKS.md).
    #[serde(default = "default_true")]
    pub syscall_monitor: bool,
    /// Sampled monitoring: after learning, count only `on_s` seconds of every `every_s`
    /// (absent: continuously). The kernel's slow syscall path then costs every task on the
    /// device only that share of the time; anomalies are seen only inside the windows.
    #[serde(default)]
    pub syscall_sampling: Option<Sampling>,
    /// How long the first run of an agent version is watched to learn its syscall baseline.
    #[serde(default = "default_syscall_baseline")]
    pub syscall_baseline_s: u32,
    /// Overrides the total memory; when `None` the caller reads `/proc/meminfo`.
    #[serde(default)]
    pub device_memory: Option<ByteSize>,
    /// How long a newly installed version must run without failing before it becomes the
    /// agent's minimum version (anti-rollback).
    #[serde(default = "default_probation")]
    pub probation_s: u32,
    /// Space that must stay free on the state directory's filesystem after an install.
    #[serde(default = "default_install_reserve")]
    pub install_reserve: ByteSize,
    /// Installed versions kept per agent for rollback (the current one and the minimum are
    /// always kept).
    #[serde(default = "default_keep_versions")]
    pub keep_versions: u32,
    /// How often energy is sampled and attributed (100 to 60,000 ms).
    #[serde(default = "default_energy_period")]
    pub energy_period_ms: u32,
    /// Where the power readers look (`class/power_supply`, `class/hwmon`, `class/powercap`);
    /// on the `sim` board it defaults to the simulated battery's tree in the state directory.
    #[serde(default)]
    pub sysfs_root: Option<PathBuf>,
    /// The `sim` board's battery at start-up.
    #[serde(default)]
    pub sim: SimConfig,
    /// Largest size of the store-and-forward outbox (records agents put for the fleet).
    #[serde(default = "default_outbox_bytes")]
    pub outbox_bytes: ByteSize,
    /// DNS resolvers (`ip:port`) for host names in egress grants; empty: /etc/resolv.conf.
    #[serde(default)]
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// The fleet server this device syncs with (absent: standalone).
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
    /// Prometheus metrics (absent: off).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// `metrics`: where the Prometheus exposition is served (docs/CONSOLE.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback `ip:port`: the device exposes nothing on its networks by default.
    pub listen: std::net::SocketAddr,
}

/// `fleet`: where the server is and the TLS identity to reach it with (docs/FLEET.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `host:port` of `nanoclaw-fleet serve`.
    pub server: String,
    /// The name the server certificate must carry (default: the host part of `server`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The fleet CA (PEM): the only issuer trusted for the server's certificate.
    pub ca: PathBuf,
    /// This device's certificate and key (PEM), issued by `nanoclaw-fleet enrol`.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Check-in interval until the server suggests one, in seconds.
    #[serde(default = "default_poll_s")]
    pub poll_s: u32,
    /// Bytes per day the link may carry (metered links); when spent only security alerts go
    /// out. Absent: no limit.
    #[serde(default)]
    pub daily_bytes: Option<ByteSize>,
    /// Shortest gap between sessions that security events trigger, in seconds.
    #[serde(default = "default_urgent_gap_s")]
    pub urgent_gap_s: u32,
    /// Keep the connection open between check-ins (a device on mains power and a steady
    /// link): the next session runs on it with no TCP or TLS handshake; a lost connection
    /// is re-opened. Off by default: an open connection keeps a cellular radio awake.
    #[serde(default)]
    pub stay_connected: bool,
    /// Longest gap between two status reports while nothing changes, in seconds; a change
    /// (an agent's state, restarts or denials, memory or energy by a quarter, the battery by
    /// 5 points, the posture) is reported at the next check-in.
    #[serde(default = "default_status_s")]
    pub status_s: u32,
}

impl FleetConfig {
    fn validate(&self) -> Result<(), FieldError> {
        let Some((host, port)) = self.server.rsplit_once(':') else {
            return Err(FieldError::new(
                "fleet.server",
                format!("`{}` is not host:port", self.server),
            ));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(FieldError::new(
                "fleet.server",
                format!("`{}` is not host:port", self.server),
            ));
        }
        if !(5..=7 * 86_400).contains(&self.poll_s) {
            return Err(FieldError::new(
                "fleet.poll_s",
                format!("{} is outside 5..=604800", self.poll_s),
            ));
        }
        if !(5..=86_400).contains(&self.status_s) {
            return Err(FieldError::new(
                "fleet.status_s",
                format!("{} is outside 5..=86400", self.status_s),
            ));
        }
        if self.urgent_gap_s > 86_400 {
            return Err(FieldError::new(
                "fleet.urgent_gap_s",
                format!("{} is over 86400", self.urgent_gap_s),
            ));
        }
        Ok(())
    }

    /// The TLS server name: `server_name`, else the host part of `server`.
    pub fn name(&self) -> &str {
        self.server_name.as_deref().unwrap_or_else(|| {
            let host = self.server.rsplit_once(':').map_or("", |(h, _)| h);
            host.trim_start_matches('[').trim_end_matches(']')
        })
    }
}

fn default_poll_s() -> u32 {
    300
}

fn default_status_s() -> u32 {
    900
}

fn default_urgent_gap_s() -> u32 {
    10
}

/// `sim`: the simulated battery's start charge and clock speed-up.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    #[serde(default = "default_sim_percent")]
    pub start_percent: f64,
    /// Simulated seconds per real second.
    #[serde(default = "default_sim_speed")]
    pub speed: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            start_percent: default_sim_percent(),
            speed: default_sim_speed(),
        }
    }
}

fn default_sim_percent() -> f64 {
    80.0
}

fn default_sim_speed() -> f64 {
    1.0
}

fn default_energy_period() -> u32 {
    1000
}

/// `syscall_sampling`: `on_s` seconds of every `every_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub on_s: u32,
    pub every_s: u32,
}

fn default_probation() -> u32 {
    300
}

fn default_install_reserve() -> ByteSize {
    ByteSize::mib(32)
}

fn default_outbox_bytes() -> ByteSize {
    ByteSize::mib(4)
}

fn default_keep_versions() -> u32 {
    3
}

fn default_cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}
fn default_cgroup_subtree() -> String {
    "nanoclaw".into()
}
fn default_uid_base() -> u32 {
    61000
}
fn default_max_agents() -> usize {
    64
}
fn default_log_ring() -> ByteSize {
    ByteSize::kib(64)
}
fn default_audit_segment() -> ByteSize {
    ByteSize::kib(256)
}
fn default_audit_segments() -> u32 {
    8
}
fn default_stop_grace() -> u32 {
    5
}

fn default_true() -> bool {
    true
}

fn default_syscall_baseline() -> u32 {
    60
}

impl DeviceConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_capped(path, MAX_DEVICE_BYTES)?, path)
    }

    /// Parses, validates, and resolves relative paths against `origin`'s directory.
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Self, ConfigError> {
        check_len(bytes, origin, MAX_DEVICE_BYTES)?;
        let mut c: Self =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::json(origin, e))?;
        c.resolve_and_validate(base_dir(origin))
            .map_err(|e| ConfigError::invalid(origin, e))?;
        Ok(c)
    }

    fn resolve_and_validate(&mut self, base: &Path) -> Result<(), FieldError> {
        for (field, p) in [
            ("state_dir", &mut self.state_dir),
            ("socket", &mut self.socket),
            ("agents_dir", &mut self.agents_dir),
            ("policy", &mut self.policy),
        ] {
            check_path(field, p)?;
            *p = resolve(base, p);
        }
        for (field, opt) in [
            ("sysfs_root", &mut self.sysfs_root),
            ("trusted_root", &mut self.trusted_root),
            ("policy_key", &mut self.policy_key),
            ("master_policy", &mut self.master_policy),
        ] {
            if let Some(p) = opt {
                check_path(field, p)?;
                *p = resolve(base, p);
            }
        }
        if let Some(f) = &mut self.fleet {
            for (field, p) in [
                ("fleet.ca", &mut f.ca),
                ("fleet.cert", &mut f.cert),
                ("fleet.key", &mut f.key),
            ] {
                check_path(field, p)?;
                *p = resolve(base, p);
            }
        }
        if self.device_id.len() > 128 || self.device_id.contains(['\0', '\n']) {
            return Err(FieldError::new(
                "device_id",
                "must be at most 128 bytes without NUL or newline",
            ));
        }
        self.validate()
    }

    /// Range and consistency checks on an already resolved config.
    pub fn validate(&self) -> Result<(), FieldError> {
        let len = self.socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(FieldError::new(
                "socket",
                format!(
                    "resolved path is {len} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}"
                ),
            ));
        }
        check_name(&self.board).map_err(|r| FieldError::new("board", r))?;
        if let Some(f) = &self.fleet {
            f.validate()?;
        }
        if let Some(m) = &self.metrics
            && !m.listen.ip().is_loopback()
        {
            return Err(FieldError::new(
                "metrics.listen",
                format!(
                    "{} is not a loopback address: serve metrics on 127.0.0.1 or [::1] and scrape through a local agent or an SSH tunnel",
                    m.listen
                ),
            ));
        }
        check_path("cgroup_root", &self.cgroup_root)?;
        if !self.cgroup_root.is_absolute() || has_dot_components(&self.cgroup_root) {
            return Err(FieldError::new(
                "cgroup_root",
                "must be an absolute path without `.` or `..`",
            ));
        }
        let sub = Path::new(&self.cgroup_subtree);
        if !self.cgroup_subtree.contains("nanoclaw")
            || sub.is_absolute()
            || has_dot_components(sub)
            || self.cgroup_subtree.contains(['\0', '\n'])
            || self.cgroup_subtree.contains("//")
        {
            return Err(FieldError::new(
                "cgroup_subtree",
                format!(
                    "`{}` must be a relative path without `.`/`..` that contains `nanoclaw`",
                    self.cgroup_subtree.escape_default()
                ),
            ));
        }
        if let Some(s) = self.syscall_sampling
            && (s.on_s < 2 || s.every_s <= s.on_s || s.every_s > 3600)
        {
            return Err(FieldError::new(
                "syscall_sampling",
                format!(
                    "on_s {} of every_s {}: on_s must be at least 2 (one counting interval) and below every_s, every_s at most 3600",
                    s.on_s, s.every_s
                ),
            ));
        }
        if !(1..=MAX_AGENTS).contains(&self.max_agents) {
            return Err(FieldError::new(
                "max_agents",
                format!("{} is outside 1..={MAX_AGENTS}", self.max_agents),
            ));
        }
        if self.uid_base < MIN_UID_BASE {
            return Err(FieldError::new(
                "uid_base",
                format!(
                    "{} is below {MIN_UID_BASE}, where system accounts live",
                    self.uid_base
                ),
            ));
        }
        let top = u64::from(self.uid_base).saturating_add(self.max_agents as u64);
        if top > 1 << 31 {
            return Err(FieldError::new(
                "uid_base",
                format!(
                    "uid_base {} + max_agents {} exceeds 2^31",
                    self.uid_base, self.max_agents
                ),
            ));
        }
        check_range(
            "log_ring_bytes",
            self.log_ring_bytes,
            ByteSize(KIB),
            ByteSize::mib(16),
        )?;
        check_range(
            "audit_segment_bytes",
            self.audit_segment_bytes,
            ByteSize::kib(4),
            ByteSize::mib(64),
        )?;
        if !(100..=60_000).contains(&self.energy_period_ms) {
            return Err(FieldError::new(
                "energy_period_ms",
                format!("{} is outside 100..=60000", self.energy_period_ms),
            ));
        }
        if !(0.0..=100.0).contains(&self.sim.start_percent) {
            return Err(FieldError::new(
                "sim.start_percent",
                format!("{} is outside 0..=100", self.sim.start_percent),
            ));
        }
        if !(0.0..=1e6).contains(&self.sim.speed) {
            return Err(FieldError::new(
                "sim.speed",
                format!("{} is outside 0..=1000000", self.sim.speed),
            ));
        }
        check_range(
            "outbox_bytes",
            self.outbox_bytes,
            ByteSize::kib(64),
            ByteSize::mib(1024),
        )?;
        if !(2..=1024).contains(&self.audit_segments) {
            return Err(FieldError::new(
                "audit_segments",
                format!(
                    "{} is outside 2..=1024 (rotation needs two)",
                    self.audit_segments
                ),
            ));
        }
        if self.stop_grace_s > 300 {
            return Err(FieldError::new(
                "stop_grace_s",
                format!("{} is more than 300 seconds", self.stop_grace_s),
            ));
        }
        if let Some(m) = self.device_memory
            && m.bytes() < 16 * MIB
        {
            return Err(FieldError::new(
                "device_memory",
                format!("{m} is less than 16MiB"),
            ));
        }
        Ok(())
    }
}

fn check_path(field: &str, p: &Path) -> Result<(), FieldError> {
    let s = p.as_os_str().as_encoded_bytes();
    if s.is_empty() || s.contains(&0) {
        return Err(FieldError::new(
            field,
            "must be a non-empty path without NUL",
        ));
    }
    Ok(())
}

fn has_dot_components(p: &Path) -> bool {
    p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
}

fn check_range(field: &str, v: ByteSize, min: ByteSize, max: ByteSize) -> Result<(), FieldError> {
    if v < min || v > max {
        return Err(FieldError::new(
            field,
            format!("{v} is outside {min}..={max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::temp_file;

    /// DESIGN.md §1, verbatim.
    pub(crate) const EXAMPLE: &str = r#"{ "state_dir": "/var/lib/nanoclaw", "socket": "/run/nanoclaw/ctl.sock", "board": "sim",
  "agents_dir": "/var/lib/nanoclaw/agents", "policy": "/etc/nanoclaw/policy.json",
  "allow_local_policy": true, "allow_unsigned": false, "trusted_root": "/etc/nanoclaw/trusted_root.json" }"#;

    fn parse(s: &str) -> Result<DeviceConfig, ConfigError> {
        DeviceConfig::parse(s.as_bytes(), Path::new("/etc/nanoclaw/device.json"))
    }

    fn with(from: &str, to: &str) -> String {
        super::super::testing::replace_once(EXAMPLE, from, to)
    }

    fn invalid_field(s: &str) -> String {
        super::super::testing::invalid_field(parse(s))
    }

    #[test]
    fn design_example_parses_with_defaults() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.state_dir, Path::new("/var/lib/nanoclaw"));
        assert_eq!(c.socket, Path::new("/run/nanoclaw/ctl.sock"));
        assert_eq!(c.board, "sim");
        assert_eq!(c.agents_dir, Path::new("/var/lib/nanoclaw/agents"));
        assert_eq!(c.policy, Path::new("/etc/nanoclaw/policy.json"));
        assert!(c.allow_local_policy);
        assert!(!c.allow_unsigned);
        assert_eq!(
            c.trusted_root.as_deref(),
            Some(Path::new("/etc/nanoclaw/trusted_root.json"))
        );
        assert_eq!(c.cgroup_root, Path::new("/sys/fs/cgroup"));
        assert_eq!(c.cgroup_subtree, "nanoclaw");
        assert_eq!(c.uid_base, 61000);
        assert_eq!(c.max_agents, 64);
        assert_eq!(c.log_ring_bytes, ByteSize::kib(64));
        assert_eq!(c.audit_segment_bytes, ByteSize::kib(256));
        assert_eq!(c.audit_segments, 8);
        assert_eq!(c.stop_grace_s, 5);
        assert_eq!(c.device_memory, None);
    }

    #[test]
    fn minimal_config_is_zero_by_default() {
        let c = parse(
            r#"{"state_dir":"/s","socket":"/s/c.sock","board":"sim","agents_dir":"/a","policy":"/p.json"}"#,
        )
        .unwrap();
        assert!(!c.allow_local_policy && !c.allow_unsigned && c.trusted_root.is_none());
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let s = r#"{"state_dir":"state","socket":"run/ctl.sock","board":"sim","agents_dir":"./agents",
                    "policy":"../policy.json","trusted_root":"root.json","log_ring_bytes":"4KiB",
                    "device_memory":"512MiB"}"#;
        let (_dir_path, path) = temp_file("device-rel.json", s.as_bytes());
        let dir = path.parent().unwrap();
        let c = DeviceConfig::load(&path).unwrap();
        assert_eq!(c.state_dir, dir.join("state"));
        assert_eq!(c.socket, dir.join("run/ctl.sock"));
        assert_eq!(c.agents_dir, dir.join("./agents"));
        assert_eq!(c.policy, dir.join("../policy.json"));
        assert_eq!(c.trusted_root, Some(dir.join("root.json")));
        assert_eq!(c.log_ring_bytes, ByteSize::kib(4));
        assert_eq!(c.device_memory, Some(ByteSize::mib(512)));
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let msg = parse(&with(r#""board": "sim""#, r#""board": "sim", "bored": 1"#))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown field `bored`"), "{msg}");
        assert!(msg.starts_with("/etc/nanoclaw/device.json: "), "{msg}");
    }

    #[test]
    fn malformed_json_names_file_and_line() {
        let msg = parse(&with("false,", "nope,")).unwrap_err().to_string();
        assert!(msg.starts_with("/etc/nanoclaw/device.json: "), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn oversize_is_refused() {
        let big = format!("{}{}", EXAMPLE, " ".repeat(MAX_DEVICE_BYTES as usize));
        assert!(matches!(parse(&big), Err(ConfigError::TooLarge { .. })));
        let (_dir_path, path) = temp_file("device-big.json", big.as_bytes());
        let msg = DeviceConfig::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains("device-big.json") && msg.contains("65536-byte limit"),
            "{msg}"
        );
    }

    #[test]
    fn field_checks() {
        let extra = |kv: &str| with(r#""board": "sim""#, &format!(r#""board": "sim", {kv}"#));
        for (kv, field) in [
            (r#""cgroup_subtree": "system.slice""#, "cgroup_subtree"),
            (r#""cgroup_subtree": "/nanoclaw""#, "cgroup_subtree"),
            (r#""cgroup_subtree": "../nanoclaw""#, "cgroup_subtree"),
            (r#""cgroup_root": "sys/fs/cgroup""#, "cgroup_root"),
            (r#""uid_base": 999"#, "uid_base"),
            (r#""uid_base": 2147483600"#, "uid_base"),
            (r#""max_agents": 0"#, "max_agents"),
            (r#""max_agents": 257"#, "max_agents"),
            (r#""log_ring_bytes": 512"#, "log_ring_bytes"),
            (r#""audit_segment_bytes": "1GiB""#, "audit_segment_bytes"),
            (r#""audit_segments": 1"#, "audit_segments"),
            (r#""stop_grace_s": 301"#, "stop_grace_s"),
            (r#""device_memory": "8MiB""#, "device_memory"),
        ] {
            assert_eq!(invalid_field(&extra(kv)), field, "{kv}");
        }
        assert_eq!(
            parse(&extra(r#""uid_base": 2147483584"#)).unwrap().uid_base,
            2_147_483_584
        );
        assert_eq!(
            parse(&extra(
                r#""cgroup_subtree": "system.slice/nanoclaw.service""#
            ))
            .unwrap()
            .cgroup_subtree,
            "system.slice/nanoclaw.service"
        );
        assert_eq!(invalid_field(&with(r#""sim""#, r#""Sim""#)), "board");
        assert_eq!(
            invalid_field(&with(r#""/var/lib/nanoclaw","#, r#""","#)),
            "state_dir"
        );
        let long = format!(r#""/run/{}.sock""#, "x".repeat(100));
        assert_eq!(
            invalid_field(&with(r#""/run/nanoclaw/ctl.sock""#, &long)),
            "socket"
        );
        let bad_size = parse(&extra(r#""log_ring_bytes": "64kib""#)).unwrap_err();
        assert!(bad_size.to_string().contains("`64kib`"), "{bad_size}");
    }
}
