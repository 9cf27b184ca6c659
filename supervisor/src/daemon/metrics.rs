//! Prometheus metrics: the text exposition format (0.0.4) over a tiny HTTP/1.1 server in the
//! daemon's event loop.
//!
//! Off unless device.json has `metrics.listen`, and then only on a loopback address: a device
//! exposes nothing on its network by default; a local Prometheus agent or an SSH tunnel
//! scrapes it. Every value is read from the same state `nanoclaw status` shows, at scrape
//! time, so there is no second bookkeeping to drift. Names and units follow Prometheus
//! conventions (base units, `_total` counters, enums as one 0/1 series per state); the list
//! is in docs/CONSOLE.md.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, future::FutureExt};

use super::{CtxRef, Daemon, now_ms};
use crate::agents::State;
use crate::config::policy::Event;

/// Longest request head read; a scrape request is a few hundred bytes.
const HEAD_MAX: usize = 8192;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once (Prometheus sends one at a time per target).
const MAX_CLIENTS: usize = 4;

/// Binds the configured address (`None` when metrics are off).
pub fn bind(listen: Option<SocketAddr>) -> std::io::Result<Option<Async<TcpListener>>> {
    listen.map(Async::<TcpListener>::bind).transpose()
}

pub fn spawn(ctx: &CtxRef, listener: Async<TcpListener>) {
    let c = ctx.clone();
    ctx.ex.spawn(serve(c, listener)).detach();
}

async fn serve(ctx: CtxRef, listener: Async<TcpListener>) {
    let active = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            smol::Timer::after(Duration::from_millis(50)).await;
            continue;
        };
        if active.get() >= MAX_CLIENTS {
            continue; // dropped: the scraper retries at its next interval
        }
        active.set(active.get() + 1);
        let (c, a) = (ctx.clone(), active.clone());
        ctx.ex
            .spawn(async move {
                let _ = handle(&c, stream)
                    .or(async {
                        smol::Timer::after(CLIENT_TIMEOUT).await;
                        Ok(())
                    })
                    .await;
                a.set(a.get() - 1);
            })
            .detach();
    }
}

async fn handle(ctx: &CtxRef, mut stream: Async<TcpStream>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > HEAD_MAX {
            respond(&mut stream, "431 Request Header Fields Too Large", "").await?;
            return linger(&mut stream).await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    match (method, path) {
        (b"GET", Some(b"/metrics")) => {
            let body = render(&ctx.d.borrow());
            respond(&mut stream, "200 OK", &body).await
        }
        (b"GET", Some(b"/")) => {
            respond(&mut stream, "200 OK", "nanoclaw: metrics at /metrics\n").await
        }
        (b"GET", _) => respond(&mut stream, "404 Not Found", "only /metrics is here\n").await,
        _ => {
            respond(&mut stream, "405 Method Not Allowed", "GET only\n").await?;
            linger(&mut stream).await
        }
    }
}

/// After refusing a request whose rest may still be arriving: FIN, then read and drop
/// input until the client closes (bounded by the client timeout and 64 KiB). Closing with
/// unread input resets the connection, which can lose the answer on the client's side.
async fn linger(stream: &mut Async<TcpStream>) -> std::io::Result<()> {
    stream.get_ref().shutdown(std::net::Shutdown::Write)?;
    let mut buf = [0u8; 1024];
    for _ in 0..64 {
        if stream.read(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(())
}

async fn respond(stream: &mut Async<TcpStream>, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

/// The exposition writer: a family header once, then its samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        if value.is_finite() {
            let _ = writeln!(self.0, " {value}");
        } else {
            self.0.push_str(" NaN\n");
        }
    }

    /// A family of one sample without labels.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per agent.
    fn per_agent<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        rows: impl IntoIterator<Item = (&'a str, Option<f64>)>,
    ) {
        self.family(name, kind, help);
        for (agent, v) in rows {
            if let Some(v) = v {
                self.sample(name, &[("agent", agent)], v);
            }
        }
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Every metric, rendered from the daemon's state now.
pub fn render(d: &Daemon) -> String {
    let mut o = Out(String::with_capacity(8192));
    o.family(
        "nanoclaw_build_info",
        "gauge",
        "Version, board and architecture of the supervisor (always 1).",
    );
    o.sample(
        "nanoclaw_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("board", &d.cfg.board),
            ("arch", std::env::consts::ARCH),
            ("device", &d.device_id),
        ],
        1.0,
    );
    o.one(
        "nanoclaw_start_time_seconds",
        "gauge",
        "When the supervisor started, Unix seconds.",
        d.started_ms as f64 / 1000.0,
    );
    o.one(
        "nanoclaw_policy_version",
        "gauge",
        "Version of the policy in force.",
        d.policy.version as f64,
    );
    posture(&mut o, d);
    agents(&mut o, d);
    energy(&mut o, d);
    fleet(&mut o, d);
    o.0
}

fn posture(o: &mut Out, d: &Daemon) {
    let p = &d.posture;
    o.family(
        "nanoclaw_posture",
        "gauge",
        "Enforcement mechanism in force on this device and its level (always 1); see `nanoclaw status`.",
    );
    for (mechanism, level) in p.levels() {
        o.sample(
            "nanoclaw_posture",
            &[("mechanism", mechanism), ("level", level)],
            1.0,
        );
    }
    o.one(
        "nanoclaw_missing_cgroup_controllers",
        "gauge",
        "Cgroup controllers the supervisor needs and this kernel does not offer.",
        p.missing_controllers.len() as f64,
    );
    o.one(
        "nanoclaw_unsigned_bundles_allowed",
        "gauge",
        "1 when device.json allow_unsigned lets unsigned bundles run (development only).",
        flag(p.unsigned_bundles_allowed),
    );
}

fn agents(o: &mut Out, d: &Daemon) {
    let now = now_ms();
    let mem: Vec<_> = d
        .agents
        .iter()
        .map(|(n, a)| {
            let m = a.instance.as_ref().and_then(|_| d.cgroups.memory(n).ok());
            (n.as_str(), a, m)
        })
        .collect();
    o.family(
        "nanoclaw_agent_info",
        "gauge",
        "Installed agent: version, mode and class (always 1).",
    );
    for (n, a, _) in &mem {
        let mode = if a.is_service() { "service" } else { "task" };
        let class = serde_json::to_value(a.manifest.class).unwrap_or_default();
        o.sample(
            "nanoclaw_agent_info",
            &[
                ("agent", n),
                ("version", &a.manifest.version),
                ("mode", mode),
                ("class", class.as_str().unwrap_or("")),
            ],
            1.0,
        );
    }
    o.family(
        "nanoclaw_agent_state",
        "gauge",
        "Agent state: 1 for the state it is in, 0 for the others.",
    );
    for (n, a, _) in &mem {
        for s in State::ALL {
            o.sample(
                "nanoclaw_agent_state",
                &[("agent", n), ("state", s.as_str())],
                flag(a.state == s),
            );
        }
    }
    let rows =
        |f: &dyn Fn(&crate::agents::Agent, Option<&crate::cgroup::MemoryStats>) -> Option<f64>| {
            mem.iter()
                .map(|(n, a, m)| (*n, f(a, m.as_ref())))
                .collect::<Vec<_>>()
        };
    o.per_agent(
        "nanoclaw_agent_restarts_total",
        "counter",
        "Restarts of the agent (kept across supervisor restarts for the same version).",
        rows(&|a, _| Some(f64::from(a.restarts))),
    );
    o.per_agent(
        "nanoclaw_agent_oom_kills_total",
        "counter",
        "OOM kills at the agent's memory limit since the supervisor started.",
        rows(&|a, _| Some(a.events[Event::OomKill as usize] as f64)),
    );
    o.per_agent(
        "nanoclaw_agent_crash_loops_total",
        "counter",
        "Times the agent restarted too often and was marked failed.",
        rows(&|a, _| Some(a.events[Event::CrashLoop as usize] as f64)),
    );
    o.family(
        "nanoclaw_agent_denials_total",
        "counter",
        "Denied actions by kind: connect (egress), exec, operation (BPF LSM), syscall_anomaly, bad_message (agent socket).",
    );
    for (n, a, _) in &mem {
        for (kind, e) in [
            ("connect", Event::DeniedConnect),
            ("exec", Event::DeniedExec),
            ("operation", Event::DeniedOperation),
            ("syscall_anomaly", Event::Anomaly),
            ("bad_message", Event::BadMessage),
        ] {
            o.sample(
                "nanoclaw_agent_denials_total",
                &[("agent", n), ("kind", kind)],
                a.events[e as usize] as f64,
            );
        }
    }
    o.per_agent(
        "nanoclaw_agent_memory_bytes",
        "gauge",
        "Memory the agent's cgroup uses now (absent while it is not running).",
        rows(&|_, m| m.map(|m| m.current as f64)),
    );
    o.per_agent(
        "nanoclaw_agent_memory_peak_bytes",
        "gauge",
        "Highest memory use of the agent since the supervisor started.",
        rows(&|a, m| Some(a.memory_peak.max(m.map_or(0, |m| m.peak)) as f64)),
    );
    o.per_agent(
        "nanoclaw_agent_memory_limit_bytes",
        "gauge",
        "The agent's memory budget (requests ∩ policy).",
        rows(&|a, _| a.admission.as_ref().ok().map(|e| e.memory_max as f64)),
    );
    o.family(
        "nanoclaw_agent_cpu_seconds_total",
        "counter",
        "CPU time of the agent's current instance (resets when it restarts).",
    );
    for (n, a, _) in &mem {
        if a.instance.is_some()
            && let Ok(ns) = d.cgroups.cpu_usage_ns(n)
        {
            o.sample(
                "nanoclaw_agent_cpu_seconds_total",
                &[("agent", n)],
                ns as f64 / 1e9,
            );
        }
    }
    o.per_agent(
        "nanoclaw_agent_cpu_limit_cores",
        "gauge",
        "The agent's CPU budget in cores.",
        rows(&|a, _| a.admission.as_ref().ok().map(|e| e.cpus)),
    );
    o.per_agent(
        "nanoclaw_agent_trust_score",
        "gauge",
        "Trust score 0-100: lowered by violations, recovers with time.",
        rows(&|a, _| Some(f64::from(a.rules.trust.score(now)))),
    );
    o.per_agent(
        "nanoclaw_agent_quarantined",
        "gauge",
        "1 when an on_violation rule quarantined the agent.",
        rows(&|a, _| Some(flag(a.quarantined))),
    );
    o.family(
        "nanoclaw_agent_network_bytes_total",
        "counter",
        "Bytes the agent's current instance received (rx) and sent (tx), counted by eBPF.",
    );
    for (n, a, _) in &mem {
        let t = a
            .instance
            .as_ref()
            .and_then(|i| i.egress_cgid)
            .and_then(|cg| d.egress.as_ref().and_then(|e| e.traffic(cg)));
        if let Some(t) = t {
            for (dir, v) in [("rx", t.rx_bytes), ("tx", t.tx_bytes)] {
                o.sample(
                    "nanoclaw_agent_network_bytes_total",
                    &[("agent", n), ("direction", dir)],
                    v as f64,
                );
            }
        }
    }
}

fn energy(o: &mut Out, d: &Daemon) {
    let Some(e) = d.energy.as_ref() else {
        return;
    };
    let rows = |f: &dyn Fn(&str, &crate::agents::Agent) -> Option<f64>| {
        d.agents
            .iter()
            .map(|(n, a)| (n.as_str(), f(n, a)))
            .collect::<Vec<_>>()
    };
    o.per_agent(
        "nanoclaw_agent_power_watts",
        "gauge",
        "Power attributed to the agent in the last sampling period.",
        rows(&|_, a| Some(a.energy.power_mw / 1000.0)),
    );
    o.per_agent(
        "nanoclaw_agent_energy_joules_total",
        "counter",
        "Energy attributed to the agent since the supervisor started.",
        rows(&|_, a| Some(a.energy.total_mwh * 3.6)),
    );
    o.per_agent(
        "nanoclaw_agent_energy_window_joules",
        "gauge",
        "Energy the agent used in its current budget window.",
        rows(&|_, a| Some(a.energy.window.used_mwh * 3.6)),
    );
    o.per_agent(
        "nanoclaw_agent_energy_budget_joules",
        "gauge",
        "The agent's energy budget per window (absent: no budget).",
        rows(&|n, _| {
            d.policy
                .agents
                .get(n)
                .and_then(|g| g.energy)
                .map(|b| b.budget_mwh as f64 * 3.6)
        }),
    );
    o.one(
        "nanoclaw_power_watts",
        "gauge",
        "Device power draw (measured, else the board's model).",
        e.power_w,
    );
    o.one(
        "nanoclaw_external_power",
        "gauge",
        "1 on external power or while charging.",
        flag(e.last.supplies.powered()),
    );
    if let Some(p) = e.last.supplies.batteries.first().and_then(|b| b.percent()) {
        o.one(
            "nanoclaw_battery_charge_ratio",
            "gauge",
            "Battery charge, 0 to 1.",
            p / 100.0,
        );
    }
    o.one(
        "nanoclaw_battery_tier",
        "gauge",
        "Index of the policy's battery tier in force (-1: none).",
        e.tier.map_or(-1.0, |t| t as f64),
    );
}

fn fleet(o: &mut Out, d: &Daemon) {
    o.one(
        "nanoclaw_audit_records_total",
        "counter",
        "Audit records written on this device (the next sequence number minus one).",
        d.audit.next_seq().saturating_sub(1) as f64,
    );
    if let Some(ob) = d.outbox.as_ref() {
        o.one(
            "nanoclaw_outbox_records",
            "gauge",
            "Records agents put for the fleet that the server has not stored yet.",
            ob.count() as f64,
        );
    }
    let Some(f) = d.fleet.as_ref() else {
        return;
    };
    o.one(
        "nanoclaw_audit_backlog_records",
        "gauge",
        "Audit records the fleet server has not acknowledged yet.",
        d.audit
            .next_seq()
            .saturating_sub(1)
            .saturating_sub(f.audit_acked) as f64,
    );
    o.family(
        "nanoclaw_fleet_sessions_total",
        "counter",
        "Sync sessions with the fleet server by result.",
    );
    o.sample(
        "nanoclaw_fleet_sessions_total",
        &[("result", "ok")],
        f.sessions_ok as f64,
    );
    o.sample(
        "nanoclaw_fleet_sessions_total",
        &[("result", "failed")],
        f.sessions_failed as f64,
    );
    o.one(
        "nanoclaw_fleet_last_success_timestamp_seconds",
        "gauge",
        "When the last sync session succeeded, Unix seconds (0: never).",
        f.last_ok_ms as f64 / 1000.0,
    );
    o.one(
        "nanoclaw_fleet_connected",
        "gauge",
        "1 while a connection to the fleet server is open.",
        flag(f.connected),
    );
    o.one(
        "nanoclaw_fleet_bytes_today",
        "gauge",
        "Bytes on the wire to and from the fleet server today (UTC), counted against daily_bytes.",
        f.bytes_today as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let mut o = Out(String::new());
        o.sample("m", &[("a", "x\"y\\z\nw")], 1.5);
        assert_eq!(o.0, "m{a=\"x\\\"y\\\\z\\nw\"} 1.5\n");
        let mut o = Out(String::new());
        o.sample("m", &[], f64::NAN);
        assert_eq!(o.0, "m NaN\n");
    }

    #[test]
    fn posture_levels() {
        use crate::daemon::posture::level;
        assert_eq!(level("enforced (connect4/6)"), "enforced");
        assert_eq!(level("unavailable: EPERM"), "unavailable");
        assert_eq!(level(""), "unknown");
    }
}
