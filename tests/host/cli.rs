//! CLI exit codes (docs: 0 ok, 1 failed, 2 usage, 3 daemon unreachable, 4 no such agent,
//! 5 not root).

// Integration tests: helpers outside #[test] functions fail the test by panicking, like the
// tests themselves (clippy only exempts #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nanoclaw_tests::{Device, grant, manifest, nanoclaw};

#[test]
fn usage_errors_exit_2() {
    nanoclaw_tests::require_root();
    for args in [
        &["frobnicate"][..],
        &["start"],
        &["logs", "a", "-n", "x"],
        &["status", "--bogus"],
        &["daemon"],
        &[],
    ] {
        let out = nanoclaw(args);
        assert_eq!(out.code, 2, "nanoclaw {args:?}: {out:?}");
        assert!(out.stderr.contains("usage"), "{args:?}: {out:?}");
    }
}

#[test]
fn unreachable_daemon_exits_3() {
    nanoclaw_tests::require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("nobody-listens.sock");
    let sock = sock.to_str().expect("utf-8 path");
    for cmd in [&["status"][..], &["agents", "--json"], &["stop", "x"]] {
        let mut args = vec!["--socket", sock];
        args.extend_from_slice(cmd);
        let out = nanoclaw(&args);
        assert_eq!(out.code, 3, "nanoclaw {args:?}: {out:?}");
        assert!(
            out.stderr.contains(sock),
            "the message names the socket: {out:?}"
        );
    }
    // A stale socket file with no daemon behind it is unreachable too.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).expect("bind"));
    let stale = dir.path().join("stale.sock");
    let out = nanoclaw(&["--socket", stale.to_str().expect("utf-8"), "status"]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn unknown_agent_exits_4_and_known_agents_work() {
    let mut dev = Device::new();
    dev.add_agent(
        "known",
        manifest("known", "service", &["sleep"], "16MiB"),
        Some(grant("16MiB")),
    );
    dev.start();
    dev.wait_state("known", "running");
    for cmd in ["start", "stop", "restart", "why", "logs"] {
        let out = dev.cli(&[cmd, "nope"]);
        assert_eq!(out.code, 4, "{cmd} nope: {out:?}");
        assert!(out.stderr.contains("nope"), "{cmd}: {out:?}");
    }
    for args in [
        &["status"][..],
        &["agents"],
        &["why", "known"],
        &["logs", "known"],
        &["audit", "--agent", "known", "-n", "5"],
    ] {
        let out = dev.cli(args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
    }
    // `sync` on a device without fleet sync fails and says why.
    let out = dev.cli(&["sync"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no fleet sync"), "{out:?}");
    // A reader that goes away (`nanoclaw status | head -1`) ends the CLI quietly, no panic.
    let mut child = dev
        .command()
        .arg("status")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning nanoclaw status");
    drop(child.stdout.take());
    let out = child
        .wait_with_output()
        .expect("waiting for nanoclaw status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let a = dev.json(&["audit", "--agent", "known"]);
    let recs = a.as_array().expect("array");
    assert!(
        !recs.is_empty() && recs.iter().all(|r| r["agent"] == "known"),
        "{a}"
    );
    for r in recs {
        for k in ["seq", "time", "agent", "kind", "reason"] {
            assert!(!r[k].is_null(), "audit record lacks {k}: {r}");
        }
    }
    for a in dev.agents_json() {
        for k in [
            "name",
            "version",
            "state",
            "pid",
            "restarts",
            "memory_bytes",
            "memory_limit_bytes",
        ] {
            assert!(a.get(k).is_some(), "agents --json lacks {k}: {a}");
        }
    }
}
