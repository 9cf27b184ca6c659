//! `cargo xtask bench`: measures the DESIGN.md §7 targets on this machine and writes
//! `docs/BENCHMARKS.md`, every number next to the command that reproduces it.
//!
//! Sections: static binary size (x86_64 and aarch64 musl), sandboxed start to exec
//! (`nanoclaw run` against `bwrap` and `runc`, interleaved in one run; `crun` is tried), the
//! supervisor's memory with 1 and 32 idle agents, and OOM kill → restarted agent. Numbers are
//! reported, never asserted (DESIGN.md §5 item 7). Needs root. Cgroups are created only under
//! `nanoclaw-bench-<pid>*` subtrees and removed afterwards; the only processes signalled are
//! ones this harness started. Scratch files live in `target/bench/` and are kept, so the
//! commands in the report can be re-run by hand.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Binaries, Result};

mod dashboard;
mod energy;
mod fleet;
mod metrics;
mod policy;
mod sdk;

const USAGE: &str = "usage: cargo xtask bench [--runs N] [--oom-cycles N] [--only start|memory|metrics|size|oom|monitor|egress|install|policy|sdk|energy|fleet|dashboard]... [--out FILE]
  --runs N        sandbox starts per tool (default 200)
  --oom-cycles N  OOM incidents to time (default 25)
  --only NAME     run only these sections; the report then goes to stdout unless --out is given
  --out FILE      where to write the report (default docs/BENCHMARKS.md)";

/// Discarded starts per tool before measuring (page cache, first netns, ...).
const WARMUP: usize = 5;
/// Uid the sandboxed command runs as in every tool (nanoclaw run's default).
const UID: u32 = 60999;
/// First uid of the daemon's agents.
const UID_BASE: u32 = 70000;
const IDLE_AGENTS: usize = 32;
/// Idle time before each measured start: longer than the kernel's window in which a cgroup
/// migration profits from the previous one (about one RCU grace period).
const GAP: Duration = Duration::from_millis(50);

/// `cargo xtask bench ARGS`.
pub fn main(args: &[String]) -> Result {
    run(&util::root(), args, &util::build_static)
}

struct Opts {
    runs: usize,
    oom_cycles: usize,
    only: Vec<String>,
    out: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        runs: 200,
        oom_cycles: 25,
        only: Vec::new(),
        out: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or(format!("{a} needs a value\n{USAGE}"))
        };
        let num = |v: String| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{a} wants a positive number, got {v:?}"))
        };
        match a.as_str() {
            "--runs" => o.runs = num(val()?)?,
            "--oom-cycles" => o.oom_cycles = num(val()?)?,
            "--out" => o.out = Some(PathBuf::from(val()?)),
            "--only" => {
                for s in val()?.split(',') {
                    if ![
                        "start",
                        "memory",
                        "metrics",
                        "size",
                        "oom",
                        "monitor",
                        "egress",
                        "install",
                        "policy",
                        "sdk",
                        "energy",
                        "fleet",
                        "dashboard",
                    ]
                    .contains(&s)
                    {
                        return Err(format!("unknown section {s:?}\n{USAGE}"));
                    }
                    o.only.push(s.to_owned());
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// One report section and its rows in the targets table.
struct Section {
    title: String,
    body: String,
    targets: Vec<Target>,
    /// Share of the CPUs busy in the second before the section ran (other work on the host).
    busy: Option<f64>,
}

struct Target {
    what: String,
    target: String,
    measured: String,
    met: Option<bool>,
}

fn target(what: &str, target: &str, measured: String, met: Option<bool>) -> Target {
    Target {
        what: what.into(),
        target: target.into(),
        measured,
        met,
    }
}

/// Paths and names shared by the sections.
struct Ctx<'a> {
    root: &'a Path,
    /// `target/bench`.
    dir: PathBuf,
    /// Prefix of every cgroup and container this run creates.
    tag: String,
    bins: Binaries,
}

impl Ctx<'_> {
    /// `p` relative to the workspace root, as the report shows it.
    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(self.root).unwrap_or(p).display().to_string()
    }
}

/// The whole benchmark; `build` produces the static binaries for a target triple.
pub fn run(root: &Path, args: &[String], build: &dyn Fn(&str) -> Result<Binaries>) -> Result {
    let opts = parse(args)?;
    if !util::is_root() {
        return Err(
            "cargo xtask bench needs root (cgroups, namespaces, runc): run `sudo -E cargo xtask bench`"
                .into(),
        );
    }
    let want = |s: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == s);
    let t0 = Instant::now();
    let dir = root.join("target").join("bench");
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let had_run_subtree = cgroup_hierarchies()
        .iter()
        .any(|h| h.join("nanoclaw-run").exists());
    let host = util::host_target();
    let bins = build(host)?;
    let ctx = Ctx {
        root,
        dir,
        tag: format!("nanoclaw-bench-{}", std::process::id()),
        bins,
    };
    let mut sections: Vec<Section> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut section = |name: &str, f: &dyn Fn(&Ctx) -> Result<Section>| {
        eprintln!("bench: {name} ...");
        let busy = cpu_busy(Duration::from_secs(1));
        let result = f(&ctx);
        let leftovers = remove_cgroups(&ctx.tag);
        match result {
            Ok(mut s) => {
                s.busy = busy;
                sections.push(s);
            }
            Err(e) => {
                eprintln!("bench: {name} FAILED: {e}");
                failures.push(format!("{name}: {e}"));
                sections.push(Section {
                    title: format!("{name}: not measured"),
                    body: format!("The benchmark failed: `{}`\n", e.replace('`', "'")),
                    targets: Vec::new(),
                    busy,
                });
            }
        }
        if !leftovers.is_empty() {
            failures.push(format!(
                "{name}: cgroups left behind: {}",
                leftovers.join("; ")
            ));
        }
    };
    // Builds first: they load the CPU, the measurements come after.
    if want("size") {
        section("size", &|c| bench_size(c, build));
    }
    if want("start") {
        section("start", &|c| bench_start(c, opts.runs));
    }
    if want("memory") {
        section("memory", &bench_memory);
    }
    if want("metrics") {
        section("metrics", &metrics::bench_metrics);
    }
    if want("oom") {
        section("oom", &|c| bench_oom(c, opts.oom_cycles));
    }
    if want("monitor") {
        section("monitor", &bench_monitor);
    }
    if want("egress") {
        section("egress", &bench_egress);
    }
    if want("policy") {
        section("policy", &policy::bench_policy);
    }
    if want("sdk") {
        section("sdk", &sdk::bench_sdk);
    }
    if want("energy") {
        section("energy", &energy::bench_energy);
    }
    if want("install") {
        section("install", &bench_install);
    }
    if want("dashboard") {
        section("dashboard", &dashboard::bench_dashboard);
    }
    if want("fleet") {
        section("fleet", &fleet::bench_fleet);
    }
    if !had_run_subtree {
        // `nanoclaw run` creates `nanoclaw-run/agents`; remove it if we were the first.
        for h in cgroup_hierarchies() {
            let _ = fs::remove_dir(h.join("nanoclaw-run").join("agents"));
            let _ = fs::remove_dir(h.join("nanoclaw-run"));
        }
    }

    let report = render(&ctx, &sections, &opts, t0.elapsed());
    let out = match (&opts.out, opts.only.is_empty()) {
        (Some(p), _) => Some(if p.is_absolute() {
            p.clone()
        } else {
            root.join(p)
        }),
        (None, true) => Some(root.join("docs").join("BENCHMARKS.md")),
        (None, false) => None,
    };
    match out {
        Some(p) => {
            if let Some(d) = p.parent() {
                fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
            }
            fs::write(&p, &report).map_err(|e| format!("writing {}: {e}", p.display()))?;
            eprintln!(
                "bench: wrote {} in {:.0} s",
                p.display(),
                t0.elapsed().as_secs_f64()
            );
        }
        None => print!("{report}"),
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("bench: {}", failures.join("\n")))
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn render(ctx: &Ctx, sections: &[Section], opts: &Opts, took: Duration) -> String {
    let mut s = String::new();
    let commit = util::output(Command::new("git").current_dir(ctx.root).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]))
    .map(|c| c.trim().to_owned())
    .unwrap_or_else(|_| "unknown".into());
    let dirty = util::output(
        Command::new("git")
            .current_dir(ctx.root)
            .args(["status", "--porcelain"]),
    )
    .is_ok_and(|o| !o.trim().is_empty());
    let date = util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|d| d.trim().to_owned())
        .unwrap_or_else(|_| "unknown date".into());
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench` (xtask/src/bench.rs) on {date} at commit `{commit}`{} in {:.0} s. \
         Numbers are measurements on one machine, never assertions (DESIGN.md §5 item 7). Every number \
         comes with the command that reproduces it; run commands from the repository root, as root. \
         The harness keeps its scratch files (rootfs, runc bundle, device configs) in `target/bench/`.\n",
        if dirty {
            " plus uncommitted changes"
        } else {
            ""
        },
        took.as_secs_f64()
    );
    if !opts.only.is_empty() {
        let _ = writeln!(s, "Partial run: only {}.\n", opts.only.join(", "));
    }
    machine(&mut s, ctx, sections);
    let _ = writeln!(s, "## Targets (DESIGN.md §7)\n");
    let _ = writeln!(s, "| what | target | measured | met |\n|---|---|---|---|");
    for t in sections.iter().flat_map(|x| &x.targets) {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(s, "| {} | {} | {} | {met} |", t.what, t.target, t.measured);
    }
    s.push('\n');
    for sec in sections {
        let _ = writeln!(s, "## {}\n\n{}", sec.title, sec.body.trim_end());
        s.push('\n');
    }
    s
}

fn machine(s: &mut String, ctx: &Ctx, sections: &[Section]) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = ["model name", "Hardware", "CPU part"]
        .iter()
        .find_map(|k| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mem = meminfo_kib("MemTotal").map_or("unknown".into(), |k| {
        format!("{:.1} GiB", k as f64 / (1024.0 * 1024.0))
    });
    let rustc = util::output(Command::new("rustc").current_dir(ctx.root).arg("--version"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let peers: Vec<String> = [
        ("bwrap", "--version"),
        ("runc", "--version"),
        ("crun", "--version"),
    ]
    .iter()
    .map(|(t, a)| match first_line(Command::new(t).arg(a)) {
        Some(v) => v,
        None => format!("{t}: not installed"),
    })
    .collect();
    let busy: Vec<String> = sections
        .iter()
        .filter_map(|x| x.busy.map(|b| format!("{} {:.0} %", short(&x.title), b)))
        .collect();
    let shared = sections.iter().any(|x| x.busy.is_some_and(|b| b > 10.0));
    let _ = writeln!(s, "## Machine\n\n| | |\n|---|---|");
    let _ = writeln!(s, "| kernel | {kernel} |");
    let _ = writeln!(s, "| CPU | {model}, {cores} cores |");
    let _ = writeln!(s, "| memory | {mem} |");
    let _ = writeln!(s, "| cgroups | {} |", cgroup_layout());
    let _ = writeln!(s, "| toolchain | {rustc} |");
    let _ = writeln!(s, "| peers | {} |", peers.join("; "));
    let _ = writeln!(
        s,
        "| CPU busy in the second before each section | {} |",
        if busy.is_empty() {
            "not sampled".into()
        } else {
            busy.join(", ")
        }
    );
    s.push('\n');
    if shared {
        let _ = writeln!(
            s,
            "This is a {cores}-core VM that was shared with other builds and tests while the \
             benchmark ran (see the CPU-busy row): expect noise, especially in the p99 columns.\n"
        );
    }
}

fn short(title: &str) -> &str {
    title.split(':').next().unwrap_or(title)
}

fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Statistics

struct Stats {
    n: usize,
    p50: f64,
    p99: f64,
    mean: f64,
    min: f64,
    max: f64,
}

/// Nearest-rank percentiles.
fn stats(v: &[f64]) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s[i.clamp(1, s.len()) - 1]
    };
    Some(Stats {
        n: s.len(),
        p50: rank(50.0),
        p99: rank(99.0),
        mean: s.iter().sum::<f64>() / s.len() as f64,
        min: s[0],
        max: s[s.len() - 1],
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn kib(bytes: f64) -> String {
    format!("{:.0} KiB", bytes / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// 1. Static binary size

fn bench_size(ctx: &Ctx, build: &dyn Fn(&str) -> Result<Binaries>) -> Result<Section> {
    let mut body = String::new();
    let mut targets = Vec::new();
    let deps = direct_dependencies(&ctx.root.join("supervisor/Cargo.toml"));
    let _ = writeln!(
        body,
        "`nanoclaw` at this commit depends directly on: {}. The size target is for the finished \
         binary (eBPF loading, bundle signatures, TLS to the fleet): what is not in this list yet \
         will add to it.\n",
        if deps.is_empty() {
            "(could not read supervisor/Cargo.toml)".to_owned()
        } else {
            deps.join(", ")
        }
    );
    let _ = writeln!(
        body,
        "Release profile: LTO, `codegen-units = 1`, `panic = \"abort\"`, `opt-level = \"z\"` \
         (`sha2` at `\"s\"`), stripped; musl, statically linked.\n\n\
         | target | `nanoclaw` | static | `demo-agent` | command |\n|---|---|---|---|---|"
    );
    for triple in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        let cmd = format!(
            "`cargo build --release --target {triple} -p nanoclaw -p nanoclaw-demo-agent && stat -c %s target/{triple}/release/nanoclaw`"
        );
        let bins = if triple == util::host_target() {
            Ok(ctx.bins.clone())
        } else {
            build(triple)
        };
        match bins {
            Ok(b) => {
                let size = fs::metadata(&b.nanoclaw)
                    .map_err(|e| format!("{}: {e}", b.nanoclaw.display()))?
                    .len();
                let agent = fs::metadata(&b.demo_agent).map_or(0, |m| m.len());
                let linkage = match elf_is_static(&b.nanoclaw) {
                    Some(true) => "yes (no PT_INTERP)",
                    Some(false) => "**no** (has PT_INTERP)",
                    None => "unknown",
                };
                let _ = writeln!(
                    body,
                    "| {triple} | {size} B ({}) | {linkage} | {agent} B | {cmd} |",
                    mib(size)
                );
                let arch = triple.split('-').next().unwrap_or(triple);
                targets.push(target(
                    &format!("static binary, {arch} musl, stripped"),
                    "≤ 4 MiB",
                    mib(size),
                    Some(size <= 4 << 20),
                ));
            }
            Err(e) => {
                let _ = writeln!(
                    body,
                    "| {triple} | build failed: {} | | | {cmd} |",
                    e.lines().next().unwrap_or("").replace('|', "\\|")
                );
                targets.push(target(
                    &format!("static binary, {triple}"),
                    "≤ 4 MiB",
                    "build failed".into(),
                    None,
                ));
            }
        }
    }
    match verifier_share(ctx) {
        Ok((verifier, total, per_crate)) => {
            let _ = writeln!(
                body,
                "\nWhat offline bundle verification costs: an unstripped build of the same \
                 binary (`CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=target/bench/unstripped \
                 cargo build --release --target x86_64-unknown-linux-musl -p nanoclaw`), symbol \
                 sizes from `nm --size-sort -S`, summed by the crate that names them. The crates \
                 only the Sigstore verifier uses ({}) hold **{} of {}** of named code and data \
                 ({:.0} %). A lower bound: after LTO, code inlined into `nanoclaw::` or `core::` \
                 symbols is not counted. Largest: {}.",
                VERIFIER_CRATES.join(", "),
                kib(verifier as f64),
                kib(total as f64),
                verifier as f64 * 100.0 / total.max(1) as f64,
                per_crate
            );
            targets.push(target(
                "offline Sigstore verifier's share of the binary (symbols, lower bound)",
                "measured",
                kib(verifier as f64),
                None,
            ));
        }
        Err(e) => {
            let _ = writeln!(body, "\nVerifier share not measured: {e}");
        }
    }
    Ok(Section {
        title: "Static binary size".into(),
        body,
        targets,
        busy: None,
    })
}

/// Crates linked only for Sigstore bundle verification (the P-256/Ed25519 code that policies
/// and grant tokens need too is not counted).
const VERIFIER_CRATES: [&str; 20] = [
    "sigstore_verify",
    "sigstore_types",
    "sigstore_bundle",
    "sigstore_crypto",
    "sigstore_merkle",
    "sigstore_rekor",
    "sigstore_trust_root",
    "sigstore_tsa",
    "x509_cert",
    "x509_tsp",
    "der",
    "spki",
    "cms",
    "const_oid",
    "p384",
    "jiff",
    "jiff_core",
    "webpki",
    "ryu_js",
    "tls_codec",
];

/// (verifier bytes, all named bytes, the five largest verifier crates) from an unstripped
/// x86_64 build.
fn verifier_share(ctx: &Ctx) -> Result<(u64, u64, String)> {
    let dir = ctx.root.join("target/bench/unstripped");
    util::output(
        util::cargo()
            .current_dir(ctx.root)
            .env("CARGO_PROFILE_RELEASE_STRIP", "false")
            .env("CARGO_TARGET_DIR", &dir)
            .args([
                "build",
                "--release",
                "--target",
                "x86_64-unknown-linux-musl",
                "-p",
                "nanoclaw",
            ]),
    )?;
    let bin = dir.join("x86_64-unknown-linux-musl/release/nanoclaw");
    let out = util::output(
        Command::new("nm")
            .args(["--size-sort", "-S", "--demangle=rust"])
            .arg(&bin),
    )?;
    let mut by_crate = std::collections::BTreeMap::<String, u64>::new();
    let mut total = 0;
    for line in out.lines() {
        let mut it = line.splitn(4, ' ');
        let (Some(_), Some(size), Some(_), Some(name)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let Ok(size) = u64::from_str_radix(size, 16) else {
            continue;
        };
        total += size;
        let name = name
            .trim_start_matches(['<', '&'])
            .trim_start_matches("mut ");
        if let Some((krate, _)) = name.split_once("::") {
            *by_crate.entry(krate.to_owned()).or_default() += size;
        }
    }
    let mut v: Vec<(u64, &str)> = VERIFIER_CRATES
        .iter()
        .map(|c| (by_crate.get(*c).copied().unwrap_or(0), *c))
        .collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.0));
    let verifier = v.iter().map(|x| x.0).sum();
    let top: Vec<String> = v
        .iter()
        .take(5)
        .map(|(n, c)| format!("`{c}` {}", kib(*n as f64)))
        .collect();
    Ok((verifier, total, top.join(", ")))
}

/// Names in the `[dependencies]` table of a Cargo.toml.
fn direct_dependencies(manifest: &Path) -> Vec<String> {
    let text = fs::read_to_string(manifest).unwrap_or_default();
    text.lines()
        .skip_while(|l| l.trim() != "[dependencies]")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| {
            let key = l.split('=').next()?.trim();
            let name = key.strip_suffix(".workspace").unwrap_or(key);
            (!name.is_empty() && !name.starts_with('#')).then(|| format!("`{name}`"))
        })
        .collect()
}

/// Whether an ELF file has no program interpreter (i.e. is statically linked).
fn elf_is_static(path: &Path) -> Option<bool> {
    let b = fs::read(path).ok()?;
    if b.get(..4)? != b"\x7fELF" || *b.get(4)? != 2 {
        return None;
    }
    let le = *b.get(5)? == 1;
    let rd = |off: usize, n: usize| -> Option<u64> {
        let s = b.get(off..off + n)?;
        Some(s.iter().enumerate().fold(0u64, |acc, (i, &x)| {
            let shift = if le { 8 * i } else { 8 * (n - 1 - i) };
            acc | (u64::from(x) << shift)
        }))
    };
    let phoff = rd(0x20, 8)? as usize;
    let phentsize = rd(0x36, 2)? as usize;
    let phnum = rd(0x38, 2)? as usize;
    for i in 0..phnum.min(256) {
        if rd(phoff + i * phentsize, 4)? == 3 {
            return Some(false);
        }
    }
    Some(true)
}

// ---------------------------------------------------------------------------------------------
// 2. Sandboxed start to exec

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Nanoclaw,
    Bwrap,
    Runc,
    Crun,
}

struct Peer {
    tool: Tool,
    name: &'static str,
    /// Whole-process wall time per start, ms.
    wall: Vec<f64>,
    /// nanoclaw only: the in-process `spawn_to_exec_us`, ms.
    exec: Vec<f64>,
}

struct StartSetup {
    nanoclaw: PathBuf,
    rootfs: PathBuf,
    bundle: PathBuf,
    runc_state: PathBuf,
    crun_state: PathBuf,
}

impl StartSetup {
    fn command(&self, tool: Tool, id: &str) -> Command {
        let agent = ["/bin/demo-agent", "exit", "0"];
        match tool {
            Tool::Nanoclaw => {
                let mut c = Command::new(&self.nanoclaw);
                c.arg("run")
                    .arg("--rootfs")
                    .arg(&self.rootfs)
                    .args(["--timing", "--"])
                    .args(agent);
                c
            }
            Tool::Bwrap => {
                let mut c = Command::new("bwrap");
                c.args(["--unshare-all", "--die-with-parent", "--ro-bind"])
                    .arg(&self.rootfs)
                    .args(["/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
                    .args(["--new-session", "--cap-drop", "ALL"])
                    .args(["--uid", &UID.to_string(), "--gid", &UID.to_string(), "--"])
                    .args(agent);
                c
            }
            Tool::Runc | Tool::Crun => {
                let (bin, state) = if tool == Tool::Runc {
                    ("runc", &self.runc_state)
                } else {
                    ("crun", &self.crun_state)
                };
                let mut c = Command::new(bin);
                c.arg("--root")
                    .arg(state)
                    .arg("run")
                    .arg("--bundle")
                    .arg(&self.bundle)
                    .arg(id);
                c
            }
        }
    }

    /// Removes a runc/crun container if it is still there (untimed; `run` deletes it itself).
    fn delete(&self, tool: Tool, id: &str) {
        let (bin, state) = match tool {
            Tool::Runc => ("runc", &self.runc_state),
            Tool::Crun => ("crun", &self.crun_state),
            _ => return,
        };
        let _ = Command::new(bin)
            .arg("--root")
            .arg(state)
            .args(["delete", "-f", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn bench_start(ctx: &Ctx, runs: usize) -> Result<Section> {
    let rootfs = make_rootfs(&ctx.dir.join("rootfs"), &ctx.bins.demo_agent)?;
    let bundle = ctx.dir.join("oci");
    fs::create_dir_all(&bundle).map_err(|e| format!("creating {}: {e}", bundle.display()))?;
    let syscalls = nanoclaw_default_syscalls(ctx.root);
    let config = oci_config(&rootfs, &format!("/{}/oci", ctx.tag), &syscalls);
    fs::write(bundle.join("config.json"), &config)
        .map_err(|e| format!("writing the OCI config: {e}"))?;
    let setup = StartSetup {
        nanoclaw: ctx.bins.nanoclaw.clone(),
        rootfs: rootfs.clone(),
        bundle: bundle.clone(),
        runc_state: ctx.dir.join("runc-state"),
        crun_state: ctx.dir.join("crun-state"),
    };

    let mut peers = vec![Peer {
        tool: Tool::Nanoclaw,
        name: "nanoclaw run",
        wall: Vec::new(),
        exec: Vec::new(),
    }];
    let mut notes = Vec::new();
    for (tool, name, bin) in [
        (Tool::Bwrap, "bwrap", "bwrap"),
        (Tool::Runc, "runc run", "runc"),
        (Tool::Crun, "crun run", "crun"),
    ] {
        if which(bin).is_none() {
            notes.push(format!(
                "`{bin}` is not installed (`apt-get install {}`), so it is not compared.",
                if bin == "bwrap" { "bubblewrap" } else { bin }
            ));
            continue;
        }
        // One probe start: a peer that cannot run here is reported with its error.
        let id = format!("{}-probe-{bin}", ctx.tag);
        let out = setup.command(tool, &id).output();
        setup.delete(tool, &id);
        match out {
            Ok(o) if o.status.success() => peers.push(Peer {
                tool,
                name,
                wall: Vec::new(),
                exec: Vec::new(),
            }),
            Ok(o) => notes.push(format!(
                "`{bin}` refuses to run here: `{bin} --root target/bench/{bin}-state run --bundle {} ID` \
                 fails ({}) with `{}`",
                ctx.rel(&bundle),
                o.status,
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .replace('\n', " / ")
                    .replace('`', "'")
            )),
            Err(e) => notes.push(format!("`{bin}` cannot be started: {e}")),
        }
    }

    // First, before anything else warms the kernel: the cost of the first v1 migration.
    let probe = migration_probe(ctx);

    measure(&setup, &mut peers, runs, &ctx.tag)?;

    // The same interleaved series with the host's cgroup2 `favordynmods` option on, which is
    // what a device gets with `cgroup_favordynmods: true` in device.json (the option is
    // host-wide, so every peer runs under it too). Restored afterwards.
    let fdm = FavorDynmods::enable(&ctx.bins.nanoclaw)?;
    let mut fast: Vec<Peer> = peers
        .iter()
        .map(|p| Peer {
            tool: p.tool,
            name: p.name,
            wall: Vec::new(),
            exec: Vec::new(),
        })
        .collect();
    let fast_result = match &fdm {
        Some(_) => measure(&setup, &mut fast, runs, &format!("{}-fdm", ctx.tag)),
        None => Ok(()),
    };
    if let Some(f) = fdm {
        f.restore();
    }
    fast_result?;

    let rootfs_rel = ctx.rel(&rootfs);
    let nc = ctx.rel(&ctx.bins.nanoclaw);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "Each tool starts `/bin/demo-agent exit 0` (a static binary) in a fresh sandbox whose root \
         is `{rootfs_rel}` read-only, as uid {UID}. {WARMUP} warm-up starts per tool are discarded, \
         then {runs} measured starts per tool, interleaved (nanoclaw, bwrap, runc, nanoclaw, ...) \
         so that noise hits every tool alike, each after {} ms idle (so no start profits from \
         the kernel state the previous one left; see the probe below). Whole-process wall time is measured by the harness \
         around `Command::output()` (fork+exec of the tool until it has exited and its pipes are \
         drained): it includes each tool's own setup and teardown.\n",
        GAP.as_millis()
    );
    let _ = writeln!(
        body,
        "| measurement | n | p50 ms | p99 ms | mean ms | min ms | max ms |\n|---|---|---|---|---|---|---|"
    );
    let row = |body: &mut String, what: &str, v: &[f64]| {
        if let Some(s) = stats(v) {
            let _ = writeln!(
                body,
                "| {what} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                s.n, s.p50, s.p99, s.mean, s.min, s.max
            );
        }
    };
    for p in &peers {
        if p.tool == Tool::Nanoclaw {
            row(
                &mut body,
                "nanoclaw, in process: clone3 → agent exec'd (`spawn_to_exec_us`)",
                &p.exec,
            );
            row(&mut body, "nanoclaw run, whole process", &p.wall);
        } else {
            row(&mut body, &format!("{}, whole process", p.name), &p.wall);
        }
    }
    let _ = writeln!(body, "\nCommands (one start each):\n");
    let _ = writeln!(
        body,
        "- nanoclaw (prints `spawn_to_exec_us N` on stderr): `{nc} run --rootfs {rootfs_rel} --timing -- /bin/demo-agent exit 0`"
    );
    if peers.iter().any(|p| p.tool == Tool::Bwrap) {
        let _ = writeln!(
            body,
            "- bwrap: `bwrap --unshare-all --die-with-parent --ro-bind {rootfs_rel} / --proc /proc --dev /dev --tmpfs /tmp --new-session --cap-drop ALL --uid {UID} --gid {UID} -- /bin/demo-agent exit 0`"
        );
    }
    for (tool, bin) in [(Tool::Runc, "runc"), (Tool::Crun, "crun")] {
        if peers.iter().any(|p| p.tool == tool) {
            let _ = writeln!(
                body,
                "- {bin}: `{bin} --root target/bench/{bin}-state run --bundle {} ID` (a new ID per start; `{bin} run` removes the container when it exits)",
                ctx.rel(&bundle)
            );
        }
    }
    let _ = writeln!(
        body,
        "\nWhat each one sets up:\n\n\
         - **nanoclaw run**: `clone3` into new mount, PID, IPC, UTS, network and cgroup namespaces \
         (`CLONE_INTO_CGROUP` for the cgroup2 dir), a throwaway cgroup with memory 64 MiB, pids 32, \
         cpu 1.0 in the v1 memory/pids/cpu/freezer hierarchies (created before and removed after \
         the start, inside the whole-process time), re-exec as the sandbox init, read-only bind \
         root, `/proc`, a tmpfs `/dev` with 5 bind-mounted nodes, a 16 MiB tmpfs `/tmp`, \
         `pivot_root`, uid drop, no capabilities, rlimits, `no_new_privs`, Landlock and a \
         default-deny seccomp filter, then exec. `spawn_to_exec_us` runs from just before \
         `clone3` to the init's report that the agent exec'd (so it includes placing the init \
         in its v1 cgroups, all mounts, Landlock and seccomp), not the cgroup creation before it.\n\
         - **bwrap**: all namespaces (including a user namespace), the same read-only root, \
         `/proc`, its own minimal `/dev`, a tmpfs `/tmp`, all capabilities dropped. **No cgroup** \
         (bwrap has none), no seccomp filter (none given), no Landlock.\n\
         - **runc**: `{}/config.json`, written by the harness: `runc spec` defaults (masked and \
         read-only `/proc` paths, default devices, `noNewPrivileges`, RLIMIT_NOFILE 1024), \
         with readonly root = the same rootfs, args `/bin/demo-agent exit 0`, `terminal: false`, \
         uid/gid {UID}, no capabilities, pid/mount/ipc/uts/network/cgroup namespaces, mounts \
         reduced to `/proc`, a tmpfs `/dev` and a 16 MiB tmpfs `/tmp` (like nanoclaw's), memory \
         64 MiB (memory+swap 64 MiB), pids 32, cpu 1.0 in `cgroupsPath` \
         `/{}/oci/<id>`, and a default-deny (`EPERM`) seccomp filter allowing \
         {} syscalls: nanoclaw's `default` profile, read from \
         supervisor/src/sandbox/seccomp.rs, plus `clone`, `socket`, `ioctl`, `personality` \
         (nanoclaw filters their arguments). No Landlock.\n",
        ctx.rel(&bundle),
        ctx.tag,
        syscalls.len(),
    );
    for n in &notes {
        let _ = writeln!(body, "{n}\n");
    }
    if peers.iter().all(|p| p.tool != Tool::Crun) {
        let _ = writeln!(
            body,
            "DESIGN.md §7 notes that crun 1.8.1 refuses hybrid cgroup hosts; see the line above for what it said in this run.\n"
        );
    }

    if fast.iter().any(|p| !p.wall.is_empty()) {
        let _ = writeln!(
            body,
            "\n### With `cgroup_favordynmods: true`\n\n\
             The same {runs} interleaved starts per tool with the host's cgroup2 mount remounted \
             `favordynmods` (`{nc} favordynmods on`, restored afterwards), which is what the daemon \
             does when device.json sets `cgroup_favordynmods: true`. The option is host-wide, so \
             every peer ran under it too. It keeps the kernel's cgroup threadgroup rwsem from \
             waiting for an RCU grace period on every process migration (see the probe below); \
             on pure cgroup v2 `CLONE_INTO_CGROUP` avoids the migration altogether.\n\n\
             | measurement | n | p50 ms | p99 ms | mean ms | min ms | max ms |\n|---|---|---|---|---|---|---|"
        );
        for p in &fast {
            if p.tool == Tool::Nanoclaw {
                row(
                    &mut body,
                    "nanoclaw, in process (`spawn_to_exec_us`), favordynmods",
                    &p.exec,
                );
                row(
                    &mut body,
                    "nanoclaw run, whole process, favordynmods",
                    &p.wall,
                );
            } else {
                row(
                    &mut body,
                    &format!("{}, whole process, favordynmods", p.name),
                    &p.wall,
                );
            }
        }
    }
    match probe {
        Ok(Some(text)) => body.push_str(&text),
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(body, "\nThe cgroup v1 migration probe failed: {e}\n");
        }
    }

    let mut targets = Vec::new();
    for (set, label) in [(&peers, "host default"), (&fast, "cgroup_favordynmods")] {
        let nano = set.iter().find(|p| p.tool == Tool::Nanoclaw);
        let exec = nano.and_then(|p| stats(&p.exec));
        let wall = nano.and_then(|p| stats(&p.wall));
        if let Some(e) = &exec {
            targets.push(target(
                &format!("sandboxed start to exec, p50 (in process, all mechanisms; {label})"),
                "≤ 5 ms",
                format!("{:.2} ms (p99 {:.2} ms)", e.p50, e.p99),
                Some(e.p50 <= 5.0),
            ));
        }
        if let Some(w) = &wall {
            for p in set.iter().filter(|p| p.tool != Tool::Nanoclaw) {
                if let Some(s) = stats(&p.wall) {
                    targets.push(target(
                        &format!(
                            "start, whole process, p50: nanoclaw run vs {} ({label})",
                            p.name
                        ),
                        "faster",
                        format!("{:.2} ms vs {:.2} ms", w.p50, s.p50),
                        Some(w.p50 < s.p50),
                    ));
                }
            }
        }
    }
    Ok(Section {
        title: "Sandboxed start to exec".into(),
        body,
        targets,
        busy: None,
    })
}

/// One start; returns the whole-process wall time and nanoclaw's `spawn_to_exec_us`, in ms.
fn start_once(setup: &StartSetup, tool: Tool, id: &str) -> Result<(f64, Option<f64>)> {
    let mut cmd = setup.command(tool, id);
    let t = Instant::now();
    let out = cmd.output();
    let wall = ms(t.elapsed());
    setup.delete(tool, id);
    let out = out.map_err(|e| format!("cannot run {}: {e}", util::show(&cmd)))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            util::show(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if tool != Tool::Nanoclaw {
        return Ok((wall, None));
    }
    let us = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("spawn_to_exec_us "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or("nanoclaw run --timing printed no spawn_to_exec_us line")?;
    Ok((wall, Some(us / 1000.0)))
}

/// Turns the host's cgroup2 `favordynmods` option on through `nanoclaw favordynmods` and puts
/// the previous state back on `restore`.
struct FavorDynmods {
    nanoclaw: PathBuf,
    was_on: bool,
}

impl FavorDynmods {
    /// `None` when there is no cgroup2 mount to change.
    fn enable(nanoclaw: &Path) -> Result<Option<FavorDynmods>> {
        let state = crate::util::output(Command::new(nanoclaw).arg("favordynmods"))?;
        let was_on = match state.trim() {
            "on" => true,
            "off" => false,
            _ => return Ok(None),
        };
        crate::util::output(Command::new(nanoclaw).args(["favordynmods", "on"]))?;
        Ok(Some(FavorDynmods {
            nanoclaw: nanoclaw.to_path_buf(),
            was_on,
        }))
    }

    fn restore(self) {
        if !self.was_on {
            let _ = Command::new(&self.nanoclaw)
                .args(["favordynmods", "off"])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// Starts every peer `WARMUP + runs` times, interleaved.
fn measure(setup: &StartSetup, peers: &mut [Peer], runs: usize, tag: &str) -> Result {
    // Interleaved, so that noise on the shared host hits every tool alike, with an idle gap
    // so that no start profits from kernel state the previous one left (see the probe).
    for i in 0..WARMUP + runs {
        for p in peers.iter_mut() {
            std::thread::sleep(GAP);
            let (wall, exec) = start_once(setup, p.tool, &format!("{tag}-{i}"))?;
            if i >= WARMUP {
                p.wall.push(wall);
                p.exec.extend(exec);
            }
        }
    }
    Ok(())
}

/// A rootfs holding only `/bin/demo-agent` and the mount points.
fn make_rootfs(dir: &Path, demo_agent: &Path) -> Result<PathBuf> {
    for d in ["bin", "proc", "dev", "tmp"] {
        fs::create_dir_all(dir.join(d))
            .map_err(|e| format!("creating {}: {e}", dir.join(d).display()))?;
    }
    let dst = dir.join("bin").join("demo-agent");
    let _ = fs::remove_file(&dst);
    fs::copy(demo_agent, &dst)
        .map_err(|e| format!("copying {} to {}: {e}", demo_agent.display(), dst.display()))?;
    Ok(dir.to_path_buf())
}

/// Syscall names of nanoclaw's `default` seccomp profile for this architecture, parsed from
/// the source so the runc peer gets the same allowlist; plus the argument-filtered ones.
fn nanoclaw_default_syscalls(root: &Path) -> Vec<String> {
    let src =
        fs::read_to_string(root.join("supervisor/src/sandbox/seccomp.rs")).unwrap_or_default();
    let arch = std::env::consts::ARCH;
    let mut names: Vec<String> = Vec::new();
    let mut take = |block: &str| {
        let body = block.split("];").next().unwrap_or("");
        for tok in body.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(n) = tok.strip_prefix("SYS_")
                && !n.is_empty()
            {
                names.push(n.to_owned());
            }
        }
    };
    for (i, _) in src.match_indices("const DEFAULT_COMMON") {
        take(&src[i..]);
    }
    for (i, _) in src.match_indices("const DEFAULT_ARCH") {
        let before = &src[i.saturating_sub(200)..i];
        let cfg = before.rfind("target_arch = \"").map(|j| &before[j + 15..]);
        if cfg.is_some_and(|c| c.starts_with(arch)) {
            take(&src[i..]);
        }
    }
    if names.len() < 50 {
        return Vec::new();
    }
    names.extend(["clone", "socket", "ioctl", "personality"].map(String::from));
    names.sort();
    names.dedup();
    names
}

/// An OCI config: `runc spec` defaults, edited to match `nanoclaw run`.
fn oci_config(rootfs: &Path, cgroups_path: &str, syscalls: &[String]) -> String {
    let seccomp_arch = match std::env::consts::ARCH {
        "aarch64" => "SCMP_ARCH_AARCH64",
        _ => "SCMP_ARCH_X86_64",
    };
    let seccomp = if syscalls.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = syscalls.iter().map(|s| jstr(s)).collect();
        format!(
            r#",
    "seccomp": {{
      "defaultAction": "SCMP_ACT_ERRNO",
      "defaultErrnoRet": 1,
      "architectures": ["{seccomp_arch}"],
      "syscalls": [{{ "names": [{}], "action": "SCMP_ACT_ALLOW" }}]
    }}"#,
            names.join(", ")
        )
    };
    format!(
        r#"{{
  "ociVersion": "1.0.2-dev",
  "process": {{
    "terminal": false,
    "user": {{ "uid": {UID}, "gid": {UID} }},
    "args": ["/bin/demo-agent", "exit", "0"],
    "env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin", "HOME=/tmp", "TMPDIR=/tmp"],
    "cwd": "/",
    "capabilities": {{ "bounding": [], "effective": [], "permitted": [], "ambient": [] }},
    "rlimits": [{{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }}],
    "noNewPrivileges": true
  }},
  "root": {{ "path": {root}, "readonly": true }},
  "hostname": "bench",
  "mounts": [
    {{ "destination": "/proc", "type": "proc", "source": "proc" }},
    {{ "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
      "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }},
    {{ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
      "options": ["nosuid", "nodev", "size=16m", "mode=700", "uid={UID}", "gid={UID}"] }}
  ],
  "linux": {{
    "cgroupsPath": {cg},
    "resources": {{
      "devices": [{{ "allow": false, "access": "rwm" }}],
      "memory": {{ "limit": 67108864, "swap": 67108864 }},
      "pids": {{ "limit": 32 }},
      "cpu": {{ "quota": 100000, "period": 100000 }}
    }},
    "namespaces": [
      {{ "type": "pid" }}, {{ "type": "network" }}, {{ "type": "ipc" }},
      {{ "type": "uts" }}, {{ "type": "mount" }}, {{ "type": "cgroup" }}
    ],
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
      "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
      "/sys/firmware", "/proc/scsi"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]{seccomp}
  }}
}}
"#,
        root = jstr(&rootfs.display().to_string()),
        cg = jstr(cgroups_path),
    )
}

/// Times moving a process into the v1 hierarchies `nanoclaw` uses, in nanoclaw's order: the
/// first write of a start waits for an RCU grace period (cgroup_threadgroup_rwsem), the rest
/// are cheap. `CLONE_INTO_CGROUP` (cgroup v2) avoids it.
fn migration_probe(ctx: &Ctx) -> Result<Option<String>> {
    const REPS: usize = 40;
    let hier: Vec<PathBuf> = ["memory", "pids", "cpu", "freezer"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c))
        .filter(|p| p.join("cgroup.procs").exists() && !p.join("cgroup.controllers").exists())
        .collect();
    if hier.is_empty() {
        return Ok(None);
    }
    let dirs: Vec<PathBuf> = hier
        .iter()
        .map(|h| h.join(format!("{}-probe", ctx.tag)))
        .collect();
    for d in &dirs {
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for _ in 0..REPS {
        let mut child = Command::new(&ctx.bins.demo_agent)
            .arg("sleep")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting demo-agent sleep: {e}"))?;
        let pid = child.id().to_string();
        let mut res = Ok(());
        for (i, d) in dirs.iter().enumerate() {
            let t = Instant::now();
            if let Err(e) = fs::write(d.join("cgroup.procs"), &pid) {
                res = Err(format!("writing {}: {e}", d.join("cgroup.procs").display()));
                break;
            }
            let took = ms(t.elapsed());
            if i == 0 { &mut first } else { &mut rest }.push(took);
        }
        let _ = child.kill();
        let _ = child.wait();
        res?;
        std::thread::sleep(GAP);
    }
    let (Some(f), Some(r)) = (stats(&first), stats(&rest)) else {
        return Ok(None);
    };
    let names: Vec<String> = hier
        .iter()
        .filter_map(|h| h.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    Ok(Some(format!(
        "\n### Where nanoclaw's start time goes on this host\n\n\
         On a cgroup v1 (hybrid) host the init must be moved into its v1 cgroups by writing its pid \
         to `cgroup.procs` ({names}, in that order); only the cgroup2 directory is entered \
         atomically by `clone3(CLONE_INTO_CGROUP)`. The harness timed the same writes for a \
         `demo-agent sleep` process, {REPS} times, {} ms apart, before any other start of this section:\n\n\
         | write | p50 ms | p99 ms |\n|---|---|---|\n\
         | first hierarchy ({first_name}) | {:.2} | {:.2} |\n\
         | each later one | {:.3} | {:.3} |\n\n\
         Writing `cgroup.procs` write-locks the kernel's global `cgroup_threadgroup_rwsem`, a \
         per-CPU rwsem whose writer waits for an RCU grace period unless another writer released \
         it within about one grace period (Linux 6.0, commit 6a010a49b63a); the later writes of \
         the same start fall in that window. `CLONE_INTO_CGROUP` seeds a cgroup without taking \
         the rwsem, so on a pure cgroup v2 host (the VM tier) a start has no migration at all. \
         Hosts that must migrate can trade this wait for slightly slower fork/exit with the \
         `favordynmods` cgroup2 mount option or `cgroup_favordynmods=1` on the kernel command \
         line (6.7+, also covers v1); the first series above leaves the host as it is, the second turns `favordynmods` on and restores it. \
         Reproduce one write: `mkdir /sys/fs/cgroup/memory/nanoclaw-probe; sleep 60 & \
         time sh -c \"echo $! > /sys/fs/cgroup/memory/nanoclaw-probe/cgroup.procs\"` \
         (then `kill $!; rmdir /sys/fs/cgroup/memory/nanoclaw-probe`).\n",
        GAP.as_millis(),
        f.p50,
        f.p99,
        r.p50,
        r.p99,
        names = names.join(", "),
        first_name = names.first().map_or("", String::as_str),
    )))
}

// ---------------------------------------------------------------------------------------------
// Daemon harness (memory and OOM sections)

/// A `nanoclaw daemon` this harness started; stopped with SIGTERM (killed only if that fails).
struct Daemon {
    child: Option<Child>,
    pid: u32,
    nanoclaw: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

struct Bundle<'a> {
    name: String,
    exec: &'a [&'a str],
    /// Granted (and requested) endpoints, `ip:port/proto`.
    network: &'a [String],
    memory: &'a str,
    pids: u32,
    cpus: f64,
    restart: &'a str,
    /// More grant keys, e.g. `, "on_violation": [...]`.
    grant_extra: &'a str,
}

/// Writes device.json, policy.json and one bundle per agent under `dir` (wiped first) and
/// returns the device.json path.
fn write_device(ctx: &Ctx, dir: &Path, subtree: &str, bundles: &[Bundle]) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(dir);
    let agents = dir.join("agents");
    fs::create_dir_all(&agents).map_err(|e| format!("creating {}: {e}", agents.display()))?;
    let mut grants = Vec::new();
    for b in bundles {
        let bdir = agents.join(&b.name);
        make_rootfs(&bdir.join("rootfs"), &ctx.bins.demo_agent)?;
        let exec: Vec<String> = b.exec.iter().map(|s| jstr(s)).collect();
        let manifest = format!(
            r#"{{ "name": {name}, "version": "0.1.0", "mode": "service",
  "exec": [{exec}],
  "requests": {{ "memory": "{mem}", "cpus": {cpus}, "pids": {pids}, "scratch": "1MiB", "syscalls": "default", "network": {net} }},
  "restart": {restart} }}
"#,
            name = jstr(&b.name),
            net = Json::from(b.network.to_vec()),
            exec = exec.join(", "),
            mem = b.memory,
            cpus = b.cpus,
            pids = b.pids,
            restart = b.restart,
        );
        write(&bdir.join("manifest.json"), &manifest)?;
        grants.push(format!(
            r#"    {name}: {{ "memory": "{mem}", "cpus": {cpus}, "pids": {pids}, "scratch": "1MiB", "syscalls": "default", "network": {net}{extra} }}"#,
            name = jstr(&b.name),
            net = Json::from(b.network.to_vec()),
            extra = b.grant_extra,
            mem = b.memory,
            cpus = b.cpus,
            pids = b.pids,
        ));
    }
    let policy = format!(
        "{{\n  \"version\": 1,\n  \"signers\": [ {{ \"agents\": \"*\", \"key\": \"keys/bench.pub\" }} ],\n  \"device\": {{ \"memory_reserve\": \"64MiB\" }},\n  \"agents\": {{\n{}\n  }}\n}}\n",
        grants.join(",\n")
    );
    write(&dir.join("policy.json"), &policy)?;
    let device = format!(
        r#"{{
  "state_dir": {state},
  "socket": {socket},
  "board": "sim",
  "agents_dir": {agents},
  "policy": {policy},
  "allow_local_policy": true,
  "allow_unsigned": true,
  "cgroup_subtree": {subtree},
  "uid_base": {UID_BASE},
  "max_agents": 64,
  "stop_grace_s": 2
}}
"#,
        state = jstr(&dir.join("state").display().to_string()),
        socket = jstr(&dir.join("ctl.sock").display().to_string()),
        agents = jstr(&agents.display().to_string()),
        policy = jstr(&dir.join("policy.json").display().to_string()),
        subtree = jstr(subtree),
    );
    let path = dir.join("device.json");
    write(&path, &device)?;
    Ok(path)
}

impl Daemon {
    fn start(nanoclaw: &Path, config: &Path) -> Result<Daemon> {
        let dir = config.parent().unwrap_or(Path::new("."));
        let socket = dir.join("ctl.sock");
        let log = dir.join("daemon.log");
        let logf =
            fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let logf2 = logf
            .try_clone()
            .map_err(|e| format!("duplicating the log fd: {e}"))?;
        let child = Command::new(nanoclaw)
            .arg("daemon")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2)
            .spawn()
            .map_err(|e| format!("starting {} daemon: {e}", nanoclaw.display()))?;
        let d = Daemon {
            pid: child.id(),
            child: Some(child),
            nanoclaw: nanoclaw.to_path_buf(),
            socket,
            log,
        };
        Ok(d)
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        util::output(
            Command::new(&self.nanoclaw)
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
        )
    }

    fn json(&self, args: &[&str]) -> Result<Json> {
        parse_json(&self.cli(args)?)
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    fn alive(&mut self) -> Result {
        if let Some(c) = &mut self.child
            && let Ok(Some(st)) = c.try_wait()
        {
            self.child = None;
            return Err(format!(
                "the daemon exited ({st}); its log ends:\n{}",
                self.log_tail()
            ));
        }
        Ok(())
    }

    /// Polls the latest `n` lines of `agent`'s output until `f` finds what it waits for, at
    /// most until `deadline`.
    fn poll_logs<T>(
        &mut self,
        agent: &str,
        n: usize,
        deadline: Instant,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let n = n.to_string();
        loop {
            self.alive()?;
            let logs = self.cli(&["logs", agent, "-n", &n]).unwrap_or_default();
            if let Some(t) = f(&logs) {
                return Ok(t);
            }
            if Instant::now() > deadline {
                return Err(format!("{agent} did not report: {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `n` agents are listed and all are running; returns them.
    fn wait_running(&mut self, n: usize, timeout: Duration) -> Result<Vec<Json>> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.alive()?;
            match self.json(&["agents", "--json"]) {
                Ok(Json::Array(v)) => {
                    let running = v
                        .iter()
                        .filter(|a| a.str("state") == Some("running") && a.num("pid").is_some())
                        .count();
                    if v.len() == n && running == n {
                        return Ok(v);
                    }
                    last = format!("{running} of {} agents running", v.len());
                }
                Ok(_) => last = "agents --json did not print an array".into(),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "agents not all running after {} s ({last}); daemon log ends:\n{}",
            timeout.as_secs(),
            self.log_tail()
        ))
    }

    /// SIGTERM, then waits for the exit status.
    fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err("the daemon is not running".into());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("the daemon did not exit within 30 s of SIGTERM; killed it".into())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Syscall monitoring overhead

/// `syscall-loop: N calls in T ns` lines → ns per call.
fn ns_per_call(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            let rest = l.split("syscall-loop: ").nth(1)?;
            let mut w = rest.split_whitespace();
            let calls: f64 = w.next()?.parse().ok()?;
            let ns: f64 = w.nth(2)?.parse().ok()?;
            Some(ns / calls)
        })
        .collect()
}

const SAMPLE_ON: u32 = 2;
const SAMPLE_EVERY: u32 = 60;

/// ns/call of every round of a long getppid loop in an agent under a daemon, with sampled
/// monitoring (the loop starts once the agent's baseline is learned) or with monitoring off
/// (`sampled` false), so both sides run the same way.
fn agent_loop(ctx: &Ctx, sampled: bool, rounds_n: usize) -> Result<Vec<f64>> {
    let rounds = rounds_n.to_string();
    let tag = if sampled { "sampled" } else { "unmonitored" };
    let cmd = [
        "/bin/demo-agent",
        "wait-file",
        "/go",
        "syscall-loop",
        "1000000",
        rounds.as_str(),
    ];
    let dir = ctx.dir.join(format!("monitor-{tag}"));
    let bundles = [Bundle {
        name: "sampled".into(),
        network: &[],
        exec: &cmd,
        memory: "16MiB",
        pids: 8,
        cpus: 1.0,
        restart: r#"{ "policy": "never" }"#,
        grant_extra: "",
    }];
    let config = write_device(ctx, &dir, &format!("{}-{tag}", ctx.tag), &bundles)?;
    let text = fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    let extra = if sampled {
        format!(
            "\"stop_grace_s\": 2,\n  \"syscall_baseline_s\": 2,\n  \"syscall_sampling\": {{ \"on_s\": {SAMPLE_ON}, \"every_s\": {SAMPLE_EVERY} }}"
        )
    } else {
        "\"stop_grace_s\": 2,\n  \"syscall_monitor\": false".to_owned()
    };
    write(&config, &text.replace("\"stop_grace_s\": 2", &extra))?;
    let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Sampling starts once the baseline is learned (learning counts continuously).
    let mut learned = !sampled;
    while !learned {
        d.alive()?;
        let audit = d
            .cli(&["audit", "--agent", "sampled", "-n", "50"])
            .unwrap_or_default();
        learned = audit.contains("learned the syscall baseline");
        if !learned && Instant::now() > deadline {
            return Err(format!("no baseline learned: {}", d.log_tail()));
        }
        if !learned {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    write(&dir.join("agents/sampled/rootfs/go"), "go")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let v = d.poll_logs("sampled", 1000, deadline, |logs| {
        Some(ns_per_call(logs)).filter(|v| v.len() >= rounds_n)
    })?;
    d.stop()?;
    Ok(v)
}

fn bench_monitor(ctx: &Ctx) -> Result<Section> {
    const CALLS: &str = "1000000";
    const ROUNDS: usize = 9;
    let rounds = ROUNDS.to_string();
    let cmd = ["/bin/demo-agent", "syscall-loop", CALLS, rounds.as_str()];
    let dir = ctx.dir.join("monitor");
    let bundles = [Bundle {
        name: "looper".into(),
        network: &[],
        exec: &cmd,
        memory: "16MiB",
        pids: 8,
        cpus: 1.0,
        restart: r#"{ "policy": "never" }"#,
        grant_extra: "",
    }];
    let config = write_device(ctx, &dir, &format!("{}-monitor", ctx.tag), &bundles)?;
    let rootfs = make_rootfs(&ctx.dir.join("monitor-rootfs"), &ctx.bins.demo_agent)?;
    let oneshot = || -> Result<Vec<f64>> {
        let out = util::output(
            Command::new(&ctx.bins.nanoclaw)
                .arg("run")
                .arg("--rootfs")
                .arg(&rootfs)
                .arg("--")
                .args(cmd),
        )?;
        Ok(ns_per_call(&out))
    };

    let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let monitored = d.poll_logs("looper", 100, deadline, |logs| {
        Some(ns_per_call(logs)).filter(|v| v.len() >= ROUNDS)
    })?;
    let posture = d
        .json(&["status", "--json"])
        .ok()
        .and_then(|s| s["posture"]["syscall_monitor"].as_str().map(str::to_owned))
        .unwrap_or_default();
    // The tracepoint is attached (the daemon runs) but this sandbox is not an agent of ours.
    let bystander = oneshot()?;
    d.stop()?;
    let sampled = agent_loop(ctx, true, 450)?;
    let unmonitored = agent_loop(ctx, false, 60)?;
    // No tracepoint at all.
    let baseline = oneshot()?;
    let (Some(m), Some(b), Some(o)) = (stats(&monitored), stats(&baseline), stats(&bystander))
    else {
        return Err("no loop timings".into());
    };
    let overhead = (m.p50 / b.p50 - 1.0) * 100.0;
    let base_mean = unmonitored.iter().sum::<f64>() / unmonitored.len().max(1) as f64;
    let s_mean = sampled.iter().sum::<f64>() / sampled.len().max(1) as f64;
    let s_overhead = (s_mean / base_mean - 1.0) * 100.0;
    let nc = ctx.rel(&ctx.bins.nanoclaw);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "A syscall-heavy loop inside a sandbox: `demo-agent syscall-loop {CALLS} {ROUNDS}` calls \
         getppid(2) {CALLS} times per round, {ROUNDS} rounds; ns per call, median over rounds. \
         Monitoring is the daemon's eBPF raw tracepoint `sys_enter` ({posture}), which runs for \
         every syscall on the machine and counts only nanoclaw's agents. While any `sys_enter` \
         probe is attached the kernel sends every task's syscalls through its slower entry path \
         (the middle row: a sandbox that is not monitored pays it too); device.json \
         `syscall_monitor: false` turns monitoring off.\n\n\
         | configuration | rounds | p50 ns/call | min | max |\n|---|---|---|---|---|\n\
         | agent under `nanoclaw daemon`, monitored | {} | {:.1} | {:.1} | {:.1} |\n\
         | `nanoclaw run` while the daemon runs (tracepoint attached, not an agent) | {} | {:.1} | {:.1} | {:.1} |\n\
         | `nanoclaw run`, no daemon (no tracepoint) | {} | {:.1} | {:.1} | {:.1} |\n\n\
         Overhead of monitoring: **{overhead:.1} %**.\n\n\
         **Sampled monitoring** (device.json `\"syscall_sampling\": {{ \"on_s\": {SAMPLE_ON}, \"every_s\": {SAMPLE_EVERY} }}`): \
         after the agent's baseline is learned the tracepoint is attached {SAMPLE_ON} s of every \
         {SAMPLE_EVERY} s. The same loop, {} rounds (about {:.0} s, several sampling periods), \
         mean ns/call {s_mean:.1} vs {base_mean:.1} for the same agent under a daemon with \
         `syscall_monitor: false` ({} rounds, mean): **{s_overhead:.1} %** \
         averaged over time; inside a window a call costs as in the first row. Reproduce: \
         `cargo xtask bench --only monitor` (device config in `target/bench/monitor-sampled`).\n\n\
         Reproduce: `{nc} daemon --config {}` (agent `looper`; `{nc} --socket {} logs looper`), \
         then `{nc} run --rootfs {} -- {}` with and without the daemon running.\n",
        m.n,
        m.p50,
        m.min,
        m.max,
        o.n,
        o.p50,
        o.min,
        o.max,
        b.n,
        b.p50,
        b.min,
        b.max,
        sampled.len(),
        sampled.iter().sum::<f64>() * 1e6 / 1e9,
        unmonitored.len(),
        ctx.rel(&config),
        ctx.rel(&dir.join("ctl.sock")),
        ctx.rel(&rootfs),
        cmd.join(" "),
    );
    Ok(Section {
        title: "Syscall monitoring overhead".into(),
        body,
        targets: vec![
            target(
                "syscall overhead of BPF monitoring, continuous (getppid loop)",
                "≤ 10 %",
                format!("{overhead:.1} % ({:.1} vs {:.1} ns/call)", m.p50, b.p50),
                Some(overhead <= 10.0),
            ),
            target(
                &format!(
                    "syscall overhead of BPF monitoring, sampled {SAMPLE_ON} s / {SAMPLE_EVERY} s (time average)"
                ),
                "≤ 10 %",
                format!("{s_overhead:.1} % ({s_mean:.1} vs {base_mean:.1} ns/call)"),
                Some(s_overhead <= 10.0),
            ),
        ],
        busy: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Egress control: connect() cost and map memory

/// `connect-time: N connects in T ns` → µs per connect.
fn us_per_connect(text: &str) -> Option<f64> {
    let rest = text
        .lines()
        .find_map(|l| l.split("connect-time: ").nth(1))?;
    let mut w = rest.split_whitespace();
    let n: f64 = w.next()?.parse().ok()?;
    let ns: f64 = w.nth(2)?.parse().ok()?;
    Some(ns / n / 1000.0)
}

fn bench_egress(ctx: &Ctx) -> Result<Section> {
    const N: &str = "5000";
    const DEST: &str = "127.0.0.1:1";
    const ROUNDS: usize = 5;
    // Host baseline: the same loop, no sandbox and no cgroup hook.
    let mut host = Vec::new();
    for _ in 0..ROUNDS {
        let out = util::output(Command::new(&ctx.bins.demo_agent).args(["connect-time", N, DEST]))?;
        host.extend(us_per_connect(&out));
    }
    let mut rows = Vec::new();
    let mut memlock = Vec::new();
    for rules in [1usize, 1000] {
        // The destination plus (rules - 1) other entries.
        let mut network = vec![format!("{DEST}/tcp")];
        network.extend((1..rules).map(|i| {
            format!(
                "10.{}.{}.{}:443/tcp",
                i / 65536 % 256,
                i / 256 % 256,
                i % 256
            )
        }));
        let cmd = ["/bin/demo-agent", "connect-time", N, DEST, "stay"];
        let names: Vec<String> = (0..ROUNDS).map(|r| format!("c{rules}x{r}")).collect();
        let bundles: Vec<Bundle> = names
            .iter()
            .map(|n| Bundle {
                name: n.clone(),
                network: &network,
                exec: &cmd,
                memory: "16MiB",
                pids: 8,
                cpus: 1.0,
                restart: r#"{ "policy": "never" }"#,
                grant_extra: "",
            })
            .collect();
        let dir = ctx.dir.join(format!("egress-{rules}"));
        let subtree = format!("{}-egress-{rules}", ctx.tag);
        let config = write_device(ctx, &dir, &subtree, &bundles)?;
        let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut v = Vec::new();
        for n in &names {
            v.push(d.poll_logs(n, 50, deadline, us_per_connect)?);
        }
        // Kernel memory of the pinned maps while the agents run with their rules, and again
        // once they are stopped (rules removed).
        let pins = Path::new("/sys/fs/bpf").join(&subtree);
        let bytes = map_memlock(&pins);
        for n in &names {
            d.cli(&["stop", n])?;
        }
        let idle = map_memlock(&pins);
        memlock.push((rules, bytes, idle, names.len()));
        d.stop()?;
        rows.push((rules, v));
    }
    let revoke = bench_revoke(ctx)?;
    let Some(h) = stats(&host) else {
        return Err("no host timings".into());
    };
    let mut body = format!(
        "`demo-agent connect-time {N} {DEST}`: {N} TCP connects to a closed loopback port (the \
         kernel answers with RST, so each is a full connect attempt); µs per connect, one round \
         per agent, {ROUNDS} agents. The agents hold `{DEST}/tcp` among N allow entries \
         (the others `10.x.y.z:443/tcp`), so every connect runs the `cgroup/connect4` program's \
         LPM lookups.\n\n| configuration | rounds | p50 µs/connect | min | max |\n|---|---|---|---|---|\n\
         | host process, no sandbox, no hook | {} | {:.1} | {:.1} | {:.1} |\n",
        h.n, h.p50, h.min, h.max
    );
    let mut targets = Vec::new();
    for (rules, v) in &rows {
        if let Some(s) = stats(v) {
            let _ = writeln!(
                body,
                "| agent, egress allowlist of {rules} entr{} | {} | {:.1} | {:.1} | {:.1} |",
                if *rules == 1 { "y" } else { "ies" },
                s.n,
                s.p50,
                s.min,
                s.max
            );
            if *rules == 1000 {
                targets.push(target(
                    "connect() with a 1,000-entry allowlist vs none (p50)",
                    "measured",
                    format!("{:.1} µs vs {:.1} µs", s.p50, h.p50),
                    None,
                ));
            }
        }
    }
    let _ = writeln!(
        body,
        "\nThe agent rows include everything an agent with network access carries: the connect4 \
         hook, the cgroup_skb accounting of each packet, seccomp and the syscall monitor (see \
         above). The maps are shared by all agents of one supervisor; `bpftool map show pinned …` \
         reports each map's memory as the kernel accounts it (`memlock`; the maps are \
         `BPF_F_NO_PREALLOC`, so entries are allocated as they are added), measured while the \
         agents run and again after they are stopped (their entries removed):\n\n\
         | agents | entries each | memlock, all maps, agents running | after stopping them |\n|---|---|---|---|"
    );
    for (rules, bytes, idle, agents) in &memlock {
        let _ = writeln!(
            body,
            "| {agents} | {rules} | {} | {} |",
            kib(*bytes as f64),
            kib(*idle as f64)
        );
    }
    if let [(_, b1, i1, n1), (r2, b2, _, n2)] = memlock.as_slice() {
        targets.push(target(
            "eBPF maps, whole supervisor with no agent / per agent (1 entry) / per allow entry",
            "follows the agent count",
            format!(
                "{} / {:.0} B / {:.0} B",
                kib(*i1 as f64),
                (*b1 as f64 - *i1 as f64) / *n1 as f64,
                (*b2 as f64 - *b1 as f64) / (*n2 as f64 * (*r2 as f64 - 1.0))
            ),
            None,
        ));
    }
    let _ = writeln!(
        body,
        "\n**Live revoke.** An agent holding `127.0.0.1:1/tcp` knocks three times on \
         `127.0.0.1:2` (denied) under a policy rule `on_violation: 3 denied_connects → \
         revoke_network`, then connects to its granted destination in a loop until the kernel \
         answers EPERM (`demo-agent revoke-probe`). The time from the third denial to the first \
         EPERM covers the ring buffer, the daemon's audit record (fsynced) and rule, and the \
         map update; the next connect after the update is refused (no restart, no reconnect \
         grace). {} agents, one after another:\n\n| | n | p50 | min | max |\n|---|---|---|---|---|",
        REVOKE_AGENTS
    );
    if let Some(s) = stats(&revoke) {
        let _ = writeln!(
            body,
            "| violation → revoked (ms) | {} | {:.2} | {:.2} | {:.2} |",
            s.n, s.p50, s.min, s.max
        );
        targets.push(target(
            "live revoke latency, violation → network revoked (p50)",
            "measured",
            format!("{:.2} ms", s.p50),
            None,
        ));
    }
    let _ = writeln!(
        body,
        "\nReproduce: `cargo xtask bench --only egress` (device configs in `target/bench/egress-*`)."
    );
    Ok(Section {
        title: "Egress control".into(),
        body,
        targets,
        busy: None,
    })
}

const REVOKE_AGENTS: usize = 10;

/// Milliseconds from a violation to the revocation holding, one per agent (`revoke-probe`).
fn bench_revoke(ctx: &Ctx) -> Result<Vec<f64>> {
    let network = vec!["127.0.0.1:1/tcp".to_owned()];
    let delays: Vec<String> = (0..REVOKE_AGENTS)
        .map(|k| (500 + k * 400).to_string())
        .collect();
    let cmds: Vec<[&str; 6]> = delays
        .iter()
        .map(|d| {
            [
                "/bin/demo-agent",
                "revoke-probe",
                d.as_str(),
                "127.0.0.1:2",
                "3",
                "127.0.0.1:1",
            ]
        })
        .collect();
    let bundles: Vec<Bundle> = cmds
        .iter()
        .enumerate()
        .map(|(k, cmd)| Bundle {
            name: format!("rv{k}"),
            network: &network,
            exec: cmd,
            memory: "16MiB",
            pids: 8,
            cpus: 1.0,
            restart: r#"{ "policy": "never" }"#,
            grant_extra: r#", "on_violation": [ { "denied_connects": 3, "within_s": 60, "action": "revoke_network" } ]"#,
        })
        .collect();
    let dir = ctx.dir.join("egress-revoke");
    let subtree = format!("{}-egress-revoke", ctx.tag);
    let config = write_device(ctx, &dir, &subtree, &bundles)?;
    let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut v = Vec::new();
    for b in &bundles {
        let line = d.poll_logs(&b.name, 50, deadline, |logs| {
            logs.lines()
                .find(|l| l.starts_with("revoke-probe: "))
                .map(str::to_owned)
        })?;
        let us = line
            .strip_prefix("revoke-probe: cut off after ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .ok_or_else(|| format!("{}: {line}", b.name))?;
        v.push(us / 1000.0);
    }
    d.stop()?;
    Ok(v)
}

/// Sum of `memlock` over the pinned maps under `pins` (bpftool).
fn map_memlock(pins: &Path) -> u64 {
    let mut bytes = 0u64;
    for m in [
        "nc_allow4",
        "nc_allow6",
        "nc_agents",
        "nc_traffic",
        "nc_monitored",
        "nc_syscalls",
        "nc_denials",
        "nc_lsm_agents",
        "nc_lsm_events",
    ] {
        let out = util::output(
            Command::new("bpftool")
                .args(["map", "show", "pinned"])
                .arg(pins.join(m)),
        )
        .unwrap_or_default();
        bytes += out
            .split_whitespace()
            .skip_while(|w| *w != "memlock")
            .nth(1)
            .and_then(|b| b.trim_end_matches('B').parse::<u64>().ok())
            .unwrap_or(0);
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// Signed bundle install: verify + unpack + switch, against sha256sum of the same file

/// `n` bytes that do not compress (xorshift64), so gzip cannot shrink the bundle.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A P-256 key pair made with openssl: `KEYS/bench.pem` (returned) and `KEYS/bench.pub`, the
/// signer key `write_device`'s policy names.
fn openssl_keypair(keys: &Path) -> Result<PathBuf> {
    fs::create_dir_all(keys).map_err(|e| format!("{}: {e}", keys.display()))?;
    let key = keys.join("bench.pem");
    util::output(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key),
    )?;
    util::output(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(keys.join("bench.pub")),
    )?;
    Ok(key)
}

fn timed(cmd: &mut Command) -> Result<f64> {
    let t0 = Instant::now();
    util::output(cmd)?;
    Ok(ms(t0.elapsed()))
}

fn bench_install(ctx: &Ctx) -> Result<Section> {
    const SIZES_MB: [usize; 3] = [1, 10, 100];
    const RUNS: usize = 3;
    let dir = ctx.dir.join("install");
    let cmd = ["/bin/demo-agent", "sleep"];
    let bundles = [Bundle {
        name: "big".into(),
        network: &[],
        exec: &cmd,
        memory: "16MiB",
        pids: 8,
        cpus: 1.0,
        restart: r#"{ "policy": "never" }"#,
        grant_extra: "",
    }];
    let config = write_device(ctx, &dir, &format!("{}-install", ctx.tag), &bundles)?;
    // The grant stays; the hand-made bundle directory goes (installs replace it by a symlink).
    let src = dir.join("src");
    fs::rename(dir.join("agents/big"), &src).map_err(|e| format!("moving the bundle: {e}"))?;
    let key = openssl_keypair(&dir.join("keys"))?;
    let nc = &ctx.bins.nanoclaw;
    let mut d = Daemon::start(nc, &config)?;
    let mut rows = Vec::new();
    let mut version = 0;
    let mut hwm_delta = 0u64;
    let mut hwm_seen = (0u64, 0u64, 0u64);
    for mb in SIZES_MB {
        fs::write(src.join("rootfs/data.bin"), noise(mb << 20, mb as u64))
            .map_err(|e| format!("writing the payload: {e}"))?;
        let (mut floor, mut verify, mut install) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            version += 1;
            let manifest = fs::read_to_string(src.join("manifest.json"))
                .map_err(|e| format!("manifest: {e}"))?;
            let m = manifest.replacen(
                r#""version": "0.1.0""#,
                &format!(r#""version": "1.0.{version}""#),
                1,
            );
            let mdir = dir.join(format!("src-{version}"));
            let _ = fs::remove_dir_all(&mdir);
            fs::create_dir_all(&mdir).map_err(|e| format!("{e}"))?;
            fs::write(mdir.join("manifest.json"), m).map_err(|e| format!("{e}"))?;
            // The packer does not follow symlinks: lend it the rootfs by rename.
            fs::rename(src.join("rootfs"), mdir.join("rootfs")).map_err(|e| format!("{e}"))?;
            let file = dir.join(format!("big-1.0.{version}.nclaw"));
            let packed = util::output(
                Command::new(nc)
                    .args(["bundle", "pack"])
                    .arg(&mdir)
                    .arg("-o")
                    .arg(&file),
            );
            fs::rename(mdir.join("rootfs"), src.join("rootfs")).map_err(|e| format!("{e}"))?;
            packed?;
            util::output(
                Command::new(nc)
                    .args(["bundle", "sign"])
                    .arg(&file)
                    .arg("--key")
                    .arg(&key),
            )?;
            let sig = format!("{}.sigstore.json", file.display());
            // Page cache warm for all three, as on a device right after download.
            timed(
                Command::new("cat")
                    .arg(&file)
                    .stdout(std::process::Stdio::null()),
            )?;
            floor.push(timed(Command::new("sha256sum").arg(&file))?);
            verify.push(timed(
                Command::new(nc)
                    .args(["bundle", "verify", "--bundle", &sig, "--key"])
                    .arg(key.with_extension("pub"))
                    .arg(&file),
            )?);
            // Reset the daemon's peak RSS to its current RSS (clear_refs 5), so the peak after
            // the install is what the install itself needed.
            let _ = fs::write(format!("/proc/{}/clear_refs", d.pid), "5");
            let status = proc_kib(d.pid, "status");
            let kib_of = |st: &[(String, u64)], k: &str| {
                st.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v)
            };
            let hwm_before = kib_of(&status, "VmHWM");
            let rss_before = kib_of(&status, "VmRSS");
            install.push(timed(
                Command::new(nc)
                    .arg("--socket")
                    .arg(dir.join("ctl.sock"))
                    .arg("install")
                    .arg(&file),
            )?);
            let hwm_after = proc_kib(d.pid, "status")
                .into_iter()
                .find(|(k, _)| k == "VmHWM")
                .map_or(0, |(_, v)| v);
            if mb == 100 && hwm_after.saturating_sub(hwm_before) >= hwm_delta {
                hwm_delta = hwm_after.saturating_sub(hwm_before);
                hwm_seen = (rss_before, hwm_before, hwm_after);
            }
            let _ = fs::remove_dir_all(&mdir);
        }
        rows.push((mb, stats(&floor), stats(&verify), stats(&install)));
    }
    d.stop()?;
    let mut body = format!(
        "A signed bundle (ECDSA P-256, `nanoclaw bundle sign`) of `demo-agent` plus N MiB of \
         incompressible data, uncompressed ustar. Floor: `sha256sum FILE` (the file is in the \
         page cache for all three). `bundle verify`: the CLI verifying the signature (hashes the \
         file once). `install`: `nanoclaw install FILE` through the daemon: hash + manifest read, \
         signature, admission, unpack while hashing again, fsync (syncfs), atomic switch — two \
         passes over the file by design (the second proves the unpacked bytes are the verified \
         ones). p50 of {RUNS} runs, ms.\n\n\
         | size | sha256sum | bundle verify | install | install ÷ sha256sum |\n|---|---|---|---|---|\n"
    );
    let mut targets = Vec::new();
    for (mb, f, v, i) in &rows {
        if let (Some(f), Some(v), Some(i)) = (f, v, i) {
            let _ = writeln!(
                body,
                "| {mb} MiB | {:.1} | {:.1} | {:.1} | {:.2}× |",
                f.p50,
                v.p50,
                i.p50,
                i.p50 / f.p50
            );
            if *mb == 100 {
                targets.push(target(
                    "verify + install of a 100 MiB bundle vs sha256sum (p50)",
                    "≤ 2× the floor",
                    format!("{:.0} ms vs {:.0} ms ({:.2}×)", i.p50, f.p50, i.p50 / f.p50),
                    Some(i.p50 <= 2.0 * f.p50),
                ));
            }
        }
    }
    let _ = writeln!(
        body,
        "\nPeak supervisor RSS (VmHWM) growth during the 100 MiB installs: **{} KiB** (VmRSS \
         {} KiB and VmHWM {} KiB right before, VmHWM {} KiB after; peak \
         reset with `/proc/PID/clear_refs` before each install; the archive is streamed in \
         64 KiB reads, nothing is held whole).\n\nReproduce: `cargo xtask \
         bench --only install` (bundles and device config in `target/bench/install`).",
        hwm_delta, hwm_seen.0, hwm_seen.1, hwm_seen.2
    );
    targets.push(target(
        "peak supervisor RSS growth during a 100 MiB install",
        "≤ +2 MiB",
        format!("+{hwm_delta} KiB"),
        Some(hwm_delta <= 2048),
    ));
    Ok(Section {
        title: "Signed bundle install".into(),
        body,
        targets,
        busy: None,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Supervisor memory

struct MemSample {
    rss: u64,
    pss: u64,
    hwm: u64,
    init_rss: Vec<u64>,
    init_pss: Vec<u64>,
    agent_rss: Vec<u64>,
    exit: String,
    /// RssFile and RssAnon (bytes).
    file: u64,
    anon: u64,
    /// Bytes the daemon touched over [`WORKING_SET_WINDOW`] of idle supervision: of its binary,
    /// and in all.
    touched_binary: u64,
    touched: u64,
}

/// How long the working-set measurement watches the idle daemon.
const WORKING_SET_WINDOW: Duration = Duration::from_secs(10);

fn bench_memory(ctx: &Ctx) -> Result<Section> {
    let one = mem_run(ctx, 1)?;
    let many = mem_run(ctx, IDLE_AGENTS)?;
    let per_agent = (many.rss as f64 - one.rss as f64) / (IDLE_AGENTS - 1) as f64;
    let per_agent_pss = (many.pss as f64 - one.pss as f64) / (IDLE_AGENTS - 1) as f64;
    let avg = |v: &[u64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<u64>() as f64 / v.len() as f64
        }
    };
    let dir = |n: usize| ctx.rel(&ctx.dir.join(format!("memory-{n}")));
    let nc = ctx.rel(&ctx.bins.nanoclaw);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "The daemon (`nanoclaw daemon`, one thread, smol executor) supervising N idle agents, each \
         `/bin/demo-agent sleep` (memory 8 MiB, pids 4, cpus 0.1, seccomp `default`, unsigned bundles \
         allowed). Measured once all N agents are `running` plus 2 s to settle. VmRSS and VmHWM from \
         `/proc/PID/status`, Pss from `/proc/PID/smaps_rollup` (the static binary's pages are \
         shared with the agents' sandbox inits, which run the same file, so Pss < RSS).\n\n\
         | agents | daemon VmRSS | daemon Pss | daemon VmHWM | sandbox init VmRSS / Pss (mean per agent) | agent process VmRSS (mean) | daemon exit on SIGTERM |\n|---|---|---|---|---|---|---|"
    );
    for (n, s) in [(1, &one), (IDLE_AGENTS, &many)] {
        let _ = writeln!(
            body,
            "| {n} | {} | {} | {} | {} / {} | {} | {} |",
            kib(s.rss as f64),
            kib(s.pss as f64),
            kib(s.hwm as f64),
            kib(avg(&s.init_rss)),
            kib(avg(&s.init_pss)),
            kib(avg(&s.agent_rss)),
            s.exit
        );
    }
    let _ = writeln!(
        body,
        "\nSupervisor state per agent: (VmRSS₃₂ − VmRSS₁) / 31 = **{}** (by Pss: {}; the \
         daemon's Pss shrinks as more sandbox inits share its binary's pages). The sandbox init \
         (PID 1 of each agent's PID namespace, a separate process running the same binary) is \
         charged to the agent's cgroup, not to the supervisor: {} RSS per agent, of which most \
         is the shared binary (its Pss with 32 agents is {}).\n",
        kib(per_agent),
        kib(per_agent_pss),
        kib(avg(&many.init_rss)),
        kib(avg(&many.init_pss)),
    );
    let _ = writeln!(
        body,
        "What the RSS with {IDLE_AGENTS} agents is: {} of file pages (the static binary, {} on disk: \
         the kernel maps a page cache page's neighbours too when one faults (fault-around, 64 KiB), \
         so the start-up code leaves nearly all of the text mapped; these pages are shared with \
         the sandbox inits and clean, so reclaimable) and {} anonymous. Over {} s of idle \
         supervision (referenced bits cleared with `echo 1 > /proc/PID/clear_refs`, then \
         `Referenced:` summed from `/proc/PID/smaps`) the daemon touched {} of its binary and \
         {} in all: its working set.\n",
        kib(many.file as f64),
        kib(ctx.bins.nanoclaw.metadata().map(|m| m.len()).unwrap_or(0) as f64),
        kib(many.anon as f64),
        WORKING_SET_WINDOW.as_secs(),
        kib(many.touched_binary as f64),
        kib(many.touched as f64),
    );
    let _ = writeln!(
        body,
        "Reproduce (N = 1 or 32; the harness wrote these files):\n\n\
         ```sh\n\
         {nc} daemon --config {}/device.json &   # or {}/device.json\n\
         {nc} --socket {}/ctl.sock agents --json  # until all are \"running\"\n\
         grep -E 'VmRSS|VmHWM' /proc/$!/status; grep '^Pss:' /proc/$!/smaps_rollup\n\
         kill -TERM $!; wait $!                     # exits 0\n\
         ```\n",
        dir(IDLE_AGENTS),
        dir(1),
        dir(IDLE_AGENTS),
    );
    let targets = vec![
        target(
            "supervisor RSS, 32 idle agents",
            "≤ 4 MiB",
            format!("{} (Pss {})", mib(many.rss), mib(many.pss)),
            Some(many.rss <= 4 << 20),
        ),
        target(
            "supervisor state per agent",
            "≤ 64 KiB",
            kib(per_agent),
            Some(per_agent <= 64.0 * 1024.0),
        ),
    ];
    Ok(Section {
        title: "Supervisor memory".into(),
        body,
        targets,
        busy: None,
    })
}

/// Adds the keys of `add` (an object) to the device.json `write_device` wrote.
fn add_device_keys(config: &Path, add: Json) -> Result {
    let text = fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut v: Json = serde_json::from_str(&text).map_err(|e| format!("{e}"))?;
    if let (Some(o), Json::Object(add)) = (v.as_object_mut(), add) {
        o.extend(add);
    }
    write(config, &v.to_string())
}

/// An idle agent: `/bin/demo-agent sleep` in 8 MiB, 4 pids, 0.1 CPU.
fn sleeper(name: String) -> Bundle<'static> {
    Bundle {
        name,
        network: &[],
        exec: &["/bin/demo-agent", "sleep"],
        memory: "8MiB",
        pids: 4,
        cpus: 0.1,
        restart: r#"{ "policy": "on-failure" }"#,
        grant_extra: "",
    }
}

/// `n` idle agents `sleep-00`, `sleep-01`, …
fn sleepers(n: usize) -> Vec<Bundle<'static>> {
    (0..n).map(|i| sleeper(format!("sleep-{i:02}"))).collect()
}

fn mem_run(ctx: &Ctx, n: usize) -> Result<MemSample> {
    let bundles = sleepers(n);
    let dir = ctx.dir.join(format!("memory-{n}"));
    let config = write_device(ctx, &dir, &format!("{}-mem{n}", ctx.tag), &bundles)?;
    let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    let agents = d.wait_running(n, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(2));
    d.alive()?;
    let status = proc_kib(d.pid, "status");
    let rollup = proc_kib(d.pid, "smaps_rollup");
    let get = |m: &[(String, u64)], k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v * 1024);
    let rss = get(&status, "VmRSS").ok_or("no VmRSS for the daemon")?;
    let hwm = get(&status, "VmHWM").unwrap_or(0);
    let pss = get(&rollup, "Pss").unwrap_or(0);
    let mut s = MemSample {
        rss,
        pss,
        hwm,
        init_rss: Vec::new(),
        init_pss: Vec::new(),
        agent_rss: Vec::new(),
        exit: String::new(),
        file: get(&status, "RssFile").unwrap_or(0),
        anon: get(&status, "RssAnon").unwrap_or(0),
        touched_binary: 0,
        touched: 0,
    };
    for a in &agents {
        let Some(pid) = a.num("pid").map(|p| p as u32) else {
            continue;
        };
        if let Some(v) = get(&proc_kib(pid, "status"), "VmRSS") {
            s.init_rss.push(v);
        }
        if let Some(v) = get(&proc_kib(pid, "smaps_rollup"), "Pss") {
            s.init_pss.push(v);
        }
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse::<u32>().ok())
            && let Some(v) = get(&proc_kib(c, "status"), "VmRSS")
        {
            s.agent_rss.push(v);
        }
    }
    if n > 1 {
        (s.touched_binary, s.touched) = working_set(d.pid, &ctx.bins.nanoclaw)?;
    }
    let st = d.stop()?;
    s.exit = match st.code() {
        Some(0) => "0".into(),
        _ => format!("**{st}**"),
    };
    if !st.success() {
        return Err(format!(
            "the daemon exited with {st} on SIGTERM; log ends:\n{}",
            d.log_tail()
        ));
    }
    Ok(s)
}

/// Bytes of `pid`'s mappings referenced over [`WORKING_SET_WINDOW`]: of `binary`, and in all.
fn working_set(pid: u32, binary: &Path) -> Result<(u64, u64)> {
    fs::write(format!("/proc/{pid}/clear_refs"), "1")
        .map_err(|e| format!("/proc/{pid}/clear_refs: {e}"))?;
    std::thread::sleep(WORKING_SET_WINDOW);
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("/proc/{pid}/smaps: {e}"))?;
    let bin = fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    let (mut ours, mut all, mut in_binary) = (0u64, 0u64, false);
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Referenced:") {
            let b = kb
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                * 1024;
            all += b;
            if in_binary {
                ours += b;
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            in_binary = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|p| Path::new(p) == bin);
        }
    }
    Ok((ours, all))
}

/// utime + stime of `pid`, seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces) come the fields from `state` (3rd) on:
    // utime (14th) and stime (15th) are the 12th and 13th of those. Every field counts, even
    // ones that do not parse as unsigned (tpgid is -1 without a terminal).
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ: 100 on every architecture Linux runs these boards on.
    (num(11) + num(12)) as f64 / 100.0
}

/// `Key: N kB` lines of /proc/PID/FILE.
fn proc_kib(pid: u32, file: &str) -> Vec<(String, u64)> {
    fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some((k.trim().to_owned(), v))
        })
        .collect()
}

fn meminfo_kib(key: &str) -> Option<u64> {
    fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// 4. OOM kill → restarted agent

/// One OOM kill followed by a start.
struct Restart {
    attempt: u32,
    delay_ms: u64,
    /// `oom_kill` record → `start` record, ms.
    from_oom: f64,
    /// `exit` record → `start` record, ms.
    from_exit: Option<f64>,
}

fn bench_oom(ctx: &Ctx, cycles: usize) -> Result<Section> {
    let dir = ctx.dir.join("oom");
    let bundles = [Bundle {
        name: "memhog".into(),
        network: &[],
        exec: &["/bin/demo-agent", "memhog", "4"],
        memory: "32MiB",
        pids: 8,
        cpus: 1.0,
        restart: r#"{ "policy": "on-failure", "max_per_hour": 3600 }"#,
        grant_extra: "",
    }];
    let config = write_device(ctx, &dir, &format!("{}-oom", ctx.tag), &bundles)?;
    let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    d.wait_running(1, Duration::from_secs(30))?;
    let audit = |d: &Daemon| -> Result<Vec<Json>> {
        match d.json(&["audit", "--agent", "memhog", "-n", "10000", "--json"])? {
            Json::Array(mut v) => {
                v.sort_by(|a, b| {
                    a.num("seq")
                        .unwrap_or(0.0)
                        .total_cmp(&b.num("seq").unwrap_or(0.0))
                });
                Ok(v)
            }
            _ => Err("audit --json did not print an array".into()),
        }
    };
    // Incidents: `restart` resets the backoff; wait for the first OOM kill and its restart.
    for i in 0..cycles {
        d.alive()?;
        let mark = audit(&d)?.last().and_then(|r| r.num("seq")).unwrap_or(0.0);
        d.cli(&["restart", "memhog"])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let recs: Vec<Json> = audit(&d)?
                .into_iter()
                .filter(|r| r.num("seq").is_some_and(|s| s > mark))
                .collect();
            if restarts(&recs).iter().any(|r| r.attempt == 1) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "incident {i}: no OOM kill and restart within 10 s; daemon log ends:\n{}",
                    d.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Steady state: consecutive OOM kills with the backoff growing, left alone.
    let mark = audit(&d)?.last().and_then(|r| r.num("seq")).unwrap_or(0.0);
    d.cli(&["restart", "memhog"])?;
    std::thread::sleep(Duration::from_secs(6));
    let all = audit(&d)?;
    let st = d.stop()?;
    if !st.success() {
        return Err(format!(
            "the daemon exited with {st} on SIGTERM; log ends:\n{}",
            d.log_tail()
        ));
    }
    let incident: Vec<Restart> = restarts(
        &all.iter()
            .filter(|r| r.num("seq").is_some_and(|s| s <= mark))
            .cloned()
            .collect::<Vec<_>>(),
    )
    .into_iter()
    .filter(|r| r.attempt == 1)
    .collect();
    let steady = restarts(
        &all.iter()
            .filter(|r| r.num("seq").is_some_and(|s| s > mark))
            .cloned()
            .collect::<Vec<_>>(),
    );

    let nc = ctx.rel(&ctx.bins.nanoclaw);
    let sock = ctx.rel(&dir.join("ctl.sock"));
    let mut body = String::new();
    let _ = writeln!(
        body,
        "One agent, `/bin/demo-agent memhog 4` (allocates and touches 4 MiB every 20 ms) with memory \
         32 MiB and `restart: on-failure, max_per_hour 3600`, under `nanoclaw daemon`. Latency = \
         `time` of the next `start` audit record − `time` of the `oom_kill` record (millisecond \
         timestamps, so ±1 ms). The `oom_kill` record is written when the daemon's OOM watcher \
         (cgroup v1 `memory.oom_control` eventfd here) wakes, so the kernel's own kill-to-notify \
         time is not included; the `exit` → `start` column starts at the daemon's record of the \
         init's exit. The restart policy restarts at once the first time, then backs off \
         (100 ms doubling, ±20 % jitter; supervisor/src/agents/restart.rs).\n"
    );
    let _ = writeln!(
        body,
        "| series | n | p50 ms | p99 ms | mean ms | max ms | exit → start p50 ms |\n|---|---|---|---|---|---|---|"
    );
    // `minus_backoff`: subtract the scheduled delay, leaving the supervisor's own latency.
    let row = |body: &mut String, what: &str, v: &[&Restart], minus_backoff: bool| {
        let delay = |r: &Restart| {
            if minus_backoff {
                r.delay_ms as f64
            } else {
                0.0
            }
        };
        let xs: Vec<f64> = v.iter().map(|r| r.from_oom - delay(r)).collect();
        let ex: Vec<f64> = v
            .iter()
            .filter_map(|r| r.from_exit.map(|e| e - delay(r)))
            .collect();
        if let Some(s) = stats(&xs) {
            let _ = writeln!(
                body,
                "| {what} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {} |",
                s.n,
                s.p50,
                s.p99,
                s.mean,
                s.max,
                stats(&ex).map_or("-".into(), |e| format!("{:.0}", e.p50))
            );
        }
    };
    let inc: Vec<&Restart> = incident.iter().collect();
    row(
        &mut body,
        "first restart of an incident (attempt 1, no backoff): OOM → start",
        &inc,
        false,
    );
    let later: Vec<&Restart> = steady.iter().filter(|r| r.attempt > 1).collect();
    row(
        &mut body,
        "steady state, attempts ≥ 2: OOM → start minus the scheduled backoff",
        &later,
        true,
    );
    let _ = writeln!(
        body,
        "\nSteady-state series (the agent left alone after one `restart`): \n\n\
         | attempt | scheduled backoff ms | OOM → start ms |\n|---|---|---|"
    );
    for r in &steady {
        let _ = writeln!(
            body,
            "| {} | {} | {:.0} |",
            r.attempt, r.delay_ms, r.from_oom
        );
    }
    let _ = writeln!(
        body,
        "\nReproduce:\n\n```sh\n\
         {nc} daemon --config {}/device.json &\n\
         {nc} --socket {sock} restart memhog      # resets the backoff: the next OOM restarts at once\n\
         sleep 1; {nc} --socket {sock} audit --agent memhog -n 10000 --json   # oom_kill, exit, restart, start records\n\
         kill -TERM $!\n```\n",
        ctx.rel(&dir),
    );
    let targets = match stats(&inc.iter().map(|r| r.from_oom).collect::<Vec<_>>()) {
        Some(s) => vec![target(
            "OOM kill → restarted agent (first restart), p50",
            "≤ 100 ms",
            format!("{:.0} ms (p99 {:.0} ms, n = {})", s.p50, s.p99, s.n),
            Some(s.p50 <= 100.0),
        )],
        None => Vec::new(),
    };
    Ok(Section {
        title: "OOM kill → restarted agent".into(),
        body,
        targets,
        busy: None,
    })
}

/// Pairs each OOM kill with the next start (audit records in `seq` order). An operator's
/// `stop`/`restart` in between cancels the pair.
fn restarts(recs: &[Json]) -> Vec<Restart> {
    let mut out = Vec::new();
    let mut oom: Option<f64> = None;
    let mut exit: Option<f64> = None;
    let mut sched: Option<(u32, u64)> = None;
    for r in recs {
        let time = r.num("time");
        let reason = r.str("reason").unwrap_or("");
        match r.str("kind") {
            Some("oom_kill") if oom.is_none() => oom = time,
            Some("exit") => {
                if oom.is_none() && reason.contains("OOM") {
                    oom = time;
                }
                if oom.is_some() {
                    exit = time;
                }
            }
            Some("restart") => sched = parse_attempt(reason),
            Some("stop") => {
                oom = None;
                exit = None;
                sched = None;
            }
            Some("start") => {
                if let (Some(t0), Some(t1), Some((attempt, delay_ms))) = (oom, time, sched) {
                    out.push(Restart {
                        attempt,
                        delay_ms,
                        from_oom: t1 - t0,
                        from_exit: exit.map(|e| t1 - e),
                    });
                }
                oom = None;
                exit = None;
                sched = None;
            }
            _ => {}
        }
    }
    out
}

/// "restarting after ... (attempt N, in D ms)" → (N, D).
fn parse_attempt(reason: &str) -> Option<(u32, u64)> {
    let rest = &reason[reason.rfind("(attempt ")? + 9..];
    let (n, rest) = rest.split_once(',')?;
    let d = rest.trim().strip_prefix("in ")?.split_whitespace().next()?;
    Some((n.trim().parse().ok()?, d.parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Host helpers

fn write(path: &Path, text: &str) -> Result {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A JSON string literal.
fn jstr(s: &str) -> String {
    Json::from(s).to_string()
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// Percentage of CPU time not idle over `window`, from /proc/stat.
fn cpu_busy(window: Duration) -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4).unwrap_or(&0);
        Some((v.iter().sum(), idle))
    };
    let (t0, i0) = sample()?;
    std::thread::sleep(window);
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0).filter(|&t| t > 0)?;
    Some(100.0 * (total - (i1 - i0).min(total)) as f64 / total as f64)
}

/// Mount points of every cgroup hierarchy.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .collect()
}

fn cgroup_layout() -> String {
    let h = cgroup_hierarchies();
    let v2: Vec<&PathBuf> = h
        .iter()
        .filter(|p| p.join("cgroup.controllers").exists())
        .collect();
    let v1 = h.len() - v2.len();
    match (v1, v2.first()) {
        (0, Some(_)) => "v2".into(),
        (n, Some(p)) => format!("v1 hybrid: {n} v1 hierarchies, cgroup2 at {}", p.display()),
        (n, None) => format!("v1 only: {n} hierarchies"),
    }
}

/// Removes every cgroup directory whose top-level name starts with `prefix`, in every
/// hierarchy (depth first, rmdir only: never kills anything). Returns what could not be removed.
fn remove_cgroups(prefix: &str) -> Vec<String> {
    fn rmdir_tree(p: &Path, depth: usize) -> std::io::Result<()> {
        if depth < 8 {
            for e in fs::read_dir(p)?.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path(), depth + 1)?;
                }
            }
        }
        let mut last = Ok(());
        for _ in 0..50 {
            last = fs::remove_dir(p);
            match &last {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        last
    }
    let mut left = Vec::new();
    for h in cgroup_hierarchies() {
        let Ok(rd) = fs::read_dir(&h) else { continue };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix)
                && e.file_type().is_ok_and(|t| t.is_dir())
                && let Err(err) = rmdir_tree(&e.path(), 0)
            {
                left.push(format!("{}: {err}", e.path().display()));
            }
        }
    }
    left
}

// ---------------------------------------------------------------------------------------------
// The CLI's `--json` output, read with serde_json.

type Json = serde_json::Value;

fn parse_json(s: &str) -> Result<Json> {
    serde_json::from_str(s).map_err(|e| format!("invalid JSON from the CLI: {e}"))
}

/// Field accessors for the records the CLI prints.
trait JsonExt {
    fn str(&self, key: &str) -> Option<&str>;
    fn num(&self, key: &str) -> Option<f64>;
}

impl JsonExt for Json {
    fn str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }
    fn num(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reads_cli_output() {
        let v = parse_json(
            r#"[ { "seq": 3, "time": 1732800000123, "kind": "oom_kill", "reason": "a \"q\" {x}", "pid": null } ]"#,
        );
        let Ok(Json::Array(v)) = v else {
            panic!("not an array: {v:?}")
        };
        assert_eq!(v[0].num("time"), Some(1_732_800_000_123.0));
        assert_eq!(v[0].str("reason"), Some("a \"q\" {x}"));
        assert_eq!(v[0].get("pid"), Some(&Json::Null));
        assert!(parse_json("[1,").is_err());
        assert_eq!(jstr("a\"b\n"), r#""a\"b\n""#);
    }

    #[test]
    fn pairs_oom_kills_with_restarts() {
        let rec = |seq: u32, time: u64, kind: &str, reason: &str| serde_json::json!({ "seq": seq, "time": time, "kind": kind, "reason": reason });
        let recs = [
            rec(1, 1000, "oom_kill", "1 process(es) OOM-killed"),
            rec(2, 1001, "exit", "killed by the kernel OOM killer"),
            rec(
                3,
                1001,
                "restart",
                "restarting after x (attempt 1, in 0 ms)",
            ),
            rec(4, 1007, "start", "started"),
            rec(5, 1200, "stop", "restart requested"),
            rec(6, 1201, "exit", "killed by signal 15"),
            rec(7, 1209, "start", "started"),
            rec(8, 1400, "oom_kill", ""),
            rec(
                9,
                1401,
                "restart",
                "restarting after x (attempt 2, in 104 ms)",
            ),
            rec(10, 1510, "start", ""),
        ];
        let r = restarts(&recs);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].attempt, r[0].delay_ms, r[0].from_oom), (1, 0, 7.0));
        assert_eq!(r[0].from_exit, Some(6.0));
        assert_eq!(
            (r[1].attempt, r[1].delay_ms, r[1].from_oom),
            (2, 104, 110.0)
        );
    }

    #[test]
    fn stats_are_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = stats(&v).map(|s| (s.p50, s.p99, s.min, s.max));
        assert_eq!(s, Some((100.0, 198.0, 1.0, 200.0)));
    }
}
