//! Energy numbers on the `sim` board: what sampling costs the supervisor, how accurately
//! energy follows CPU time, and how much longer the battery lasts with tiers.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Bundle, Ctx, Daemon, Section, target, write_device};
use crate::util::Result;

/// Adds keys to the device.json `write_device` wrote, and a class to some manifests.
fn tweak(config: &Path, device: serde_json::Value, classes: &[(&str, &str)]) -> Result {
    super::add_device_keys(config, device)?;
    let dir = config.parent().unwrap_or(Path::new("."));
    for (agent, class) in classes {
        let p = dir.join("agents").join(agent).join("manifest.json");
        let m = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let m = m.replacen(
            r#""mode": "service","#,
            &format!(r#""mode": "service", "class": "{class}","#),
            1,
        );
        super::write(&p, &m)?;
    }
    Ok(())
}

/// Sets `device.battery` in the policy `write_device` wrote.
fn battery_policy(config: &Path, rules: serde_json::Value) -> Result {
    let p = config
        .parent()
        .unwrap_or(Path::new("."))
        .join("policy.json");
    let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}"))?;
    v["device"]["battery"] = rules;
    super::write(&p, &v.to_string())
}

fn burner(name: &str, cpus: f64) -> Bundle<'static> {
    Bundle {
        name: name.into(),
        exec: &["/bin/demo-agent", "burn"],
        network: &[],
        memory: "16MiB",
        pids: 4,
        cpus,
        restart: r#"{ "policy": "never" }"#,
        grant_extra: "",
    }
}

/// Supervisor CPU over `secs` with 32 idle agents, sampling every `period_ms`.
fn sampling_cost(ctx: &Ctx, period_ms: u32, secs: u64) -> Result<f64> {
    let dir = ctx.dir.join(format!("energy-cost-{period_ms}"));
    let bundles = super::sleepers(32);
    let config = write_device(ctx, &dir, &format!("{}-ecost", ctx.tag), &bundles)?;
    tweak(
        &config,
        serde_json::json!({ "energy_period_ms": period_ms }),
        &[],
    )?;
    let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    d.wait_running(32, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(2));
    let (c0, t0) = (super::cpu_s(d.pid), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let share = (super::cpu_s(d.pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    d.stop()?;
    Ok(share)
}

fn battery_json(d: &Daemon) -> Result<serde_json::Value> {
    d.json(&["battery", "--json"])
}

/// (big, small) total mWh after `secs` of burning at 0.75 and 0.25 CPU.
fn accuracy(ctx: &Ctx, secs: u64) -> Result<(f64, f64)> {
    let dir = ctx.dir.join("energy-accuracy");
    let config = write_device(
        ctx,
        &dir,
        &format!("{}-eacc", ctx.tag),
        &[burner("big", 0.75), burner("small", 0.25)],
    )?;
    tweak(&config, serde_json::json!({ "energy_period_ms": 500 }), &[])?;
    let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    d.wait_running(2, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(secs));
    let b = battery_json(&d)?;
    d.stop()?;
    let get = |n: &str| {
        b["agents"]
            .as_array()
            .and_then(|v| v.iter().find(|a| a["agent"] == n))
            .and_then(|a| a["total_mwh"].as_f64())
            .unwrap_or(0.0)
    };
    Ok((get("big"), get("small")))
}

/// Simulated hours from full until 5 % with the demo-like workload, tiers on or off.
fn battery_life(ctx: &Ctx, tiers: bool, speed: f64) -> Result<f64> {
    let dir = ctx.dir.join(format!(
        "energy-life-{}",
        if tiers { "tiers" } else { "none" }
    ));
    let config = write_device(
        ctx,
        &dir,
        &format!("{}-elife", ctx.tag),
        &[
            burner("worker", 0.5),
            burner("uploader", 0.5),
            super::sleeper("sensor".into()),
        ],
    )?;
    tweak(
        &config,
        serde_json::json!({ "energy_period_ms": 200, "sim": { "start_percent": 100, "speed": speed } }),
        &[("uploader", "background"), ("sensor", "critical")],
    )?;
    if tiers {
        battery_policy(
            &config,
            serde_json::json!([
                { "below_percent": 50, "background": "freeze", "normal": "throttle" },
                { "below_percent": 20, "normal": "stop" }
            ]),
        )?;
    }
    let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    d.wait_running(3, Duration::from_secs(30))?;
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let b = battery_json(&d)?;
        let pct = b["percent"].as_f64().unwrap_or(100.0);
        if pct <= 5.0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(180) {
            d.stop()?;
            return Err(format!(
                "the simulated battery was still at {pct:.0} % after 180 s"
            ));
        }
    }
    let hours = t0.elapsed().as_secs_f64() * speed / 3600.0;
    d.stop()?;
    Ok(hours)
}

pub(super) fn bench_energy(ctx: &Ctx) -> Result<Section> {
    const COST_S: u64 = 20;
    const SPEED: f64 = 900.0;
    let at_1hz = sampling_cost(ctx, 1000, COST_S)?;
    let rare = sampling_cost(ctx, 60_000, COST_S)?;
    let (big, small) = accuracy(ctx, 10)?;
    let ratio = big / small.max(1e-9);
    let off = battery_life(ctx, false, SPEED)?;
    let on = battery_life(ctx, true, SPEED)?;
    let mut body = String::new();
    let _ = writeln!(
        body,
        "On the `sim` board (docs/ENERGY.md): power model 1.5 W idle + 2.0 W per busy core, \
         a 10 Wh simulated battery with a 0.5 W base load, read back through the real \
         `power_supply` readers.\n\n\
         **Sampling cost**: the daemon's CPU time (utime + stime from `/proc/PID/stat`) over \
         {COST_S} s with 32 idle agents: **{at_1hz:.3} %** of one core sampling at 1 Hz, \
         {rare:.3} % with `energy_period_ms: 60000` (everything else the daemon does: health \
         ticks, syscall monitor). Sampling itself: {:.3} % of one core.\n\n\
         **Attribution accuracy**: two agents burning CPU under quotas of 0.75 and 0.25 CPU for \
         10 s, sampled every 500 ms: {big:.2} mWh vs {small:.2} mWh, a ratio of **{ratio:.3}** \
         (exact: 3; error {:.1} %).\n\n\
         **Battery life with tiers**: from 100 % to 5 % at {SPEED}× simulated time, with a \
         normal agent and a background agent each burning 0.5 CPU and a critical agent \
         sleeping. Without tiers: **{off:.2} h**. With `[{{below 50: background freeze, normal \
         throttle}}, {{below 20: normal stop}}]`: **{on:.2} h** ({:+.0} %; the critical agent runs \
         throughout).\n\n\
         Reproduce: `cargo xtask bench --only energy` (configs in `{}`).",
        (at_1hz - rare).max(0.0),
        (ratio - 3.0).abs() / 3.0 * 100.0,
        (on / off - 1.0) * 100.0,
        ctx.rel(&ctx.dir.join("energy-*"))
    );
    Ok(Section {
        title: "Energy".into(),
        body,
        targets: vec![
            target(
                "energy sampling, 32 agents at 1 Hz (daemon CPU, all of it)",
                "≤ 0.5 % of one core",
                format!("{at_1hz:.3} %"),
                Some(at_1hz <= 0.5),
            ),
            target(
                "energy attribution, 3:1 CPU experiment",
                "within 5 % of 3:1",
                format!("{ratio:.3}:1"),
                Some((ratio - 3.0).abs() <= 0.15),
            ),
            target(
                "battery life in the simulator, tiers on vs off",
                "measured",
                format!("{on:.2} h vs {off:.2} h"),
                None,
            ),
        ],
        busy: None,
    })
}
