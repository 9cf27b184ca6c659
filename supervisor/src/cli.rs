//! Command-line parsing and human-readable output of the `nanoclaw` CLI.
//!
//! Hand-rolled parsing: the grammar is tiny and a parser crate would cost more binary size
//! than this file. Every query takes `--json`, which prints the daemon's data unchanged (the
//! scripting contract); without it the output is for people on a serial console.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::control::{Request, Response, client, exit};

pub const USAGE: &str = "usage: nanoclaw [--socket PATH] COMMAND [ARGS]

commands:
  daemon --config device.json   run the supervisor in the foreground
  status [--json]               posture, policy and agent counts
  agents [--json]               every installed agent and its state
  start|stop|restart AGENT      control one agent
  logs AGENT [-n N] [--json]    the agent's latest output (default 50 lines)
  audit [--agent A] [-n N] [--json]
                                newest audit records (default 50)
  why AGENT [--json]            why an agent is not running, and what would allow it
  reload [--json]               re-read the policy and the agents directory
  policy reload|apply FILE [--json]
                                apply the configured policy file, or a (signed) policy
                                file; prints per agent what changed live or by a restart
  policy check FILE [--master M] [--key PUB] [--device-memory SIZE] [--json]
  policy sign FILE --key KEY.pem [-o OUT]
                                validate offline (every problem with its JSON path), sign
  grant sign --key KEY.pem --agent A --capability CAP --ttl S [--device ID]
                                print a signed grant token
  console [--tty DEV --baud N] [--idle S] [--term ansi|dumb]
                                the field engineer's console (stdin/stdout without --tty);
                                changes need `unlock` with a field-engineer token
  engineer sign --key KEY.pem --engineer NAME --devices ID,PATTERN --ttl S
                                print a signed field-engineer token
  clear AGENT                   lift a quarantine, reset the trust score, start the agent
  battery [--json]              power source, charge, time to empty, tier, energy per agent
  sim --agent DIR [--agent DIR]... [--policy FILE] [--seconds N] [--json]
                                run agents under production enforcement on this machine
                                (sim board, temporary state); prints every security
                                decision and a report per agent
  sim set [charge=PCT] [charger=on|off] [speed=X]
                                change the simulated battery (sim board)
  run --rootfs DIR [--memory SIZE] [--pids N] [--cpus F] [--scratch SIZE]
      [--syscalls default|strict] [--uid N] [--timing] -- CMD [ARGS]
                                run one command in a full agent sandbox (no daemon)
  support-bundle -o FILE [--config device.json] [--socket PATH] [-n AUDIT]
                                status, posture, kernel, audit, logs, config and policy
                                (secrets redacted) in one .tar.gz to send
  favordynmods [on|off]         show or set the host's cgroup2 favordynmods option
                                (fast sandbox starts on cgroup v1/hybrid hosts)
  --version                     print the version

exit codes: 0 ok, 1 failed, 2 usage, 3 daemon unreachable, 4 no such agent, 5 not root,
            6 invalid config (daemon), 7 setup error (daemon)";

pub const DEFAULT_SOCKET: &str = "/run/nanoclaw/ctl.sock";

#[derive(Debug, PartialEq)]
pub enum Command {
    Version,
    Help,
    Daemon {
        config: PathBuf,
    },
    Query {
        socket: PathBuf,
        req: Request,
        json: bool,
    },
    Run(crate::oneshot::RunOpts),
    /// `bundle …`: pack, inspect, unpack (files only, no daemon).
    Bundle(Vec<String>),
    /// `policy check|sign …` (files only).
    Policy(Vec<String>),
    /// `grant sign …` (files only).
    Grant(Vec<String>),
    /// `support-bundle -o FILE …`: one archive for a field engineer to send.
    SupportBundle(Vec<String>),
    /// `console …`: the field engineer's console on a tty or stdin/stdout.
    Console(Vec<String>),
    /// `engineer sign …`: a field-engineer token (files only).
    Engineer(Vec<String>),
    /// `sim --agent DIR …`: a whole supervisor on a developer's machine, with a report.
    Sim(Vec<String>),
    /// `favordynmods [on|off] [--cgroup-root DIR]`: show or set the host's cgroup2 option.
    Favordynmods {
        set: Option<bool>,
        root: PathBuf,
    },
}

/// Parses argv (without argv[0]).
pub fn parse(args: &[String]) -> Result<Command, String> {
    // Subcommands that parse their own arguments (most need no daemon).
    let rest = || args[1..].to_vec();
    match (
        args.first().map(String::as_str),
        args.get(1).map(String::as_str),
    ) {
        (Some("bundle"), _) => return Ok(Command::Bundle(rest())),
        (Some("policy"), Some("check" | "sign")) => return Ok(Command::Policy(rest())),
        (Some("grant"), _) => return Ok(Command::Grant(rest())),
        (Some("support-bundle"), _) => return Ok(Command::SupportBundle(rest())),
        (Some("console"), _) => return Ok(Command::Console(rest())),
        // `sim set …` talks to a running daemon; `sim --agent …` is the simulator.
        (Some("sim"), next) if next != Some("set") => return Ok(Command::Sim(rest())),
        (Some("engineer"), _) => return Ok(Command::Engineer(rest())),
        (Some("run"), _) => return crate::oneshot::parse(&args[1..]).map(Command::Run),
        _ => {}
    }
    if args.first().map(String::as_str) == Some("favordynmods") {
        let mut set = None;
        let mut root = PathBuf::from(crate::cgroup::DEFAULT_ROOT);
        let mut it = args[1..].iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "on" => set = Some(true),
                "off" => set = Some(false),
                "--cgroup-root" => {
                    root = it
                        .next()
                        .map(PathBuf::from)
                        .ok_or("--cgroup-root needs a value")?
                }
                other => return Err(format!("favordynmods: unexpected {other:?}")),
            }
        }
        return Ok(Command::Favordynmods { set, root });
    }
    let mut socket = std::env::var_os("NANOCLAW_SOCKET")
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    let mut it = args.iter().peekable();
    let mut positional: Vec<&str> = Vec::new();
    let mut json = false;
    let mut n: Option<usize> = None;
    let mut agent_flag: Option<String> = None;
    let mut config: Option<PathBuf> = None;
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match a.as_str() {
            "--version" | "-V" => return Ok(Command::Version),
            "--help" | "-h" | "help" => return Ok(Command::Help),
            "--json" => json = true,
            "--socket" => socket = PathBuf::from(value("--socket")?),
            "--config" | "-c" => config = Some(PathBuf::from(value("--config")?)),
            "--agent" => agent_flag = Some(value("--agent")?),
            "-n" | "--lines" => {
                let v = value("-n")?;
                n = Some(
                    v.parse()
                        .map_err(|_| format!("-n wants a number, got {v:?}"))?,
                );
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => positional.push(s),
        }
    }
    let Some((&cmd, rest)) = positional.split_first() else {
        return Err("no command given".into());
    };
    let one_agent = |cmd: &str| -> Result<String, String> {
        match rest {
            [a] => Ok((*a).to_owned()),
            [] => Err(format!("{cmd} needs an AGENT")),
            _ => Err(format!("{cmd} takes one AGENT")),
        }
    };
    let no_args = |cmd: &str| -> Result<(), String> {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{cmd} takes no arguments"))
        }
    };
    let req = match cmd {
        "daemon" => {
            no_args(cmd)?;
            return config
                .map(|config| Command::Daemon { config })
                .ok_or_else(|| "daemon needs --config device.json".into());
        }
        "status" => no_args(cmd).map(|()| Request::Status)?,
        "agents" => no_args(cmd).map(|()| Request::Agents)?,
        "reload" => no_args(cmd).map(|()| Request::Reload)?,
        "policy" => match rest {
            ["reload"] => Request::Reload,
            ["apply", f] => Request::PolicyApply {
                path: std::path::absolute(f).map_err(|e| format!("policy apply {f}: {e}"))?,
            },
            _ => return Err("policy takes reload, apply FILE, check FILE or sign FILE".into()),
        },
        "clear" => Request::Clear {
            agent: one_agent(cmd)?,
        },
        "battery" => no_args(cmd).map(|()| Request::Battery)?,
        "sync" => no_args(cmd).map(|()| Request::Sync)?,
        "sim" => sim_set(rest)?,
        "install" => match rest {
            // The daemon opens the file: make the path independent of the CLI's directory.
            [f] => Request::Install {
                path: std::path::absolute(f).map_err(|e| format!("install {f}: {e}"))?,
            },
            _ => return Err("install takes one FILE (NAME-VERSION.nclaw)".into()),
        },
        "rollback" => Request::Rollback {
            agent: one_agent(cmd)?,
        },
        "start" => Request::Start {
            agent: one_agent(cmd)?,
        },
        "stop" => Request::Stop {
            agent: one_agent(cmd)?,
        },
        "restart" => Request::Restart {
            agent: one_agent(cmd)?,
        },
        "why" => Request::Why {
            agent: one_agent(cmd)?,
        },
        "logs" => Request::Logs {
            agent: one_agent(cmd)?,
            n: n.unwrap_or(50),
        },
        "audit" => {
            no_args(cmd)?;
            Request::Audit {
                agent: agent_flag,
                n: n.unwrap_or(50),
            }
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    Ok(Command::Query { socket, req, json })
}

/// `sim set charge=PCT charger=on|off speed=X` (any subset).
fn sim_set(rest: &[&str]) -> Result<Request, String> {
    let usage = || "sim takes: set [charge=PERCENT] [charger=on|off] [speed=FACTOR]".to_owned();
    let Some((&"set", kvs)) = rest.split_first() else {
        return Err(usage());
    };
    let (mut percent, mut charger, mut speed) = (None, None, None);
    for kv in kvs {
        let (k, v) = kv.split_once('=').ok_or_else(usage)?;
        let num = || {
            v.parse::<f64>()
                .map_err(|_| format!("{k} wants a number, got {v:?}"))
        };
        match k {
            "charge" => percent = Some(num()?),
            "speed" => speed = Some(num()?),
            "charger" => {
                charger = Some(match v {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("charger is on or off, not {v:?}")),
                })
            }
            _ => return Err(usage()),
        }
    }
    Ok(Request::SimSet {
        percent,
        charger,
        speed,
    })
}

/// Runs a query command and returns the exit code.
pub fn query(socket: &std::path::Path, req: &Request, json: bool) -> u8 {
    // Stop/restart wait for the agent's grace period on the daemon side.
    let timeout = crate::control::server::CONNECTION_MAX + Duration::from_secs(5);
    let resp = match client::call(socket, req, timeout) {
        Ok(r) => r,
        Err(e) => {
            crate::log!("nanoclaw: {e}");
            return match e {
                client::ClientError::Connect { .. } => exit::UNREACHABLE,
                _ => exit::FAILED,
            };
        }
    };
    match resp {
        Response::Error { code, message } => {
            crate::log!("nanoclaw: {message}");
            code.exit_code()
        }
        Response::Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", human(req, &v));
            }
            exit::OK
        }
    }
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Human-readable sizes: 33554432 -> "32.0MiB".
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

pub fn human(req: &Request, v: &Value) -> String {
    let mut out = String::new();
    match req {
        Request::Agents => {
            out += &format!(
                "{:<16} {:<10} {:<11} {:>7} {:>8} {:>9} {:>9}\n",
                "NAME", "VERSION", "STATE", "PID", "RESTARTS", "MEMORY", "LIMIT"
            );
            for a in v.as_array().into_iter().flatten() {
                out += &format!(
                    "{:<16} {:<10} {:<11} {:>7} {:>8} {:>9} {:>9}\n",
                    s(a, "name"),
                    s(a, "version"),
                    s(a, "state"),
                    s(a, "pid"),
                    s(a, "restarts"),
                    size(a["memory_bytes"].as_u64().unwrap_or(0)),
                    size(a["memory_limit_bytes"].as_u64().unwrap_or(0)),
                );
            }
        }
        Request::Status => {
            let p = &v["posture"];
            out += &format!(
                "nanoclaw {} on board {} — up {} s, policy version {}\n",
                s(v, "version"),
                s(v, "board"),
                s(v, "uptime_s"),
                s(v, "policy_version")
            );
            out += &format!(
                "cgroups     {}\nseccomp     {}\nlandlock    {}\nnamespaces  {}\nnetwork     {}\negress      {}\nsyscalls    {}\n",
                s(p, "cgroup"),
                s(p, "seccomp"),
                s(p, "landlock"),
                s(p, "namespaces"),
                s(p, "network"),
                s(p, "egress"),
                s(p, "syscall_monitor")
            );
            if let Some(m) = p["missing_controllers"]
                .as_array()
                .filter(|m| !m.is_empty())
            {
                out += &format!("MISSING cgroup controllers: {m:?}\n");
            }
            if p["unsigned_bundles_allowed"] == Value::Bool(true) {
                out += "WARNING     unsigned bundles are allowed (device.json allow_unsigned)\n";
            }
            let f = &v["fleet"];
            if f.is_object() {
                out += &format!(
                    "fleet       {}: {} ok, {} failed, last ok {} s ago, next in {} s; {} bytes today{}{}\n",
                    s(f, "server"),
                    s(f, "sessions_ok"),
                    s(f, "sessions_failed"),
                    f["last_ok_s_ago"]
                        .as_u64()
                        .map_or("-".into(), |x| x.to_string()),
                    s(f, "next_in_s"),
                    s(f, "bytes_today"),
                    f["daily_bytes"]
                        .as_u64()
                        .map_or(String::new(), |b| format!(" of {b}")),
                    f["last_error"]
                        .as_str()
                        .map_or(String::new(), |e| format!("; last error: {e}")),
                );
            }
            out += &format!("agents      {}\n", v["agents"]);
            for e in v["enforcement"].as_array().into_iter().flatten() {
                out += &format!(
                    "  {:<16} {:<9} uid {} mem {} pids {} cpus {} seccomp {} landlock {}\n  {:<16} network {}\n",
                    s(e, "agent"),
                    s(e, "state"),
                    s(e, "uid"),
                    e["memory_limit_bytes"].as_u64().map_or("-".into(), size),
                    s(e, "pids_max"),
                    s(e, "cpus"),
                    s(e, "seccomp"),
                    s(e, "landlock"),
                    "",
                    match e["traffic"].as_object() {
                        Some(t) => format!(
                            "{} (rx {} in {} packets, tx {} in {} packets)",
                            s(e, "network"),
                            size(t["rx_bytes"].as_u64().unwrap_or(0)),
                            t["rx_packets"],
                            size(t["tx_bytes"].as_u64().unwrap_or(0)),
                            t["tx_packets"],
                        ),
                        None => s(e, "network"),
                    },
                );
            }
        }
        Request::Logs { .. } => {
            for l in v["lines"].as_array().into_iter().flatten() {
                out += l.as_str().unwrap_or("");
                out.push('\n');
            }
        }
        Request::Audit { .. } => {
            for r in v.as_array().into_iter().flatten() {
                out += &format!(
                    "{:>6} {} {:<14} {:<16} {}\n",
                    s(r, "seq"),
                    r["time"].as_u64().map_or_else(|| s(r, "time"), utc),
                    s(r, "agent"),
                    s(r, "kind"),
                    s(r, "reason")
                );
            }
        }
        Request::Battery => {
            let f =
                |x: &Value, unit: &str| x.as_f64().map_or("-".into(), |n| format!("{n:.1} {unit}"));
            out += &format!(
                "source      {} (board {})\npower       {}\ncharge      {}{}\ntime left   {}\ntier        {}\n",
                s(v, "source"),
                s(v, "board"),
                f(&v["power_w"], "W"),
                f(&v["percent"], "%"),
                if v["charging_or_powered"] == Value::Bool(true) {
                    " (external power or charging)"
                } else {
                    ""
                },
                v["time_to_empty_s"]
                    .as_f64()
                    .map_or("-".into(), |t| format!("{:.0} min", t / 60.0)),
                match v["tier"].get("below_percent") {
                    Some(p) => format!("below {p} %"),
                    None => "none".into(),
                }
            );
            for a in v["agents"].as_array().into_iter().flatten() {
                out += &format!(
                    "  {:<16} {:<10} {:<9} {:>8} mW  window {} of {} mWh{}\n",
                    s(a, "agent"),
                    s(a, "class"),
                    s(a, "state"),
                    a["power_mw"]
                        .as_f64()
                        .map_or("-".into(), |p| format!("{p:.0}")),
                    a["window_mwh"]
                        .as_f64()
                        .map_or("-".into(), |p| format!("{p:.2}")),
                    a["budget_mwh"]
                        .as_u64()
                        .map_or("∞".into(), |b| b.to_string()),
                    match (a["energy_hold"].as_str(), a["tier_hold"].as_str()) {
                        (Some(h), _) => format!("  held: {h} (budget)"),
                        (None, Some(h)) => format!("  held: {h} (battery tier)"),
                        _ => String::new(),
                    }
                );
            }
        }
        Request::Why { .. } => {
            out += &format!(
                "{}: {}\n  reason:   {}\n  to allow: {}\n",
                s(v, "agent"),
                s(v, "state"),
                s(v, "reason"),
                s(v, "to_allow")
            );
            for r in v["recent"].as_array().into_iter().flatten() {
                out += &format!("  #{} {} {}\n", s(r, "seq"), s(r, "kind"), s(r, "reason"));
            }
        }
        _ => {
            if let Some(m) = v.get("result").and_then(Value::as_str) {
                out += m;
                out.push('\n');
            } else {
                out += &format!("{}: {}\n", s(v, "name"), s(v, "state"));
            }
        }
    }
    out
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC; devices often have no
/// time zone database).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_queries() {
        let c = parse(&args("--socket /x.sock logs sensor -n 5 --json")).unwrap();
        assert_eq!(
            c,
            Command::Query {
                socket: "/x.sock".into(),
                req: Request::Logs {
                    agent: "sensor".into(),
                    n: 5
                },
                json: true
            }
        );
        assert!(matches!(
            parse(&args("audit --agent a")).unwrap(),
            Command::Query {
                req: Request::Audit {
                    agent: Some(_),
                    n: 50
                },
                ..
            }
        ));
    }

    #[test]
    fn rejects_bad_usage() {
        assert!(
            parse(&args("start"))
                .unwrap_err()
                .contains("needs an AGENT")
        );
        assert!(
            parse(&args("frobnicate"))
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(
            parse(&args("status --bogus"))
                .unwrap_err()
                .contains("unknown option")
        );
        assert!(parse(&args("logs a -n x")).unwrap_err().contains("number"));
        assert!(parse(&args("daemon")).unwrap_err().contains("--config"));
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_795_882_542_294), "2026-11-28T16:15:42.294Z");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(512), "512B");
        assert_eq!(size(32 * 1024 * 1024), "32.0MiB");
    }
}
