//! Fleet sync numbers: what an idle check-in and a policy update cost in bytes (payload and
//! on the wire, counted by the daemon at its socket) next to hawkBit DDI polling; the daemon's
//! memory while a 20 MB bundle arrives; and the server's throughput with simulated devices
//! (`nanoclaw-fleet loadgen`) on SQLite and on PostgreSQL.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Bundle, Ctx, Daemon, Section, noise, openssl_keypair, proc_kib, target, write_device};
use crate::util::{self, Result};

type Json = serde_json::Value;

/// Devices registered for the throughput runs, and how many of them really connect.
const REGISTERED: u64 = 100_000;
const IDENTITIES: usize = 200;
const CONCURRENCY: usize = 64;
const LOAD_SECONDS: u64 = 20;
/// Devices that stay connected in the second load run.
const KEPT_CONNECTIONS: usize = 2_000;
const IDLE_SESSIONS: usize = 20;
/// Longer than the server's cache of what devices should have.
const DIRECTIVES_TTL: Duration = Duration::from_millis(2500);

/// hawkBit DDI's idle poll, the smallest exchange its API allows (Eclipse hawkBit DDI API:
/// `GET /{tenant}/controller/v1/{controllerId}` answered with the polling interval), with
/// only the headers HTTP/1.1 and its authentication need. Real servers add more headers.
const DDI_REQUEST: &str = "GET /DEFAULT/controller/v1/bench-dev HTTP/1.1\r\nHost: fleet.example.net\r\nAuthorization: TargetToken 2f6c3a9b1e0d4c7a8b5e6f1a2b3c4d5e\r\nAccept: application/hal+json\r\n\r\n";
const DDI_RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/hal+json\r\nContent-Length: 43\r\n\r\n{\"config\":{\"polling\":{\"sleep\":\"00:05:00\"}}}";

/// A `nanoclaw-fleet serve` this harness started; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fleet(bin: &Path, dir: &Path, db: &str) -> Command {
    let mut c = Command::new(bin);
    c.arg("--dir").arg(dir).args(["--db", db]);
    c
}

fn serve(bin: &Path, dir: &Path, db: &str) -> Result<Server> {
    let log = fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
    let mut child = fleet(bin, dir, db)
        .args(["serve", "--listen", "127.0.0.1:0", "--poll", "3600"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting nanoclaw-fleet serve: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(out).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(a) = l.split("devices: listening on ").nth(1) {
                    break a.trim().parse().map_err(|e| format!("{l}: {e}"))?;
                }
            }
            _ => {
                let _ = child.kill();
                return Err(format!(
                    "nanoclaw-fleet serve exited: {}",
                    fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                ));
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(Server { child, addr })
}

/// Polls the daemon's `status` until `f` says yes (at most `timeout`).
fn wait_status(
    d: &Daemon,
    timeout: Duration,
    what: &str,
    f: impl Fn(&Json) -> bool,
) -> Result<Json> {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = d.json(&["status", "--json"])
            && f(&s)
        {
            return Ok(s);
        }
        if t0.elapsed() > timeout {
            return Err(format!("timed out waiting for {what}: {}", d.log_tail()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counters of the daemon's fleet link: sessions, payload up/down, wire up/down.
fn link(s: &Json) -> [u64; 5] {
    let f = &s["fleet"];
    let n = |k: &str| f[k].as_u64().unwrap_or(0);
    [
        n("sessions_ok"),
        n("payload_sent"),
        n("payload_received"),
        n("wire_sent"),
        n("wire_received"),
    ]
}

/// One check-in asked for with `nanoclaw sync`; the counters' change over it.
fn one_session(d: &Daemon) -> Result<[u64; 4]> {
    let before = link(&d.json(&["status", "--json"])?);
    d.cli(&["sync"])?;
    let after = link(&wait_status(
        d,
        Duration::from_secs(30),
        "a session",
        |s| link(s)[0] > before[0],
    )?);
    if after[0] != before[0] + 1 {
        return Err("more than one session ran".into());
    }
    Ok([
        after[1] - before[1],
        after[2] - before[2],
        after[3] - before[3],
        after[4] - before[4],
    ])
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

pub fn bench_fleet(ctx: &Ctx) -> Result<Section> {
    util::run(util::cargo().args(["build", "--profile", "server", "-p", "nanoclaw-fleet"]))?;
    let bin = ctx.root.join("target/server/nanoclaw-fleet");
    let dir = ctx.dir.join("fleet");
    let _ = fs::remove_dir_all(&dir);
    let srv_dir = dir.join("server");
    fs::create_dir_all(&srv_dir).map_err(|e| e.to_string())?;
    let db = format!("sqlite:{}", srv_dir.join("fleet.db").display());
    util::output(fleet(&bin, &srv_dir, &db).args(["init", "--name", "localhost"]))?;
    let server = serve(&bin, &srv_dir, &db)?;
    let creds = dir.join("creds");
    util::output(
        fleet(&bin, &srv_dir, &db)
            .args(["enrol", "bench-dev", "--group", "bench", "--out"])
            .arg(&creds),
    )?;

    // A device with one agent slot granted, its policy signer key, and the fleet section.
    let bundles = [Bundle {
        name: "big".into(),
        exec: &["/bin/demo-agent", "sleep"],
        network: &[],
        memory: "16MiB",
        pids: 8,
        cpus: 1.0,
        restart: r#"{ "policy": "never" }"#,
        grant_extra: "",
    }];
    let dev = dir.join("device");
    let config = write_device(ctx, &dev, &format!("{}-fleet", ctx.tag), &bundles)?;
    let src = dir.join("src");
    fs::rename(dev.join("agents/big"), &src).map_err(|e| format!("moving the bundle: {e}"))?;
    let key = openssl_keypair(&dev.join("keys"))?;
    let mut cfg: Json =
        serde_json::from_str(&fs::read_to_string(&config).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    cfg["device_id"] = "bench-dev".into();
    cfg["policy_key"] = srv_dir
        .join("fleet-signing.pub")
        .display()
        .to_string()
        .into();
    cfg["fleet"] = serde_json::json!({
        "server": server.addr.to_string(), "server_name": "localhost",
        "ca": creds.join("fleet-ca.pem"), "cert": creds.join("device.pem"),
        "key": creds.join("device.key"), "poll_s": 3600, "urgent_gap_s": 0,
    });
    fs::write(&config, cfg.to_string()).map_err(|e| e.to_string())?;
    let d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    wait_status(&d, Duration::from_secs(60), "the first check-in", |s| {
        link(s)[0] >= 1
    })?;

    // Idle check-ins.
    let mut idle = Vec::new();
    for _ in 0..IDLE_SESSIONS {
        idle.push(one_session(&d)?);
    }
    let col = |i: usize| median(idle.iter().map(|x| x[i]).collect());
    let (up, down, wire_up, wire_down) = (col(0), col(1), col(2), col(3));

    // A policy update: the device's own policy with a higher version, pushed and applied.
    let mut policy: Json = serde_json::from_str(
        &fs::read_to_string(dev.join("policy.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    policy["version"] = 2.into();
    let pfile = dev.join("push.json");
    fs::write(&pfile, policy.to_string()).map_err(|e| e.to_string())?;
    util::output(
        fleet(&bin, &srv_dir, &db)
            .args(["policy", "push"])
            .arg(&pfile)
            .args(["--device", "bench-dev"]),
    )?;
    // Replicas see a push within 2 s (fleet/src/directives.rs).
    std::thread::sleep(DIRECTIVES_TTL);
    let pol = one_session(&d)?;
    if d.json(&["status", "--json"])?["policy_version"] != 2 {
        return Err(format!(
            "the pushed policy was not applied: {}",
            d.log_tail()
        ));
    }

    // Memory while a 20 MiB bundle arrives and installs.
    fs::write(src.join("rootfs/data.bin"), noise(20 << 20, 7)).map_err(|e| e.to_string())?;
    let file = dir.join("big-0.1.0.nclaw");
    util::output(
        Command::new(&ctx.bins.nanoclaw)
            .args(["bundle", "pack"])
            .arg(&src)
            .arg("-o")
            .arg(&file),
    )?;
    util::output(
        Command::new(&ctx.bins.nanoclaw)
            .args(["bundle", "sign"])
            .arg(&file)
            .arg("--key")
            .arg(&key),
    )?;
    util::output(
        fleet(&bin, &srv_dir, &db)
            .args(["bundle", "publish"])
            .arg(&file)
            .args(["--device", "bench-dev"]),
    )?;
    let kib = |k: &str| {
        proc_kib(d.pid, "status")
            .into_iter()
            .find(|(n, _)| n == k)
            .map_or(0, |x| x.1)
    };
    // Reset the peak to the current RSS (clear_refs 5): the peak after is what the sync needed.
    let _ = fs::write(format!("/proc/{}/clear_refs", d.pid), "5");
    std::thread::sleep(DIRECTIVES_TTL);
    let (rss0, hwm0) = (kib("VmRSS"), kib("VmHWM"));
    let t0 = Instant::now();
    let dl = one_session(&d)?;
    let took = t0.elapsed();
    let (rss1, hwm1) = (kib("VmRSS"), kib("VmHWM"));
    let installed = d.json(&["agents", "--json"])?.as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x["name"] == "big" && x["version"] == "0.1.0")
    });
    if !installed {
        return Err(format!("the bundle did not install: {}", d.log_tail()));
    }
    drop(d);

    // Throughput: simulated devices against this server (SQLite), then PostgreSQL.
    let sqlite = loadgen(&bin, &srv_dir, &db, &server)?;
    drop(server);
    let pg = postgres_run(&bin, &dir)?;

    let ddi_up = DDI_REQUEST.len() as u64;
    let ddi_down = DDI_RESPONSE.len() as u64;
    let rate = |j: &Json| j["sessions_per_s"].as_f64().unwrap_or(0.0);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "`cargo xtask bench --only fleet`. A real daemon (static binary) syncs with a real \
         `nanoclaw-fleet serve` (`--profile server` build, SQLite) on loopback; every check-in is asked for \
         with `nanoclaw sync` and measured by the daemon's own counters (`status`: \
         `payload_*` are protocol frames, `wire_*` everything through the socket, TLS 1.3 \
         included, resumed sessions).\n"
    );
    let _ = writeln!(
        body,
        "| exchange | payload up | payload down | on the wire up | on the wire down |"
    );
    let _ = writeln!(body, "|---|---|---|---|---|");
    let _ = writeln!(
        body,
        "| idle check-in (median of {IDLE_SESSIONS}) | {up} B | {down} B | {wire_up} B | {wire_down} B |"
    );
    let _ = writeln!(
        body,
        "| hawkBit DDI idle poll (HTTP/1.1 payload, minimal headers, before TLS) | {ddi_up} B | {ddi_down} B | — | — |"
    );
    let _ = writeln!(
        body,
        "| policy update (one session) | {} B | {} B | {} B | {} B |",
        pol[0], pol[1], pol[2], pol[3]
    );
    let _ = writeln!(
        body,
        "| 20 MiB bundle download | {} B | {} B | {} B | {} B |\n",
        dl[0], dl[1], dl[2], dl[3]
    );
    let _ = writeln!(
        body,
        "The DDI row is the smallest request and answer its API allows (`GET \
         /{{tenant}}/controller/v1/{{id}}` with a `TargetToken`, answered `{{\"config\":{{\"polling\":{{\"sleep\":…}}}}}}`); \
         it carries less than a nanoclaw Hello (no policy version, bundle set, audit or outbox \
         marks). No hawkBit server runs here, so those bytes are counted from the documented \
         exchange, not captured.\n"
    );
    let _ = writeln!(
        body,
        "Daemon memory over the 20 MiB download and install ({:.1} s): VmRSS {rss0} → {rss1} KiB, \
         peak (VmHWM) {hwm0} → {hwm1} KiB (+{} KiB).\n",
        took.as_secs_f64(),
        hwm1.saturating_sub(hwm0)
    );
    let _ = writeln!(
        body,
        "Server throughput: `nanoclaw-fleet loadgen` (idle sessions: Hello, Welcome, Bye, \
         through the device's sans-IO session) with {REGISTERED} registered devices of which \
         {IDENTITIES} have certificates, {CONCURRENCY} concurrent, {LOAD_SECONDS} s per run, \
         load generator and server on the same 2 cores. Two ways devices connect: a new TCP \
         connection and a resumed TLS 1.3 handshake per check-in (the default, for links that \
         come and go), and devices that stay connected (`stay_connected`: {KEPT_CONNECTIONS} \
         open connections, each check-in a session on its connection, the connection opened \
         once):\n"
    );
    let _ = writeln!(
        body,
        "| database | devices connect | sessions/s | p50 | p99 | failed | server CPU per session | server alone on 2 cores (derived) |"
    );
    let _ = writeln!(body, "|---|---|---|---|---|---|---|---|");
    for (name, j) in [("SQLite", &sqlite), ("PostgreSQL", &pg)] {
        for (how, j) in [
            ("new connection per check-in", &j["new"]),
            ("stay connected", &j["kept"]),
        ] {
            let cpu = j["server_cpu_ms_per_session"].as_f64().unwrap_or(0.0);
            let _ = writeln!(
                body,
                "| {name} | {how} | {:.0} | {:.1} ms | {:.1} ms | {} | {cpu:.2} ms | ≈ {:.0}/s |",
                rate(j),
                j["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
                j["p99_us"].as_f64().unwrap_or(0.0) / 1000.0,
                j["failed"],
                if cpu > 0.0 { 2000.0 / cpu } else { 0.0 },
            );
        }
    }
    let _ = writeln!(
        body,
        "\nThe load generator's TLS clients need about as much CPU as the server, so the measured \
         rate is what one 2-core machine does as client and server together; the last column \
         divides two cores by the server's own CPU time per session (the database server's \
         CPU, for PostgreSQL, is outside it). With a new connection per check-in both ends do \
         a resumed TLS 1.3 handshake (an X25519 exchange and the SHA-256 key schedule) and a \
         TCP set-up and tear-down. Server memory with the \
         {KEPT_CONNECTIONS} connections open (SQLite): VmRSS {} KiB before the run, peak \
         (VmHWM) {} KiB.",
        sqlite["kept"]["server_rss_kib"], sqlite["kept"]["server_hwm_kib"],
    );
    let met = |j: &Json| rate(&j["kept"]) >= 5000.0;
    let shown = |j: &Json| {
        format!(
            "{:.0} syncs/s staying connected, {:.0}/s with a new connection each; {} devices",
            rate(&j["kept"]),
            rate(&j["new"]),
            j["registered"]
        )
    };
    let targets = vec![
        target(
            "idle sync payload each way",
            "≤ 64 B",
            format!("{up} B up, {down} B down"),
            Some(up <= 64 && down <= 64),
        ),
        target(
            "fleet server, SQLite, 2 cores",
            "≥ 5,000 syncs/s, 100,000 devices",
            shown(&sqlite),
            Some(met(&sqlite)),
        ),
        target(
            "fleet server, PostgreSQL, 2 cores",
            "≥ 5,000 syncs/s, 100,000 devices",
            shown(&pg),
            Some(met(&pg)),
        ),
    ];
    Ok(Section {
        title: "Fleet sync".into(),
        body,
        targets,
        busy: None,
    })
}

/// A short run that registers the fleet and enrols the identities, then the measured run;
/// adds the server's CPU milliseconds per session over the measured run.
fn loadgen(bin: &Path, dir: &Path, db: &str, server: &Server) -> Result<Json> {
    let run = |seconds: u64, kept: bool| -> Result<Json> {
        let mut c = fleet(bin, dir, db);
        if kept {
            c.args([
                "--persistent",
                "--connections",
                &KEPT_CONNECTIONS.to_string(),
            ]);
        }
        let out = util::output(c.args([
            "loadgen",
            "--server",
            &server.addr.to_string(),
            "--register",
            &REGISTERED.to_string(),
            "--identities",
            &IDENTITIES.to_string(),
            "--concurrency",
            &CONCURRENCY.to_string(),
            "--seconds",
            &seconds.to_string(),
        ]))?;
        let line = out.lines().last().unwrap_or_default();
        serde_json::from_str(line).map_err(|e| format!("loadgen printed {out:?}: {e}"))
    };
    run(2, false)?;
    let measured = |kept: bool| -> Result<Json> {
        let before = super::cpu_s(server.child.id());
        let mut j = run(LOAD_SECONDS, kept)?;
        let cpu_s = super::cpu_s(server.child.id()) - before;
        let sessions = j["sessions"].as_u64().unwrap_or(0).max(1);
        j["server_cpu_ms_per_session"] = (cpu_s * 1000.0 / sessions as f64).into();
        Ok(j)
    };
    let new = measured(false)?;
    let status_kib = |field: &str| {
        super::proc_kib(server.child.id(), "status")
            .into_iter()
            .find_map(|(k, v)| (k == field).then_some(v))
            .unwrap_or(0)
    };
    let rss0 = status_kib("VmRSS");
    let mut kept = measured(true)?;
    kept["server_rss_kib"] = rss0.into();
    kept["server_hwm_kib"] = status_kib("VmHWM").into();
    Ok(serde_json::json!({ "new": new, "kept": kept, "registered": new["registered"] }))
}

/// A throwaway Debian PostgreSQL cluster (`pg_createcluster`), a fleet on it, the load run.
fn postgres_run(bin: &Path, dir: &Path) -> Result<Json> {
    let version = fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("PostgreSQL is not installed ({e}): run `cargo xtask setup`"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()
        .ok_or("no PostgreSQL version in /usr/lib/postgresql")?;
    let name = format!("nanoclaw-bench-{}", std::process::id());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    util::output(Command::new("pg_createcluster").args([
        &version,
        &name,
        "-p",
        &port.to_string(),
        "--",
        "--auth=trust",
    ]))?;
    let drop_cluster = || {
        let _ = Command::new("pg_dropcluster")
            .args([&version, &name, "--stop"])
            .output();
    };
    let run = || -> Result<Json> {
        util::output(Command::new("pg_ctlcluster").args([&version, &name, "start"]))?;
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let fdir = dir.join("server-pg");
        fs::create_dir_all(&fdir).map_err(|e| e.to_string())?;
        util::output(fleet(bin, &fdir, &url).args(["init", "--name", "localhost"]))?;
        let server = serve(bin, &fdir, &url)?;
        loadgen(bin, &fdir, &url, &server)
    };
    let r = run();
    drop_cluster();
    r
}
