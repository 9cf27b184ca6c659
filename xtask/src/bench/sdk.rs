//! The agent socket as each SDK's caller sees it: the round trip program of
//! sdk/CONFORMANCE.md (90 `heartbeat` calls one after another) in Python, JavaScript, Go and
//! Rust, plus a raw-socket baseline with no SDK, against a real daemon's agent socket.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Ctx, Daemon, Section, first_line, sleeper, target, which, write_device};
use crate::util::{self, Result};

/// Runs of each program; the report gives the median of their p50s and of their p99s.
const RUNS: usize = 5;
/// Calls per run (sdk/CONFORMANCE.md): with `hello`, inside the socket's burst of 100.
const CALLS: usize = 90;
/// The idle agent whose socket the programs use.
const AGENT: &str = "sdk";
/// One run of a program may take this long (interpreter start included).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two runs: lets the daemon close the previous connection (4 at most).
const PAUSE: Duration = Duration::from_millis(250);

/// What one run printed: `roundtrip lang=L n=N p50_us=.. p99_us=.. mean_us=..`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    p50: f64,
    p99: f64,
    mean: f64,
}

enum Runner {
    /// The in-process loop over a plain `UnixStream`.
    Raw,
    /// A program run with `NANOCLAW_SOCKET` and `LANG_NAME` from the workspace root.
    Program { program: PathBuf, args: Vec<String> },
    /// Not measured, and why (toolchain missing, build failed).
    Unavailable(String),
}

struct Lang {
    name: &'static str,
    /// The command the report shows (run from the workspace root).
    how: String,
    /// The toolchain's version line, when there is one.
    toolchain: String,
    runner: Runner,
    samples: Vec<Sample>,
    error: Option<String>,
}

impl Lang {
    fn new(name: &'static str, how: String, toolchain: String, runner: Runner) -> Lang {
        Lang {
            name,
            how,
            toolchain,
            runner,
            samples: Vec::new(),
            error: None,
        }
    }
}

/// `roundtrip lang=<lang> n=<n> p50_us=<n> p99_us=<n> mean_us=<n>` → the sample, checked
/// against the language and the number of calls.
fn parse_line(out: &str, lang: &str) -> Result<Sample> {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("roundtrip "))
        .ok_or_else(|| format!("no `roundtrip ...` line in {:?}", out.trim()))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .ok_or_else(|| format!("no {k}= in {line:?}"))
    };
    let num = |k: &str| -> Result<f64> {
        field(k)?
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("{k} is not a number in {line:?}"))
    };
    if field("lang")? != lang {
        return Err(format!("expected lang={lang} in {line:?}"));
    }
    if num("n")? != CALLS as f64 {
        return Err(format!("expected n={CALLS} in {line:?}"));
    }
    Ok(Sample {
        p50: num("p50_us")?,
        p99: num("p99_us")?,
        mean: num("mean_us")?,
    })
}

/// The baseline: `hello`, then `CALLS` heartbeats over a plain `UnixStream`, each timed from
/// the write to the end of the answer line; nearest-rank percentiles like the programs.
fn raw_roundtrip(sock: &Path) -> Result<Sample> {
    let s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("{e}"))?;
    let mut w = s.try_clone().map_err(|e| format!("{e}"))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut call = |req: &str| -> Result<()> {
        line.clear();
        w.write_all(req.as_bytes())
            .map_err(|e| format!("writing to the agent socket: {e}"))?;
        r.read_line(&mut line)
            .map_err(|e| format!("reading the agent socket: {e}"))?;
        if line.contains("\"ok\":true") {
            Ok(())
        } else {
            Err(format!("{} answered {:?}", req.trim(), line.trim()))
        }
    };
    call("{\"op\":\"hello\",\"id\":0,\"protocol\":1}\n")?;
    let mut us = Vec::with_capacity(CALLS);
    for id in 1..=CALLS {
        let req = format!("{{\"op\":\"heartbeat\",\"id\":{id}}}\n");
        let t = Instant::now();
        call(&req)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let s = super::stats(&us).ok_or("no samples")?;
    Ok(Sample {
        p50: s.p50,
        p99: s.p99,
        mean: s.mean,
    })
}

/// Runs `program args` from the workspace root with the socket and the language in its
/// environment (stdout and stderr kept in `out`), killing it after `RUN_TIMEOUT`.
fn run_program(
    root: &Path,
    program: &Path,
    args: &[String],
    sock: &str,
    lang: &str,
    out: &Path,
) -> Result<Sample> {
    let f = fs::File::create(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let f2 = f.try_clone().map_err(|e| format!("{e}"))?;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(root)
        .env("NANOCLAW_SOCKET", sock)
        .env("LANG_NAME", lang)
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                // Our own child, by its pid.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not finish within {} s",
                    program.display(),
                    RUN_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for {}: {e}", program.display())),
        }
    };
    let text = fs::read_to_string(out).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "{} exited with {status}: {}",
            program.display(),
            text.trim()
        ));
    }
    parse_line(&text, lang)
}

/// The languages, with their programs built where they need building. A missing toolchain
/// or a failed build makes that language `Unavailable`, not the section a failure.
fn prepare(ctx: &Ctx, dir: &Path) -> Vec<Lang> {
    let root = ctx.root;
    let version = |cmd: &mut Command| first_line(cmd).unwrap_or_default();
    let mut langs = vec![Lang::new(
        "raw socket (no SDK)",
        "`cargo xtask bench --only sdk` (the loop is `raw_roundtrip` in xtask/src/bench/sdk.rs)"
            .into(),
        "std `UnixStream` in the xtask (dev profile)".into(),
        Runner::Raw,
    )];

    let py = PathBuf::from("/usr/bin/python3");
    let script = "sdk/python/examples/roundtrip.py";
    let runner = if !py.is_file() {
        Runner::Unavailable("not measured: /usr/bin/python3 is not installed".into())
    } else if !root.join(script).is_file() {
        Runner::Unavailable(format!("not measured: {script} does not exist"))
    } else {
        Runner::Program {
            program: py.clone(),
            args: vec![script.into()],
        }
    };
    langs.push(Lang::new(
        "python",
        format!("`/usr/bin/python3 {script}`"),
        version(Command::new(&py).arg("--version")),
        runner,
    ));

    let script = "sdk/javascript/examples/roundtrip.js";
    let (runner, toolchain) = match which("node") {
        None => (
            Runner::Unavailable("not measured: `node` is not installed".into()),
            String::new(),
        ),
        Some(_) if !root.join(script).is_file() => (
            Runner::Unavailable(format!("not measured: {script} does not exist")),
            String::new(),
        ),
        Some(node) => (
            Runner::Program {
                program: node.clone(),
                args: vec![script.into()],
            },
            format!("node {}", version(Command::new(&node).arg("--version"))),
        ),
    };
    langs.push(Lang::new(
        "javascript",
        format!("`node {script}`"),
        toolchain,
        runner,
    ));

    let go_bin = dir.join("roundtrip-go");
    let (runner, toolchain) = match which("go") {
        None => (
            Runner::Unavailable("not measured: `go` is not installed".into()),
            String::new(),
        ),
        Some(go) => {
            let built = util::run(
                Command::new(&go)
                    .current_dir(root.join("sdk").join("go"))
                    .env("CGO_ENABLED", "0")
                    .arg("build")
                    .arg("-o")
                    .arg(&go_bin)
                    .arg("./examples/roundtrip"),
            );
            let toolchain = version(Command::new(&go).arg("version"));
            match built {
                Ok(()) if go_bin.is_file() => (
                    Runner::Program {
                        program: go_bin.clone(),
                        args: Vec::new(),
                    },
                    toolchain,
                ),
                Ok(()) => (
                    Runner::Unavailable(format!(
                        "not measured: go build did not produce {}",
                        ctx.rel(&go_bin)
                    )),
                    toolchain,
                ),
                Err(e) => (
                    Runner::Unavailable(format!("not measured: the build failed: {e}")),
                    toolchain,
                ),
            }
        }
    };
    langs.push(Lang::new(
        "go",
        format!(
            "`(cd sdk/go && CGO_ENABLED=0 go build -o ../../{bin} ./examples/roundtrip) && {bin}`",
            bin = ctx.rel(&go_bin)
        ),
        toolchain,
        runner,
    ));

    let rust_bin = root
        .join("target")
        .join("release")
        .join("examples")
        .join("roundtrip");
    let example = "sdk/rust/examples/roundtrip.rs";
    let runner = if !root.join(example).is_file() {
        Runner::Unavailable(format!("not measured: {example} does not exist"))
    } else {
        match util::run(util::cargo().args([
            "build",
            "-p",
            "nanoclaw-agent",
            "--example",
            "roundtrip",
            "--release",
        ])) {
            Ok(()) if rust_bin.is_file() => Runner::Program {
                program: rust_bin.clone(),
                args: Vec::new(),
            },
            Ok(()) => Runner::Unavailable(format!(
                "not measured: cargo build did not produce {}",
                ctx.rel(&rust_bin)
            )),
            Err(e) => Runner::Unavailable(format!("not measured: the build failed: {e}")),
        }
    };
    langs.push(Lang::new(
        "rust",
        format!(
            "`cargo build -p nanoclaw-agent --example roundtrip --release && {}`",
            ctx.rel(&rust_bin)
        ),
        version(Command::new("rustc").current_dir(root).arg("--version")),
        runner,
    ));
    langs
}

/// The middle value (of an odd count; the upper middle of an even one).
fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Waits until the daemon has bound the agent's socket.
fn wait_socket(d: &mut Daemon, sock: &Path) -> Result {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        d.alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not appear (does the rootfs have /run?); daemon log ends:\n{}",
                sock.display(),
                d.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(super) fn bench_sdk(ctx: &Ctx) -> Result<Section> {
    let dir = ctx.dir.join("sdk");
    let config = write_device(
        ctx,
        &dir,
        &format!("{}-sdk", ctx.tag),
        &[sleeper(AGENT.into())],
    )?;
    // A mount point for the socket directory: without /run in its rootfs an agent has no socket.
    let run = dir.join("agents").join(AGENT).join("rootfs").join("run");
    fs::create_dir_all(&run).map_err(|e| format!("creating {}: {e}", run.display()))?;

    // Builds before the daemon starts: they load the CPU, the measurements come after.
    let mut langs = prepare(ctx, &dir);

    let sock = dir
        .join("state")
        .join("run")
        .join("sock")
        .join(AGENT)
        .join("nanoclaw.sock");
    let sock_rel = ctx.rel(&sock);
    let mut d = Daemon::start(&ctx.bins.nanoclaw, &config)?;
    d.wait_running(1, Duration::from_secs(30))?;
    wait_socket(&mut d, &sock)?;

    // Round robin over the languages, so a change in the host's load hits them all alike.
    for run in 0..RUNS {
        for (i, l) in langs.iter_mut().enumerate() {
            if l.error.is_some() {
                continue;
            }
            let r = match &l.runner {
                Runner::Unavailable(_) => continue,
                Runner::Raw => raw_roundtrip(&sock),
                Runner::Program { program, args } => run_program(
                    ctx.root,
                    program,
                    args,
                    &sock_rel,
                    l.name,
                    &dir.join(format!("out-{i}-{run}.txt")),
                ),
            };
            match r {
                Ok(s) => l.samples.push(s),
                Err(e) => {
                    eprintln!("bench: sdk: {} run {run}: {e}", l.name);
                    l.error = Some(format!("run {} of {RUNS} failed: {e}", run + 1));
                }
            }
            d.alive()?;
            std::thread::sleep(PAUSE);
        }
    }
    let st = d.stop()?;
    if !st.success() {
        return Err(format!(
            "the daemon exited with {st} on SIGTERM; log ends:\n{}",
            d.log_tail()
        ));
    }
    if langs
        .iter()
        .all(|l| l.samples.len() < RUNS || l.error.is_some())
    {
        let why: Vec<String> = langs
            .iter()
            .map(|l| match (&l.runner, &l.error) {
                (_, Some(e)) | (Runner::Unavailable(e), None) => format!("{}: {e}", l.name),
                _ => format!("{}: no samples", l.name),
            })
            .collect();
        return Err(format!("no language was measured: {}", why.join("; ")));
    }

    let mut body = String::new();
    let _ = writeln!(
        body,
        "The latency of one agent-socket call as an SDK's caller sees it: each SDK's round trip \
         program (sdk/CONFORMANCE.md) connects, says `hello`, then makes {CALLS} `heartbeat` calls \
         one after another and prints the p50, p99 and mean of those {CALLS}. The socket is a real \
         daemon's (one idle agent, `{AGENT}`: `/bin/demo-agent sleep`, its rootfs has `/run`); the \
         programs run on the host as root, which the daemon lets connect to any agent's socket, with \
         `NANOCLAW_SOCKET={sock_rel}` and `LANG_NAME=<language>`, so the sandbox is not in the path. \
         Interpreter start-up, `connect` and `hello` are outside the numbers. The baseline sends \
         `{{\"op\":\"heartbeat\",\"id\":N}}\\n` and reads the answer line over a plain `UnixStream`, \
         no SDK, with the same statistics (nearest rank). Each program ran {RUNS} times, round robin \
         over the languages; the table gives the median of the {RUNS} p50s and of the {RUNS} p99s. \
         The socket's rate limit (50 messages/s, bursts of 100) is per connection and every run \
         opens a fresh one, so `hello` + {CALLS} calls stay inside the burst without pacing.\n"
    );
    let _ = writeln!(
        body,
        "| language | p50 µs | p99 µs | mean µs | p50 of each run, µs | toolchain | program |\n\
         |---|---|---|---|---|---|---|"
    );
    let mut measured = Vec::new();
    for l in &langs {
        let not = match (&l.runner, &l.error) {
            (_, Some(e)) => Some(format!(
                "failed: {}",
                e.replace('`', "'").replace('\n', " ")
            )),
            (Runner::Unavailable(why), None) => Some(why.replace('`', "'").replace('\n', " ")),
            _ => None,
        };
        let tool = if l.toolchain.is_empty() {
            "-"
        } else {
            &l.toolchain
        };
        match not {
            Some(why) => {
                let _ = writeln!(body, "| {} | {why} | | | | {tool} | {} |", l.name, l.how);
            }
            None => {
                let p50 = median(l.samples.iter().map(|s| s.p50));
                let p99 = median(l.samples.iter().map(|s| s.p99));
                let mean = median(l.samples.iter().map(|s| s.mean));
                let each: Vec<String> = l.samples.iter().map(|s| format!("{:.0}", s.p50)).collect();
                let _ = writeln!(
                    body,
                    "| {} | **{p50:.0}** | {p99:.0} | {mean:.0} | {} | {tool} | {} |",
                    l.name,
                    each.join(", "),
                    l.how
                );
                measured.push(format!(
                    "{} {p50:.0} µs",
                    l.name.split_whitespace().next().unwrap_or(l.name)
                ));
            }
        }
    }
    let nc = ctx.rel(&ctx.bins.nanoclaw);
    let _ = writeln!(
        body,
        "\nThe mean column is the median of the {RUNS} means. With {CALLS} calls a run's p99 is \
         its slowest call (nearest rank), so that column follows the host's noise. The Rust program is built with the \
         workspace's release profile (size first: `opt-level = \"z\"`, LTO); the Go one with \
         `CGO_ENABLED=0`.\n\n\
         Reproduce (from the repository root, as root; the device config is in `{dir}`):\n\n```sh\n\
         {nc} daemon --config {dir}/device.json &\n\
         export NANOCLAW_SOCKET={sock_rel}\n\
         LANG_NAME=python /usr/bin/python3 sdk/python/examples/roundtrip.py\n\
         LANG_NAME=javascript node sdk/javascript/examples/roundtrip.js\n\
         (cd sdk/go && CGO_ENABLED=0 go build -o ../../{dir}/roundtrip-go ./examples/roundtrip) && LANG_NAME=go {dir}/roundtrip-go\n\
         cargo build -p nanoclaw-agent --example roundtrip --release && LANG_NAME=rust target/release/examples/roundtrip\n\
         kill -TERM $!\n```\n\n\
         or all of it, baseline included: `cargo xtask bench --only sdk`.",
        dir = ctx.rel(&dir),
    );
    Ok(Section {
        title: "Agent SDKs: socket round trip".into(),
        body,
        targets: vec![target(
            "agent socket `heartbeat` round trip per SDK, p50 (no DESIGN.md target)",
            "-",
            measured.join(", "),
            None,
        )],
        busy: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_roundtrip_line() {
        let s = parse_line(
            "noise\nroundtrip lang=go n=90 p50_us=41 p99_us=120 mean_us=47\n",
            "go",
        );
        assert_eq!(
            s,
            Ok(Sample {
                p50: 41.0,
                p99: 120.0,
                mean: 47.0
            })
        );
        assert!(
            parse_line(
                "roundtrip lang=go n=90 p50_us=41 p99_us=120 mean_us=47",
                "rust"
            )
            .is_err()
        );
        assert!(
            parse_line(
                "roundtrip lang=go n=10 p50_us=41 p99_us=120 mean_us=47",
                "go"
            )
            .is_err()
        );
        assert!(
            parse_line(
                "roundtrip lang=go n=90 p50_us=x p99_us=120 mean_us=47",
                "go"
            )
            .is_err()
        );
        assert!(parse_line("", "go").is_err());
    }

    #[test]
    fn median_of_five() {
        assert_eq!(median([5.0, 1.0, 4.0, 2.0, 3.0].into_iter()), 3.0);
    }
}
