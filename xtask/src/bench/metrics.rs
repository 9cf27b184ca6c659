//! What a Prometheus scrape of a device costs: the daemon supervising 32 idle agents with
//! metrics on, scraped back to back over loopback.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::{Ctx, Daemon, IDLE_AGENTS, Section, cpu_s, target, write_device};
use crate::util::Result;

const SCRAPES: usize = 500;

fn scrape(port: u16) -> Result<usize> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("request: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("response: {e}"))?;
    if !out.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "scrape answered {:?}",
            String::from_utf8_lossy(&out[..out.len().min(40)])
        ));
    }
    let head = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    Ok(out.len() - head)
}

pub fn bench_metrics(ctx: &Ctx) -> Result<Section> {
    let bundles = super::sleepers(IDLE_AGENTS);
    let dir = ctx.dir.join("metrics");
    let config = write_device(ctx, &dir, &format!("{}-metrics", ctx.tag), &bundles)?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port: {e}"))?
        .port();
    super::add_device_keys(
        &config,
        serde_json::json!({ "metrics": { "listen": format!("127.0.0.1:{port}") } }),
    )?;
    let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    d.wait_running(IDLE_AGENTS, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(2));
    let body = scrape(port)?;
    let cpu0 = cpu_s(d.pid);
    let mut lat = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        let t = Instant::now();
        scrape(port)?;
        lat.push(t.elapsed());
    }
    let cpu = (cpu_s(d.pid) - cpu0) / SCRAPES as f64;
    d.alive()?;
    lat.sort();
    let p50 = lat[SCRAPES / 2];
    let p99 = lat[SCRAPES * 99 / 100];
    let mut b = String::new();
    let _ = writeln!(
        b,
        "The daemon supervising {IDLE_AGENTS} idle agents (as in the memory section) with \
         `\"metrics\": {{\"listen\": \"127.0.0.1:PORT\"}}`, scraped {SCRAPES} times back to back over \
         loopback (a new connection each, as Prometheus does), after one warm-up scrape. The daemon's \
         CPU from `/proc/PID/stat` (utime + stime) over the run, divided by the scrapes.\n\n\
         | exposition size | scrape latency p50 / p99 | daemon CPU per scrape |\n|---|---|---|\n\
         | {:.1} KiB | {:.2} / {:.2} ms | {:.3} ms |\n\n\
         At Prometheus' default 15 s interval that is {:.4} % of one core.\n\n\
         Reproduce: `cargo xtask bench --only metrics` (device config in `{}`), or by hand: \
         `curl -s 127.0.0.1:PORT/metrics | wc -c`.",
        body as f64 / 1024.0,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        cpu * 1e3,
        cpu / 15.0 * 100.0,
        ctx.rel(&dir),
    );
    Ok(Section {
        title: "Metrics scrape".into(),
        body: b,
        targets: vec![target(
            "daemon CPU per metrics scrape, 32 agents (no DESIGN.md target)",
            "-",
            format!("{:.3} ms", cpu * 1e3),
            None,
        )],
        busy: None,
    })
}
