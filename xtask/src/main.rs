//! `cargo xtask`: the project's task runner (std plus serde_json, so it builds in seconds).
//!
//! - `setup`            install the Debian packages the demo and tests need (or print the command)
//! - `build [--target T]` static musl release binaries (`x86_64-unknown-linux-musl` default)
//! - `demo`             run the demo agents on the simulated board and show what happened
//! - `test`             every tier CI runs: fmt, clippy, unit, aarch64 under qemu-user, host
//!   (root, real kernel), VM (qemu, pure cgroup v2, x86_64 and aarch64 kernels)
//! - `bench`            benchmarks → docs/BENCHMARKS.md
//! - `vm [ARCH]`        only the VM tier
//! - `package`          Debian packages and tarballs in target/package/ (docs/INSTALL.md)

mod bench;
mod demo;
mod package;
mod setup;
mod util;
mod vm;

use std::process::{Command, ExitCode};

use util::{Result, cargo, output, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::ensure(setup::ALL),
        Some("build") => build(rest),
        Some("demo") => demo::main(rest),
        Some("test") => test(rest),
        Some("bench") => setup::ensure(&[setup::BUILD, setup::TEST, setup::BENCH][..])
            .and_then(|()| bench::main(rest)),
        Some("vm") => setup::ensure(&[setup::BUILD, setup::VM][..]).and_then(|()| vm::main(rest)),
        Some("package") => {
            setup::ensure(&[setup::BUILD, setup::PACKAGE][..]).and_then(|()| package::main(rest))
        }
        _ => {
            eprintln!(
                "usage: cargo xtask setup|build [--target T]|demo|test [--quick]|bench|vm [x86_64|aarch64|all]|package [--arch A]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build(args: &[String]) -> Result {
    let target = match args {
        [] => util::host_target().to_owned(),
        [flag, t] if flag == "--target" => t.clone(),
        _ => return Err("usage: cargo xtask build [--target TRIPLE]".into()),
    };
    setup::ensure(setup::BUILD)?;
    let b = util::build_static(&target)?;
    println!("{}\n{}", b.nanoclaw.display(), b.demo_agent.display());
    Ok(())
}

/// Every test tier, in the order that fails fastest. `--quick` skips the VM tier.
/// The Python, JavaScript and Go SDKs' own tests (the Rust one is in the `unit` stage).
fn sdk_unit_tests() -> Result {
    let root = util::root();
    run(Command::new("/usr/bin/python3").current_dir(&root).args([
        "-B",
        "-m",
        "unittest",
        "discover",
        "-s",
        "sdk/python",
    ]))?;
    run(Command::new("node")
        .current_dir(&root)
        .args(["--test", "sdk/javascript/test/"]))?;
    let go = root.join("sdk/go");
    run(Command::new("go").current_dir(&go).args(["vet", "./..."]))?;
    run(Command::new("go").current_dir(&go).args(["test", "./..."]))?;
    let unformatted = output(Command::new("gofmt").current_dir(&go).args(["-l", "."]))?;
    if !unformatted.trim().is_empty() {
        return Err(format!("gofmt: not formatted: {unformatted}"));
    }
    Ok(())
}

fn test(args: &[String]) -> Result {
    let quick = args.iter().any(|a| a == "--quick");
    setup::ensure(setup::TIERS)?;
    if !util::is_root() {
        return Err(
            "the host and VM tiers need root (real cgroups, namespaces, BPF): run `sudo -E cargo xtask test`"
                .into(),
        );
    }
    let mut stages: Vec<(&str, Result)> = Vec::new();
    let mut stage = |name: &'static str, r: Result| {
        match &r {
            Ok(()) => eprintln!("xtask: stage {name}: ok"),
            Err(e) => eprintln!("xtask: stage {name}: FAILED: {e}"),
        }
        let failed = r.is_err();
        stages.push((name, r));
        !failed
    };

    let ok = stage("fmt", run(cargo().args(["fmt", "--all", "--", "--check"])))
        && stage(
            "clippy",
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])),
        );
    if ok {
        let host = util::build_static(util::host_target());
        let arm = util::build_static("aarch64-unknown-linux-musl");
        stage(
            "unit",
            run(cargo().args(["test", "--workspace", "--exclude", "nanoclaw-tests"])),
        );
        stage("sdk", sdk_unit_tests());
        stage("aarch64", arm.clone().and_then(|b| aarch64(&b)));
        match host {
            Ok(b) => {
                stage("conformance", conformance(&b.nanoclaw));
                stage(
                    "host",
                    run(cargo()
                        .args(["test", "-p", "nanoclaw-tests"])
                        .env("NANOCLAW_BIN", &b.nanoclaw)
                        .env("NANOCLAW_DEMO_AGENT", &b.demo_agent)),
                );
                if !quick {
                    stage("vm-x86_64", vm::smoke("x86_64", &b));
                    // arm64 kernel, pure cgroup v2, the aarch64 seccomp table for real.
                    stage("vm-aarch64", arm.and_then(|a| vm::smoke("aarch64", &a)));
                }
            }
            Err(e) => {
                stage("build", Err(e));
            }
        }
    }
    let failed: Vec<&str> = stages
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| *n)
        .collect();
    // The plain closing line CI reads.
    println!(
        "stages: {} passed, {} failed",
        stages.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed stages: {}", failed.join(", ")))
    }
}

/// Sigstore's bundle-verification vectors (`../shared/conformance/sigstore`, both path and
/// digest mode) against `nanoclaw bundle verify`, through `tests/conformance/sigstore-client`.
fn conformance(nanoclaw: &std::path::Path) -> Result {
    let root = util::root();
    let suite = root.join("../shared/conformance/sigstore");
    if !suite.join("run").is_file() {
        eprintln!(
            "xtask: conformance: SKIPPED: {} is not on this machine",
            suite.display()
        );
        return Ok(());
    }
    let run = Command::new(suite.join("run"))
        .arg(suite.join("cases"))
        .arg("--")
        .arg(root.join("tests/conformance/sigstore-client"))
        .env("NANOCLAW", nanoclaw)
        .output()
        .map_err(|e| format!("running {}: {e}", suite.join("run").display()))?;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let last = out
        .lines()
        .rfind(|l| l.contains(" passed, "))
        .unwrap_or_default()
        .to_owned();
    eprintln!("xtask: conformance: {last}");
    if run.status.success() && last.ends_with(" 0 failed") {
        Ok(())
    } else {
        Err(format!("sigstore conformance: {last}\n{out}"))
    }
}

/// The aarch64 static binary runs under qemu-user, and so do the pure unit tests.
fn aarch64(b: &util::Binaries) -> Result {
    let v = util::output(
        std::process::Command::new("qemu-aarch64-static")
            .arg(&b.nanoclaw)
            .arg("--version"),
    )?;
    if !v.contains("aarch64") {
        return Err(format!("aarch64 nanoclaw --version printed {v:?}"));
    }
    eprintln!("aarch64: {}", v.trim());
    // Pure-logic unit tests only: qemu-user cannot emulate seccomp, cgroups or namespaces for
    // the guest, so the real-kernel tests run in the VM tier instead.
    run(cargo().args([
        "test",
        "--target",
        "aarch64-unknown-linux-musl",
        "-p",
        "nanoclaw-proto",
        "-p",
        "nanoclaw",
        "--lib",
        "--",
        "--skip",
        "cgroup::",
        "--skip",
        "sandbox::",
    ]))
}
