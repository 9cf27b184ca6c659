//! `nanoclaw support-bundle -o FILE`: one `.tar.gz` a field engineer can send when something
//! is wrong, so nobody has to talk an operator through a dozen commands on a serial console.
//!
//! It holds what the daemon says (status, agents, battery, audit, logs, `why`), the host facts
//! the sandbox depends on (kernel, LSMs, cgroup and BPF mounts, BTF, memory, pressure) and the
//! configuration — redacted, because configs and manifests can carry secrets: values under
//! secret-looking keys, every `env` value and inline private keys are replaced by
//! `<redacted>`, a config that does not parse is left out (it cannot be redacted), and key
//! files are never copied. Anything that cannot be collected is noted in the bundle instead of
//! failing it; only a bundle that cannot be written is an error.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::bundle::tar::{self, Header, Kind};
use crate::control::{Request, Response, client, exit};

pub const USAGE: &str = "usage: nanoclaw support-bundle -o FILE [--config device.json] [--socket PATH] [-n AUDIT_RECORDS]";
pub const DEFAULT_CONFIG: &str = "/etc/nanoclaw/device.json";
/// Newest audit records included unless `-n` says otherwise.
pub const DEFAULT_AUDIT_RECORDS: usize = 1000;
/// Lines of each agent's output included.
pub const LOG_LINES: usize = 200;
/// No input file is read past this.
pub const MAX_INPUT: u64 = 1024 * 1024;
/// What every redacted value becomes.
pub const REDACTED: &str = "<redacted>";
/// Redacted strings at least this long are also scrubbed from free text (logs, daemon answers,
/// kernel facts); shorter ones (`info`, `1`) would mangle unrelated text.
pub const SCRUB_MIN: usize = 8;
/// Bounds each control-socket read and write.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Agent directories looked at, at most (the daemon's own limit).
const MAX_AGENT_DIRS: usize = crate::config::device::MAX_AGENTS;

/// Lower-cased key fragments whose values are always redacted.
const SECRET_KEYS: [&str; 8] = [
    "token",
    "secret",
    "password",
    "passwd",
    "private",
    "credential",
    "api_key",
    "apikey",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    pub out: PathBuf,
    pub config: PathBuf,
    /// `--socket`; without it the config's `socket`, then `NANOCLAW_SOCKET`, then the default.
    pub socket: Option<PathBuf>,
    pub audit_records: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot add {path} to the archive: {reason}")]
    Entry { path: String, reason: String },
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub files: usize,
    pub archive_bytes: u64,
    pub redacted: usize,
    /// Set when the daemon could not be asked (the bundle was still written).
    pub daemon_error: Option<String>,
}

/// Parses the arguments after `support-bundle`; `Ok(None)` for `--help`.
pub fn parse(args: &[String]) -> Result<Option<Opts>, String> {
    let mut out = None;
    let mut config = PathBuf::from(DEFAULT_CONFIG);
    let mut socket = None;
    let mut audit_records = DEFAULT_AUDIT_RECORDS;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "-o" | "--output" => out = Some(PathBuf::from(value("-o")?)),
            "--config" | "-c" => config = PathBuf::from(value("--config")?),
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "-n" => {
                let v = value("-n")?;
                audit_records = v
                    .parse()
                    .map_err(|_| format!("-n wants a number of audit records, got {v:?}"))?;
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    let out = out.ok_or("-o FILE is required (where to write the bundle)")?;
    Ok(Some(Opts {
        out,
        config,
        socket,
        audit_records,
    }))
}

/// `nanoclaw support-bundle ARGS`: returns the exit code.
pub fn main(args: &[String]) -> u8 {
    let opts = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return exit::OK;
        }
        Err(e) => {
            crate::log!("nanoclaw support-bundle: {e}\n{USAGE}");
            return exit::USAGE;
        }
    };
    match run(&opts) {
        Ok(w) => {
            if let Some(e) = &w.daemon_error {
                crate::log!(
                    "nanoclaw support-bundle: warning: the bundle has no daemon data ({e}); see daemon.txt in it"
                );
            }
            println!(
                "wrote {} ({} files, {} bytes; {} values redacted)",
                opts.out.display(),
                w.files,
                w.archive_bytes,
                w.redacted
            );
            exit::OK
        }
        Err(e) => {
            crate::log!("nanoclaw support-bundle: {e}");
            exit::FAILED
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redaction (pure)

/// Redacts JSON documents and remembers what it removed, so the same values can be scrubbed
/// from free text later.
#[derive(Debug, Default)]
pub struct Redactor {
    /// Values replaced by [`REDACTED`] in JSON documents.
    pub values: usize,
    /// Occurrences of redacted strings replaced in other text.
    pub scrubbed: usize,
    secrets: BTreeSet<String>,
}

fn secret_key(lower: &str) -> bool {
    SECRET_KEYS.iter().any(|k| lower.contains(k))
}

fn private_pem(s: &str) -> bool {
    s.contains("-----BEGIN") && s.contains("PRIVATE KEY")
}

impl Redactor {
    pub fn total(&self) -> usize {
        self.values + self.scrubbed
    }

    /// Replaces, in place: the value of every key whose lower-cased name contains a
    /// [`SECRET_KEYS`] fragment; `key` and `*_key_pem` values holding a private key; every
    /// value of an `env` object (an `env` that is not an object as a whole); and any string
    /// holding a PEM private key. `null` stays `null` (nothing to hide).
    pub fn redact(&mut self, v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    if val.is_null() {
                        continue;
                    }
                    let lower = k.to_ascii_lowercase();
                    if lower == "env" {
                        match val {
                            Value::Object(env) => {
                                for e in env.values_mut().filter(|e| !e.is_null()) {
                                    self.take(e);
                                }
                            }
                            other => self.take(other),
                        }
                    } else if secret_key(&lower)
                        || ((lower == "key" || lower.ends_with("_key_pem"))
                            && val.as_str().is_some_and(|s| s.contains("PRIVATE KEY")))
                    {
                        self.take(val);
                    } else {
                        self.redact(val);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.redact(i)),
            Value::String(s) if private_pem(s) => self.take(v),
            _ => {}
        }
    }

    fn take(&mut self, v: &mut Value) {
        if v.as_str() == Some(REDACTED) {
            return;
        }
        self.remember(v);
        *v = Value::String(REDACTED.into());
        self.values += 1;
    }

    fn remember(&mut self, v: &Value) {
        match v {
            Value::String(s) if s.len() >= SCRUB_MIN => {
                self.secrets.insert(s.clone());
            }
            Value::Array(a) => a.iter().for_each(|i| self.remember(i)),
            Value::Object(m) => m.values().for_each(|i| self.remember(i)),
            _ => {}
        }
    }

    /// `text` with every occurrence of a redacted string replaced by [`REDACTED`].
    pub fn scrub_text(&mut self, text: &str) -> String {
        let mut out = text.to_owned();
        // Longest first, so a secret that contains another is replaced whole.
        let mut secrets: Vec<&String> = self.secrets.iter().collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in secrets {
            let n = out.matches(s.as_str()).count();
            if n > 0 {
                self.scrubbed += n;
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }

    /// [`Redactor::scrub_text`] on every string in `v`.
    pub fn scrub_value(&mut self, v: &mut Value) {
        match v {
            Value::String(s) => {
                if self.secrets.iter().any(|x| s.contains(x.as_str())) {
                    *s = self.scrub_text(s);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|i| self.scrub_value(i)),
            Value::Object(m) => m.values_mut().for_each(|i| self.scrub_value(i)),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Collecting

/// One file of the bundle, relative to its top directory.
#[derive(Debug)]
enum Content {
    Json(Value),
    Text(String),
}

#[derive(Debug)]
struct Entry {
    path: String,
    content: Content,
    /// One line for the README: what this file is.
    about: String,
}

#[derive(Debug, Default)]
struct Collected {
    entries: Vec<Entry>,
    /// Problems met while collecting, for the README.
    notes: Vec<String>,
    redactor: Redactor,
}

impl Collected {
    fn add(&mut self, path: impl Into<String>, content: Content, about: impl Into<String>) {
        self.entries.push(Entry {
            path: path.into(),
            content,
            about: about.into(),
        });
    }
}

/// Reads a regular file, at most [`MAX_INPUT`] bytes: `(bytes, truncated)`. Never blocks on a
/// FIFO and refuses anything but a regular file.
fn read_input(path: &Path) -> Result<(Vec<u8>, bool), String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file; not read".into());
    }
    let mut buf = Vec::new();
    file.take(MAX_INPUT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    let truncated = buf.len() as u64 > MAX_INPUT;
    buf.truncate(MAX_INPUT as usize);
    Ok((buf, truncated))
}

/// Reads, parses and redacts a JSON document for `name`; on failure adds `name.error`
/// instead (never the raw bytes: they could hold secrets) and returns `None`.
fn add_json_file(c: &mut Collected, name: &str, path: &Path, about: &str) -> Option<Value> {
    let fail = |c: &mut Collected, why: String| {
        c.notes
            .push(format!("{name}: {} not included: {why}", path.display()));
        c.add(
            format!("{name}.error"),
            Content::Text(format!("{}: {why}\n", path.display())),
            format!("why {name} ({about}) is not in the bundle"),
        );
        None
    };
    let bytes = match read_input(path) {
        Ok((_, true)) => {
            return fail(
                c,
                format!("larger than {MAX_INPUT} bytes (refused, not truncated)"),
            );
        }
        Ok((b, false)) => b,
        Err(e) => return fail(c, e),
    };
    let mut doc: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return fail(
                c,
                format!("not valid JSON ({e}); left out because it cannot be redacted"),
            );
        }
    };
    let original = doc.clone();
    let before = c.redactor.values;
    c.redactor.redact(&mut doc);
    let n = c.redactor.values - before;
    c.add(
        name,
        Content::Json(doc),
        format!("{about}, from {} ({n} value(s) redacted)", path.display()),
    );
    Some(original)
}

/// A path from the config, resolved against the config's directory like the daemon does.
fn config_path(cfg: &Value, base: &Path, field: &str) -> Option<PathBuf> {
    let p = Path::new(cfg.get(field)?.as_str()?);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    })
}

/// The config files: `device.json`, the policy, the master policy, every agent's manifest.
/// Returns the (unredacted) config, for the paths in it.
fn collect_config(c: &mut Collected, config: &Path) -> Option<Value> {
    let cfg = add_json_file(c, "device.json", config, "the device config")?;
    let base = config.parent().unwrap_or(Path::new(""));
    match config_path(&cfg, base, "policy") {
        Some(p) => {
            add_json_file(c, "policy.json", &p, "the local policy (bare or signed)");
        }
        None => c.notes.push("device.json names no policy file".to_owned()),
    }
    if let Some(p) = config_path(&cfg, base, "master_policy") {
        add_json_file(c, "master_policy.json", &p, "the fleet's master policy");
    }
    if let Some(dir) = config_path(&cfg, base, "agents_dir") {
        collect_manifests(c, &dir);
    }
    Some(cfg)
}

fn collect_manifests(c: &mut Collected, dir: &Path) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            c.notes
                .push(format!("agents_dir {}: {e}; no manifests", dir.display()));
            return;
        }
    };
    let mut names: Vec<String> = Vec::new();
    for e in rd.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            c.notes.push(format!(
                "agents_dir {}: an entry whose name is not UTF-8 was skipped",
                dir.display()
            ));
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if let Err(why) = crate::config::check_name(&name) {
            c.notes.push(format!(
                "agents_dir {}: entry {name:?} skipped: {why}",
                dir.display()
            ));
            continue;
        }
        names.push(name);
    }
    names.sort();
    if names.len() > MAX_AGENT_DIRS {
        c.notes.push(format!(
            "agents_dir {}: {} entries, only the first {MAX_AGENT_DIRS} included",
            dir.display(),
            names.len()
        ));
        names.truncate(MAX_AGENT_DIRS);
    }
    for name in names {
        let path = dir.join(&name).join("manifest.json");
        add_json_file(
            c,
            &format!("agents/{name}/manifest.json"),
            &path,
            &format!("agent {name}'s manifest"),
        );
    }
}

enum Asked {
    Answer(Value),
    /// The daemon answered with an error, or the exchange failed midway.
    Failed(String),
    /// Nobody listens on the socket.
    Unreachable(String),
}

fn ask(socket: &Path, req: &Request) -> Asked {
    match client::call(socket, req, CALL_TIMEOUT) {
        Ok(Response::Ok(v)) => Asked::Answer(v),
        Ok(Response::Error { code, message }) => {
            Asked::Failed(format!("the daemon answered {code:?}: {message}"))
        }
        Err(e @ client::ClientError::Connect { .. }) => Asked::Unreachable(e.to_string()),
        Err(e) => Asked::Failed(e.to_string()),
    }
}

/// The daemon's view via the control socket; `Err` if it is unreachable.
fn collect_daemon(c: &mut Collected, socket: &Path, audit_records: usize) -> Result<(), String> {
    let mut log = format!("control socket: {}\n", socket.display());
    let result = ask_all(c, socket, audit_records, &mut log);
    if let Err(e) = &result {
        log += &format!(
            "\nTHE DAEMON WAS NOT REACHABLE: {e}\nThis bundle has no status, agents, battery, audit, logs or why files.\n"
        );
    }
    c.add(
        "daemon.txt",
        Content::Text(log),
        "which control socket was asked, and how each request went",
    );
    result
}

fn ask_all(
    c: &mut Collected,
    socket: &Path,
    audit_records: usize,
    log: &mut String,
) -> Result<(), String> {
    let mut one = |c: &mut Collected,
                   req: Request,
                   file: &str,
                   about: &str|
     -> Result<Option<Value>, String> {
        let what = serde_json::to_string(&req).unwrap_or_default();
        match ask(socket, &req) {
            Asked::Answer(v) => {
                *log += &format!("{what}: ok -> {file}\n");
                c.add(file, Content::Json(v.clone()), about);
                Ok(Some(v))
            }
            Asked::Failed(e) => {
                *log += &format!("{what}: FAILED: {e}\n");
                c.notes.push(format!("{file} missing: {e}"));
                Ok(None)
            }
            Asked::Unreachable(e) => {
                *log += &format!("{what}: UNREACHABLE: {e}\n");
                Err(e)
            }
        }
    };
    one(
        c,
        Request::Status,
        "status.json",
        "`nanoclaw status --json`: posture, policy, enforcement per agent",
    )?;
    let agents = one(
        c,
        Request::Agents,
        "agents.json",
        "`nanoclaw agents --json`: every installed agent and its state",
    )?;
    one(
        c,
        Request::Battery,
        "battery.json",
        "`nanoclaw battery --json`: power source, charge, tier, energy per agent",
    )?;
    one(
        c,
        Request::Audit {
            agent: None,
            n: audit_records,
        },
        "audit.json",
        &format!("`nanoclaw audit -n {audit_records} --json`: the newest audit records"),
    )?;
    let rows = agents
        .as_ref()
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for row in rows {
        let Some(name) = row.get("name").and_then(Value::as_str) else {
            continue;
        };
        if let Err(why) = crate::config::check_name(name) {
            c.notes.push(format!(
                "the daemon listed an agent named {name:?}, skipped: {why}"
            ));
            continue;
        }
        let logs = one(
            c,
            Request::Logs {
                agent: name.to_owned(),
                n: LOG_LINES,
            },
            &format!("logs/{name}.log"),
            "",
        )?;
        // The answer is JSON; a log is easier to read as text.
        if let (Some(v), Some(last)) = (logs, c.entries.last_mut()) {
            let mut text = String::new();
            if let Some(d) = v
                .get("dropped_bytes")
                .and_then(Value::as_u64)
                .filter(|&d| d > 0)
            {
                text += &format!("[{d} older bytes were dropped from the log ring]\n");
            }
            for l in v
                .get("lines")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                text += l.as_str().unwrap_or_default();
                text.push('\n');
            }
            last.content = Content::Text(text);
            last.about = format!("agent {name}'s latest output (up to {LOG_LINES} lines)");
        }
        if row.get("state").and_then(Value::as_str) != Some("running") {
            one(
                c,
                Request::Why {
                    agent: name.to_owned(),
                },
                &format!("why/{name}.json"),
                &format!("`nanoclaw why {name} --json`: why it is not running"),
            )?;
        }
    }
    Ok(())
}

/// Appends `# title` and the file's (filtered) lines, or why it could not be read.
fn section(out: &mut String, path: &str, keep: impl Fn(&str) -> bool, max_lines: usize) {
    *out += &format!("\n# {path}\n");
    match read_input(Path::new(path)) {
        Ok((bytes, truncated)) => {
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines().filter(|l| keep(l)).take(max_lines) {
                *out += line;
                out.push('\n');
            }
            if truncated {
                *out += &format!("[truncated at {MAX_INPUT} bytes]\n");
            }
        }
        Err(e) => *out += &format!("[missing or unreadable: {e}]\n"),
    }
}

/// Host facts the sandbox depends on, as text.
fn kernel_report() -> String {
    let u = rustix::system::uname();
    let s = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
    let mut out = format!(
        "# uname\nsysname: {}\nnodename: {}\nrelease: {}\nversion: {}\nmachine: {}\n",
        s(u.sysname()),
        s(u.nodename()),
        s(u.release()),
        s(u.version()),
        s(u.machine())
    );
    let all = |_: &str| true;
    section(&mut out, "/proc/version", all, usize::MAX);
    section(&mut out, "/proc/cmdline", all, usize::MAX);
    section(&mut out, "/sys/kernel/security/lsm", all, usize::MAX);
    section(
        &mut out,
        "/proc/filesystems",
        |l| l.contains("cgroup") || l.contains("bpf"),
        usize::MAX,
    );
    section(
        &mut out,
        "/proc/self/mounts",
        |l| {
            matches!(
                l.split_whitespace().nth(2),
                Some("cgroup" | "cgroup2" | "bpf")
            )
        },
        usize::MAX,
    );
    section(
        &mut out,
        "/sys/fs/cgroup/cgroup.controllers",
        all,
        usize::MAX,
    );
    out += "\n# /sys/kernel/btf/vmlinux\n";
    out += &match std::fs::metadata("/sys/kernel/btf/vmlinux") {
        Ok(m) => format!("present ({} bytes): CO-RE BPF programs can load\n", m.len()),
        Err(e) => format!("absent ({e}): no kernel BTF, BPF features will be limited\n"),
    };
    section(&mut out, "/proc/meminfo", all, 5);
    section(&mut out, "/proc/uptime", all, usize::MAX);
    match std::fs::read_dir("/proc/pressure") {
        Ok(rd) => {
            let mut files: Vec<String> = rd
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect();
            files.sort();
            for f in files {
                section(&mut out, &format!("/proc/pressure/{f}"), all, usize::MAX);
            }
        }
        Err(e) => out += &format!("\n# /proc/pressure\n[missing or unreadable: {e}]\n"),
    }
    out
}

/// Something to name the bundle by: the daemon's device id, the config's, or the host name;
/// only `[A-Za-z0-9._-]`, at most 64 bytes.
fn device_label(status: Option<&Value>, cfg: Option<&Value>) -> String {
    let from = |v: Option<&Value>| {
        v.and_then(|v| v.get("device_id"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let id = from(status).or_else(|| from(cfg)).unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    });
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if clean.is_empty() || clean.chars().all(|c| c == '.') {
        "unknown".into()
    } else {
        clean
    }
}

/// `2025-01-02T03:04:05.678Z` -> `20250102T030405Z` (no colons: friendly to every file system).
fn compact_utc(ms: u64) -> String {
    let full = crate::cli::utc(ms);
    let mut s: String = full
        .chars()
        .take(19)
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    s.push('Z');
    s
}

fn readme(c: &Collected, opts: &Opts, socket: &Path, made_ms: u64) -> String {
    let mut out = format!(
        "nanoclaw support bundle\n\
         =======================\n\n\
         made:      {} (UTC)\n\
         nanoclaw:  {} ({})\n\
         config:    {}\n\
         socket:    {}\n\n\
         Files\n-----\n",
        crate::cli::utc(made_ms),
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        opts.config.display(),
        socket.display(),
    );
    out += &format!("{:<34} {}\n", "README.txt", "this file");
    for e in &c.entries {
        out += &format!("{:<34} {}\n", e.path, e.about);
    }
    out += &format!(
        "\nRedaction\n---------\n\
         {} value(s) redacted in the JSON files, and {} occurrence(s) of redacted strings\n\
         scrubbed from other text (logs, daemon answers, kernel facts). Replaced by\n\
         \"{REDACTED}\":\n\
         - the value of any key whose name contains token, secret, password, passwd,\n  \
           private, credential, api_key or apikey (any case);\n\
         - every value of an `env` object (agent environment variables);\n\
         - `key` and `*_key_pem` values holding a private key, and any string holding a\n  \
           PEM private key;\n\
         - anywhere else, redacted strings of {SCRUB_MIN} or more characters.\n\
         Key file paths are kept; key files are never copied. A config that is not valid\n\
         JSON is left out (see its .error file). A signed policy whose payload was redacted\n\
         no longer verifies; that is expected.\n",
        c.redactor.values, c.redactor.scrubbed
    );
    if !c.notes.is_empty() {
        out += "\nNotes\n-----\n";
        for n in &c.notes {
            out += &format!("- {n}\n");
        }
    }
    out
}

/// Collects everything and writes the archive.
pub fn run(opts: &Opts) -> Result<Written, SupportError> {
    let made_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut c = Collected::default();

    let cfg = collect_config(&mut c, &opts.config);
    let socket = opts
        .socket
        .clone()
        .or_else(|| {
            let base = opts.config.parent().unwrap_or(Path::new(""));
            cfg.as_ref().and_then(|v| config_path(v, base, "socket"))
        })
        .or_else(|| std::env::var_os("NANOCLAW_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::cli::DEFAULT_SOCKET));
    let daemon_error = collect_daemon(&mut c, &socket, opts.audit_records).err();
    c.add(
        "kernel.txt",
        Content::Text(kernel_report()),
        "kernel and host facts: uname, cmdline, LSMs, cgroup/BPF mounts, BTF, memory, pressure",
    );

    // Daemon answers get the same redaction; then every file is scrubbed of redacted strings
    // (a secret from a manifest that an agent printed to its log, say).
    for e in &mut c.entries {
        if let Content::Json(v) = &mut e.content {
            let before = c.redactor.values;
            c.redactor.redact(v);
            let n = c.redactor.values - before;
            if n > 0 {
                e.about += &format!(" ({n} value(s) redacted)");
            }
        }
    }
    for e in &mut c.entries {
        match &mut e.content {
            Content::Json(v) => c.redactor.scrub_value(v),
            Content::Text(t) => *t = c.redactor.scrub_text(t),
        }
    }

    let status = c
        .entries
        .iter()
        .find(|e| e.path == "status.json")
        .and_then(|e| match &e.content {
            Content::Json(v) => Some(v),
            Content::Text(_) => None,
        });
    let top = format!(
        "nanoclaw-support-{}-{}",
        device_label(status, cfg.as_ref()),
        compact_utc(made_ms)
    );
    let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(c.entries.len() + 1);
    files.push((
        "README.txt".into(),
        readme(&c, opts, &socket, made_ms).into_bytes(),
    ));
    for e in &c.entries {
        let bytes = match &e.content {
            Content::Json(v) => {
                let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
                b.push(b'\n');
                b
            }
            Content::Text(t) => t.clone().into_bytes(),
        };
        files.push((e.path.clone(), bytes));
    }
    let archive_bytes = write_archive(&opts.out, &top, &files, made_ms / 1000)?;
    Ok(Written {
        files: files.len(),
        archive_bytes,
        redacted: c.redactor.total(),
        daemon_error,
    })
}

// ---------------------------------------------------------------------------------------------
// Writing

/// A ustar header stamped with `mtime`.
fn header(
    path: &str,
    kind: Kind,
    mode: u32,
    size: u64,
    mtime: u64,
) -> Result<[u8; tar::BLOCK], SupportError> {
    tar::encode_at(
        &Header {
            path: path.to_owned(),
            kind,
            mode,
            size,
            link: String::new(),
        },
        mtime,
    )
    .map_err(|reason| SupportError::Entry {
        path: path.to_owned(),
        reason,
    })
}

/// Writes `files` under `top/` as a gzip'd tar: to `out.tmp` (mode 0600), fsync, rename, fsync
/// the directory. Returns the archive's size.
fn write_archive(
    out: &Path,
    top: &str,
    files: &[(String, Vec<u8>)],
    mtime: u64,
) -> Result<u64, SupportError> {
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SupportError::Write { path, source }
    };
    // A stale temp file from an interrupted run: replaced, never reused (its mode may differ).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(werr(&tmp)(e)),
        _ => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(werr(&tmp))?;
    let result = (|| {
        let mut gz = flate2::GzBuilder::new()
            .mtime(u32::try_from(mtime).unwrap_or(0))
            .write(BufWriter::new(&file), flate2::Compression::default());
        let mut dirs: BTreeSet<String> = BTreeSet::new();
        let mut put_dir = |gz: &mut dyn Write, dir: String| -> Result<(), SupportError> {
            if dirs.insert(dir.clone()) {
                gz.write_all(&header(&format!("{dir}/"), Kind::Dir, 0o700, 0, mtime)?)
                    .map_err(werr(&tmp))?;
            }
            Ok(())
        };
        put_dir(&mut gz, top.to_owned())?;
        for (path, data) in files {
            let full = format!("{top}/{path}");
            if let Some((parent, _)) = full.rsplit_once('/') {
                // Parents first (`top/agents`, then `top/agents/x`).
                let mut acc = String::new();
                for part in parent.split('/') {
                    if !acc.is_empty() {
                        acc.push('/');
                    }
                    acc += part;
                    put_dir(&mut gz, acc.clone())?;
                }
            }
            let size = data.len() as u64;
            gz.write_all(&header(&full, Kind::File, 0o600, size, mtime)?)
                .map_err(werr(&tmp))?;
            gz.write_all(data).map_err(werr(&tmp))?;
            let pad = (tar::padded(size) - size) as usize;
            gz.write_all(&vec![0u8; pad]).map_err(werr(&tmp))?;
        }
        gz.write_all(&[0u8; 2 * tar::BLOCK]).map_err(werr(&tmp))?;
        gz.finish()
            .and_then(|mut w| w.flush())
            .map_err(werr(&tmp))?;
        file.sync_all().map_err(werr(&tmp))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(out)(e));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(werr(parent))?;
    Ok(std::fs::metadata(out).map_err(werr(out))?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redacted(mut v: Value) -> (Value, Redactor) {
        let mut r = Redactor::default();
        r.redact(&mut v);
        (v, r)
    }

    #[test]
    fn secret_keys_redacted_at_any_depth_and_case() {
        let (v, r) = redacted(json!({
            "fleet": { "server": "fleet:443", "Admin_Token": "abc", "nested": [ { "PASSWORD": 7 } ] },
            "db_passwd": "x", "my_secret_thing": { "a": 1, "b": [2] }, "privateKey": "k",
            "aws_credentials": "c", "API_KEY": "k2", "apikey": "k3", "name": "sensor",
        }));
        assert_eq!(v["fleet"]["server"], "fleet:443");
        assert_eq!(v["fleet"]["Admin_Token"], REDACTED);
        assert_eq!(v["fleet"]["nested"][0]["PASSWORD"], REDACTED);
        for k in [
            "db_passwd",
            "my_secret_thing",
            "privateKey",
            "aws_credentials",
            "API_KEY",
            "apikey",
        ] {
            assert_eq!(v[k], REDACTED, "{k}");
        }
        assert_eq!(v["name"], "sensor");
        // A redacted object counts once.
        assert_eq!(r.values, 8);
    }

    #[test]
    fn every_env_value_redacted_keys_kept() {
        let (v, r) = redacted(json!({
            "name": "sensor",
            "env": { "LEVEL": "info", "API_TOKEN": "s3cr3t-value", "EMPTY": null },
            "agents": { "a": { "env": ["A=B"] } },
        }));
        assert_eq!(
            v["env"],
            json!({ "LEVEL": REDACTED, "API_TOKEN": REDACTED, "EMPTY": null })
        );
        assert_eq!(v["agents"]["a"]["env"], REDACTED);
        assert_eq!(r.values, 3);
    }

    #[test]
    fn pem_private_keys_redacted_anywhere_key_paths_kept() {
        let pem =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        let ec = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----";
        let (v, r) = redacted(json!({
            "policy_key": "keys/fleet.pub",
            "trusted_root": "/etc/nanoclaw/root.json",
            "signers": [ { "agents": "*", "key": "keys/demo-vendor.pub" }, { "key": pem } ],
            "fleet": { "key": "/etc/nanoclaw/device.key", "client_key_pem": ec, "ca": "ca.pem" },
            "notes": [ "hello", format!("pasted by mistake: {pem}") ],
            "public": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        }));
        assert_eq!(v["policy_key"], "keys/fleet.pub");
        assert_eq!(v["trusted_root"], "/etc/nanoclaw/root.json");
        assert_eq!(v["signers"][0]["key"], "keys/demo-vendor.pub");
        assert_eq!(v["signers"][1]["key"], REDACTED);
        assert_eq!(v["fleet"]["key"], "/etc/nanoclaw/device.key");
        assert_eq!(v["fleet"]["client_key_pem"], REDACTED);
        assert_eq!(v["fleet"]["ca"], "ca.pem");
        assert_eq!(v["notes"], json!(["hello", REDACTED]));
        assert!(v["public"].as_str().unwrap().contains("PUBLIC KEY"));
        assert_eq!(r.values, 3);
        assert!(!v.to_string().contains("MC4CAQ"));
    }

    #[test]
    fn nothing_to_redact_changes_nothing() {
        let doc = json!({ "version": 1, "agents": { "x": { "memory": "16MiB" } }, "list": [1, "a", null] });
        let (v, r) = redacted(doc.clone());
        assert_eq!(v, doc);
        assert_eq!(r.total(), 0);
    }

    #[test]
    fn redacting_twice_counts_once() {
        let mut r = Redactor::default();
        let mut v = json!({ "env": { "A": "value-one-long" }, "token": "t" });
        r.redact(&mut v);
        r.redact(&mut v);
        assert_eq!(r.values, 2);
    }

    #[test]
    fn redacted_strings_scrubbed_from_text() {
        let mut r = Redactor::default();
        let mut v = json!({ "env": { "API_TOKEN": "s3cr3t-value", "LEVEL": "info" } });
        r.redact(&mut v);
        let text = r.scrub_text("token=s3cr3t-value level=info again s3cr3t-value\n");
        assert_eq!(text, "token=<redacted> level=info again <redacted>\n");
        assert_eq!(r.scrubbed, 2);
        let mut doc = json!({ "reason": ["saw s3cr3t-value"], "n": 1 });
        r.scrub_value(&mut doc);
        assert_eq!(doc, json!({ "reason": ["saw <redacted>"], "n": 1 }));
        assert_eq!(r.total(), 2 + 3);
    }

    #[test]
    fn args() {
        let a = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let o = parse(&a("-o /tmp/x.tgz")).unwrap().unwrap();
        assert_eq!(o.out, PathBuf::from("/tmp/x.tgz"));
        assert_eq!(o.config, PathBuf::from(DEFAULT_CONFIG));
        assert_eq!((o.socket, o.audit_records), (None, DEFAULT_AUDIT_RECORDS));
        let o = parse(&a("--config d.json --socket /s -n 5 -o f"))
            .unwrap()
            .unwrap();
        assert_eq!(o.config, PathBuf::from("d.json"));
        assert_eq!(o.socket, Some(PathBuf::from("/s")));
        assert_eq!(o.audit_records, 5);
        assert_eq!(parse(&a("--help")).unwrap(), None);
        for bad in ["", "--config x", "-o", "-o f -n x", "-o f extra"] {
            assert!(parse(&a(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_and_times() {
        assert_eq!(compact_utc(1_700_000_000_123), "20231114T221320Z");
        let status = json!({ "device_id": "dev 42/a" });
        assert_eq!(device_label(Some(&status), None), "dev_42_a");
        let cfg = json!({ "device_id": "cfg-id" });
        assert_eq!(device_label(None, Some(&cfg)), "cfg-id");
        assert_eq!(
            device_label(Some(&json!({ "device_id": ".." })), None),
            "unknown"
        );
        assert!(!device_label(None, None).is_empty());
    }

    #[test]
    fn headers_carry_mtime_and_a_valid_checksum() {
        let b = header("top/a.json", Kind::File, 0o600, 3, 1_700_000_000).unwrap();
        let h = tar::parse(&b, 1).unwrap().unwrap();
        assert_eq!((h.path.as_str(), h.size, h.mode), ("top/a.json", 3, 0o600));
        assert_eq!(
            &b[136..147],
            format!("{:011o}", 1_700_000_000u64).as_bytes()
        );
    }

    /// The whole command against files in a temp dir and a socket nobody listens on: the
    /// archive is written, readable with the bundle reader, redacted, and notes the daemon.
    #[test]
    fn bundle_without_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("device.json"),
            json!({ "socket": "ctl.sock", "policy": "policy.json", "agents_dir": "agents",
                    "policy_key": "keys/fleet.pub" })
            .to_string(),
        )
        .unwrap();
        std::fs::write(d.join("policy.json"), b"{ not json: hunter2-password").unwrap();
        std::fs::create_dir_all(d.join("agents/sensor")).unwrap();
        std::fs::create_dir_all(d.join("agents/Bad.Name")).unwrap();
        std::fs::write(
            d.join("agents/sensor/manifest.json"),
            json!({ "name": "sensor", "env": { "API_TOKEN": "s3cr3t-value" } }).to_string(),
        )
        .unwrap();
        let out = d.join("sb.tar.gz");
        let opts = Opts {
            out: out.clone(),
            config: d.join("device.json"),
            socket: None,
            audit_records: 10,
        };
        let w = run(&opts).unwrap();
        assert!(
            w.daemon_error.as_deref().unwrap().contains("ctl.sock"),
            "{w:?}"
        );
        assert_eq!(w.redacted, 1);
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), w.archive_bytes);
        assert!(!d.join("sb.tar.gz.tmp").exists());

        let gz = flate2::read::GzDecoder::new(File::open(&out).unwrap());
        let mut r = tar::Reader::new(gz);
        let mut got = std::collections::BTreeMap::new();
        let mut all = Vec::new();
        while let Some(h) = r.next_header().unwrap() {
            let mut data = Vec::new();
            r.copy_data(h.size, &mut data).unwrap();
            all.extend_from_slice(&data);
            got.insert(h.path, (h.kind, data));
        }
        let top = got.keys().next().unwrap().clone();
        assert!(
            top.starts_with("nanoclaw-support-") && top.ends_with("Z/"),
            "{top}"
        );
        let file = |p: &str| {
            let (k, d) = got
                .get(&format!("{top}{p}"))
                .unwrap_or_else(|| panic!("{p}: {got:?}"));
            assert_eq!(*k, Kind::File);
            String::from_utf8(d.clone()).unwrap()
        };
        for p in [
            "README.txt",
            "daemon.txt",
            "kernel.txt",
            "device.json",
            "policy.json.error",
        ] {
            file(p);
        }
        assert!(file("daemon.txt").contains("NOT REACHABLE"));
        assert!(file("kernel.txt").contains("# /proc/version"));
        assert!(file("policy.json.error").contains("not valid JSON"));
        assert!(!got.contains_key(&format!("{top}policy.json")));
        let m: Value = serde_json::from_str(&file("agents/sensor/manifest.json")).unwrap();
        assert_eq!(m["env"]["API_TOKEN"], REDACTED);
        let cfg: Value = serde_json::from_str(&file("device.json")).unwrap();
        assert_eq!(cfg["policy_key"], "keys/fleet.pub");
        assert!(file("README.txt").contains("Bad.Name"));
        let all = String::from_utf8_lossy(&all);
        assert!(!all.contains("s3cr3t-value") && !all.contains("hunter2"));
    }

    #[test]
    fn unwritable_output_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("missing-dir/sb.tar.gz");
        let opts = Opts {
            out: out.clone(),
            config: dir.path().join("nope.json"),
            socket: Some(dir.path().join("nobody.sock")),
            audit_records: 1,
        };
        let e = run(&opts).unwrap_err().to_string();
        assert!(e.contains(&out.display().to_string()), "{e}");
    }
}
