//! `cargo xtask demo`: the example agents on the built-in simulated board.
//!
//! Builds the static binaries, drops the demo agent into each example bundle's rootfs, runs the
//! daemon with configs/demo/device.json, lets the agents meet their fates for a few seconds
//! (the sensor runs, the memory hog is OOM-killed and restarted until its crash-loop limit, the
//! fork bomb hits pids.max, the escape artist is contained, the cruncher uses up its energy
//! budget on the simulated battery and is throttled), shows what a field engineer would look
//! at, then stops the daemon with SIGTERM and cleans up. It ends with `nanoclaw sim` on a
//! new agent, the way its author would check it: live decisions and the report.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Result};

const AGENTS: [&str; 5] = ["sensor", "memhog", "forkbomb", "escape", "cruncher"];
const SOCKET: &str = "/run/nanoclaw-demo/ctl.sock";
/// The agent the closing simulator run checks (configs/demo/sim/), next to the sensor.
const SIM_AGENT: &str = "uplink";

pub fn main(args: &[String]) -> Result {
    let secs: u64 = match args {
        [] => 12,
        [flag, s] if flag == "--seconds" => s.parse().map_err(|_| "--seconds wants a number")?,
        _ => return Err("usage: cargo xtask demo [--seconds N]".into()),
    };
    if !util::is_root() {
        return Err(
            "the demo creates cgroups and namespaces: run `sudo -E cargo xtask demo`".into(),
        );
    }
    crate::setup::ensure(&[crate::setup::BUILD, crate::setup::TEST][..])?;
    let b = util::build_static(util::host_target())?;
    let root = util::root();
    let demo = root.join("configs/demo");
    let dirs = AGENTS
        .iter()
        .map(|a| demo.join("agents").join(a))
        .chain([demo.join("sim").join(SIM_AGENT)]);
    for dir in dirs {
        let bin = dir.join("rootfs/bin");
        std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
        std::fs::copy(&b.demo_agent, bin.join("demo-agent"))
            .map_err(|e| format!("copying the demo agent: {e}"))?;
    }
    // A fresh state directory each run, so the audit trail shows just this demo.
    let _ = std::fs::remove_dir_all(root.join("target/demo/state"));

    println!("== starting `nanoclaw daemon --config configs/demo/device.json` ==");
    let mut daemon = Command::new(&b.nanoclaw)
        .args(["daemon", "--config"])
        .arg(demo.join("device.json"))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the daemon: {e}"))?;
    if let Some(err) = daemon.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                println!("  daemon | {line}");
            }
        });
    }
    let cli = |args: &[&str]| {
        println!("\n$ nanoclaw {}", args.join(" "));
        let _ = Command::new(&b.nanoclaw)
            .args(["--socket", SOCKET])
            .args(args)
            .status();
    };
    let t0 = Instant::now();
    while !Path::new(SOCKET).exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(secs));
    cli(&["status"]);
    cli(&["agents"]);
    cli(&["logs", "sensor", "-n", "3"]);
    cli(&["logs", "forkbomb"]);
    cli(&["logs", "escape"]);
    cli(&["why", "memhog"]);
    cli(&["battery"]);
    cli(&["logs", "cruncher", "-n", "4"]);
    cli(&["audit", "-n", "12"]);

    println!("\n== SIGTERM to the daemon: agents stop gracefully ==");
    // The daemon is our own child: signal it by its PID.
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let status = daemon
        .wait()
        .map_err(|e| format!("waiting for the daemon: {e}"))?;
    // The daemon removes agent cgroups; the subtree itself (it held the daemon) goes here.
    for ctl in ["memory", "cpu", "pids", "freezer", "unified", ""] {
        let base = Path::new("/sys/fs/cgroup").join(ctl).join("nanoclaw-demo");
        for sub in ["supervisor", "agents", ""] {
            let _ = std::fs::remove_dir(base.join(sub));
        }
    }
    println!("daemon exited: {status}");
    if !status.success() {
        return Err(format!("the daemon exited with {status}"));
    }

    println!(
        "\n== an agent author's check before shipping: `nanoclaw sim` runs agents under the same enforcement and reports =="
    );
    let sim_args = [
        "sim".to_owned(),
        "--seconds".into(),
        "5".into(),
        "--agent".into(),
        demo.join("sim").join(SIM_AGENT).display().to_string(),
        "--agent".into(),
        demo.join("agents/sensor").display().to_string(),
    ];
    println!("$ nanoclaw {}", sim_args.join(" "));
    let sim = Command::new(&b.nanoclaw)
        .args(&sim_args)
        .status()
        .map_err(|e| format!("running nanoclaw sim: {e}"))?;
    if sim.success() {
        Ok(())
    } else {
        Err(format!("nanoclaw sim exited with {sim}"))
    }
}
