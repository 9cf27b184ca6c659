//! Policy engine numbers: validating a 64-agent policy, a live reload down to kernel state
//! (cgroup files, eBPF egress map), and a request round trip on an agent socket.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Instant;

use super::{Bundle, Ctx, Daemon, Section, stats, target, write_device};
use crate::util::Result;

/// A policy with `n` agents, each with network entries, grantable capabilities and rules,
/// chained by channels: the shape of a busy gateway.
fn big_policy(n: usize) -> String {
    let agents: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#""agent-{i}": {{ "memory": "16MiB", "cpus": 0.1, "pids": 16, "scratch": "1MiB",
      "network": ["10.{a}.{b}.1:6379/tcp", "10.{a}.{b}.0/24:443/tcp", "[fd00::{i:x}]:53/udp", "api-{i}.example.com:443/tcp"],
      "syscalls": "default", "grantable": ["net:10.{a}.{b}.9:8080/tcp", "net:10.{a}.0.0/16:22/tcp"],
      "on_violation": [ {{ "denied_connects": 5, "within_s": 60, "action": "revoke_network" }},
                        {{ "trust_below": 30, "action": "quarantine" }} ],
      "require": ["bpf-egress"] }}"#,
                a = i / 256,
                b = i % 256
            )
        })
        .collect();
    let channels: Vec<String> = (1..n)
        .map(|i| {
            format!(
                r#"{{ "from": "agent-{}", "to": "agent-{i}", "topic": "t{i}" }}"#,
                i - 1
            )
        })
        .collect();
    format!(
        r#"{{ "version": 1,
  "signers": [ {{ "agents": "agent-*", "key": "keys/vendor.pub" }},
               {{ "agents": "*", "identity": "https://ci.example/release", "issuer": "https://token.example" }} ],
  "device": {{ "memory_reserve": "64MiB" }},
  "agents": {{ {} }},
  "channels": [ {} ] }}"#,
        agents.join(",\n"),
        channels.join(",\n")
    )
}

fn micros_from_stderr(cmd: &mut Command) -> Result<f64> {
    let out = cmd
        .output()
        .map_err(|e| format!("running policy check: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "policy check failed: {err}{}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    err.lines()
        .find_map(|l| {
            l.strip_prefix("check took ")?
                .strip_suffix(" µs")?
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no timing in {err:?}"))
}

/// The memory limit file of the process `pid`'s cgroup (v1 or v2).
fn memory_limit_of(pid: u32) -> Result<u64> {
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| format!("{e}"))?;
    let path = if let Some(p) = cg
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|x| x.1))
    {
        format!("/sys/fs/cgroup/memory{p}/memory.limit_in_bytes")
    } else {
        let p = cg
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("no cgroup of the agent")?;
        format!("/sys/fs/cgroup{p}/memory.max")
    };
    fs::read_to_string(&path)
        .map_err(|e| format!("{path}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{path}: {e}"))
}

pub(super) fn bench_policy(ctx: &Ctx) -> Result<Section> {
    const CHECKS: usize = 30;
    const RELOADS: usize = 100;
    const CONNECTIONS: usize = 20;
    const PER_CONNECTION: usize = 90;
    let nc = &ctx.bins.nanoclaw;
    let dir = ctx.dir.join("policy");
    let config = write_device(
        ctx,
        &dir,
        &format!("{}-policy", ctx.tag),
        &[Bundle {
            name: "live".into(),
            exec: &["/bin/demo-agent", "sleep"],
            network: &["127.0.0.1:9/tcp".to_owned(), "127.0.0.1:13/tcp".to_owned()],
            memory: "32MiB",
            pids: 8,
            cpus: 0.5,
            restart: r#"{ "policy": "never" }"#,
            grant_extra: "",
        }],
    )?;

    // 1. Validation of a 64-agent policy.
    let big = dir.join("policy-64.json");
    super::write(&big, &big_policy(64))?;
    let (mut inproc, mut whole) = (Vec::new(), Vec::new());
    for _ in 0..CHECKS {
        let t0 = Instant::now();
        inproc.push(
            micros_from_stderr(Command::new(nc).args(["policy", "check"]).arg(&big).args([
                "--device-memory",
                "64GiB",
                "--timing",
            ]))? / 1000.0,
        );
        whole.push(super::ms(t0.elapsed()));
    }
    let size = fs::metadata(&big).map(|m| m.len()).unwrap_or(0);

    // 2. Reloads of a running agent: budgets, then egress, alternately.
    let mut d = Daemon::start(nc, &config)?;
    let policy_path = dir.join("policy.json");
    let pid = {
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // Not answering yet is fine until the deadline: the daemon is starting.
            let a = d.json(&["agents", "--json"]).unwrap_or_default();
            if let Some(p) = a
                .as_array()
                .and_then(|v| v.iter().find(|x| x["name"] == "live"))
                .and_then(|x| x["pid"].as_u64())
            {
                break p as u32;
            }
            if Instant::now() > deadline {
                return Err(format!("agent live did not start:\n{}", d.log_tail()));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let (mut budget_cli, mut budget_in, mut egress_cli, mut egress_in) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut checked = 0;
    for i in 0..RELOADS {
        let budgets = i % 2 == 0;
        let mem = if budgets && i % 4 == 0 {
            "24MiB"
        } else {
            "32MiB"
        };
        let net = if !budgets && i % 4 == 1 {
            r#"["127.0.0.1:9/tcp"]"#
        } else {
            r#"["127.0.0.1:9/tcp", "127.0.0.1:13/tcp"]"#
        };
        super::write(
            &policy_path,
            &format!(
                r#"{{ "version": {v}, "signers": [ {{ "agents": "*", "key": "keys/bench.pub" }} ],
  "device": {{ "memory_reserve": "64MiB" }},
  "agents": {{ "live": {{ "memory": "{mem}", "cpus": 0.5, "pids": 8, "scratch": "1MiB", "syscalls": "default", "network": {net} }} }} }}"#,
                v = i + 2
            ),
        )?;
        let t0 = Instant::now();
        let report = super::parse_json(&d.cli(&["policy", "reload", "--json"])?)?;
        let cli = super::ms(t0.elapsed());
        let applied = report["applied_us"].as_f64().unwrap_or(f64::NAN) / 1000.0;
        // The kernel holds the new value the moment the CLI returns.
        let want: u64 = if mem == "24MiB" { 24 << 20 } else { 32 << 20 };
        let have = memory_limit_of(pid)?;
        if have != want {
            return Err(format!(
                "after reload {i} the memory limit is {have}, not {want}"
            ));
        }
        checked += 1;
        if budgets {
            budget_cli.push(cli);
            budget_in.push(applied);
        } else {
            egress_cli.push(cli);
            egress_in.push(applied);
        }
    }

    // 3. Round trips on the agent's socket (as root from the host side of it).
    let sock = dir.join("state/run/sock/live/nanoclaw.sock");
    let mut rtt = Vec::new();
    for _ in 0..CONNECTIONS {
        let s = UnixStream::connect(&sock).map_err(|e| format!("{}: {e}", sock.display()))?;
        let mut w = s.try_clone().map_err(|e| format!("{e}"))?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        // Within one connection's burst allowance (100), so the rate limit never answers.
        for _ in 0..PER_CONNECTION {
            line.clear();
            let t0 = Instant::now();
            w.write_all(b"{\"op\":\"whoami\"}\n")
                .map_err(|e| format!("{e}"))?;
            r.read_line(&mut line).map_err(|e| format!("{e}"))?;
            rtt.push(t0.elapsed().as_secs_f64() * 1e6);
            if !line.contains("\"ok\":true") {
                return Err(format!("whoami answered {line}"));
            }
        }
    }
    d.stop()?;

    let (Some(vi), Some(vw), Some(bc), Some(bi), Some(ec), Some(ei), Some(rt)) = (
        stats(&inproc),
        stats(&whole),
        stats(&budget_cli),
        stats(&budget_in),
        stats(&egress_cli),
        stats(&egress_in),
        stats(&rtt),
    ) else {
        return Err("no samples".into());
    };
    let mut body = String::new();
    let _ = writeln!(
        body,
        "**Validation** of a 64-agent policy ({size} bytes: 4 network entries, 2 grantable \
         capabilities, 2 rules and `require` per agent, 63 channels, 2 signers): `nanoclaw policy \
         check FILE --device-memory 64GiB --timing`, {CHECKS} runs. Every check of the device's \
         judge: size, JSON with duplicate-key detection, every field, memory fit.\n\n\
         | | p50 | p99 |\n|---|---|---|\n\
         | parse + validate, in process | {:.2} ms | {:.2} ms |\n\
         | whole `policy check` process | {:.2} ms | {:.2} ms |\n",
        vi.p50, vi.p99, vw.p50, vw.p99
    );
    let _ = writeln!(
        body,
        "**Reload to kernel state**: a running agent (`demo-agent sleep`, same PID throughout), \
         the policy file rewritten with a new version, then `nanoclaw policy reload --json`; \
         budget reloads change `memory` (cgroup file), egress reloads remove or restore one \
         allowlist entry (eBPF map). When the CLI returns the kernel already holds the new value \
         (the memory limit was read back after each of the {checked} reloads). In the daemon \
         (`applied_us` in the report): from the request (policy file read, judged, diffed) to \
         the last kernel write, the reload latency the target is about; the whole CLI round \
         trip adds starting the `nanoclaw` CLI process and the socket exchange. {RELOADS} \
         reloads, alternating.\n\n\
         | change | in the daemon, p50 | p99 | whole CLI round trip, p50 | p99 |\n|---|---|---|---|---|\n\
         | budgets (memory) | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n\
         | egress (one entry) | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n",
        bi.p50, bi.p99, bc.p50, bc.p99, ei.p50, ei.p99, ec.p50, ec.p99
    );
    let _ = writeln!(
        body,
        "**Agent socket round trip**: `{{\"op\":\"whoami\"}}` and its answer over the agent's \
         socket, {CONNECTIONS} connections × {PER_CONNECTION} requests (inside the per-connection \
         burst allowance), {} samples: p50 **{:.1} µs**, p99 {:.1} µs, max {:.1} µs.\n\n\
         Reproduce: `cargo xtask bench --only policy` (files in `{}`).",
        rt.n,
        rt.p50,
        rt.p99,
        rt.max,
        ctx.rel(&dir)
    );
    let worst = bi.p99.max(ei.p99);
    Ok(Section {
        title: "Policy engine".into(),
        body,
        targets: vec![
            target(
                "reload latency to kernel state, budgets and egress (request → kernel, p99)",
                "≤ 10 ms",
                format!(
                    "{worst:.2} ms (whole CLI round trip p50 {:.2} / {:.2} ms, p99 {:.2} / {:.2} ms)",
                    bc.p50, ec.p50, bc.p99, ec.p99
                ),
                Some(worst <= 10.0),
            ),
            target(
                "validation of a 64-agent policy (in process, p50)",
                "—",
                format!("{:.2} ms", vi.p50),
                None,
            ),
            target(
                "agent socket request round trip (p50)",
                "—",
                format!("{:.1} µs", rt.p50),
                None,
            ),
        ],
        busy: None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_big_policy_is_json() {
        let v: serde_json::Value = serde_json::from_str(&super::big_policy(64)).unwrap();
        assert_eq!(v["agents"].as_object().unwrap().len(), 64);
        assert_eq!(v["channels"].as_array().unwrap().len(), 63);
    }
}
