//! Host tier: the daemon as a systemd service, through the notification protocol itself (a
//! real datagram socket where systemd would listen): `READY=1` only once the control socket
//! serves, `WATCHDOG=1` from the event loop at half the watchdog interval, `STOPPING=1` on
//! SIGTERM; and the shipped unit files pass `systemd-analyze verify`.
// Test support code: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use nanoclaw_tests::{Device, grant, manifest};

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn notifications(sock: UnixDatagram, notify_socket: String) {
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut dev = Device::new();
    dev.add_agent(
        "idle",
        manifest("idle", "service", &["sleep"], "8MiB"),
        Some(grant("8MiB")),
    );
    dev.daemon_env = vec![
        ("NOTIFY_SOCKET".into(), notify_socket),
        ("WATCHDOG_USEC".into(), "200000".into()),
    ];
    // Not `start()`, which waits for the control socket itself: READY=1 alone must say it serves.
    dev.spawn();
    assert_eq!(recv(&sock), "READY=1");
    assert!(
        UnixStream::connect(dev.socket()).is_ok(),
        "ready means the control socket serves"
    );
    // 100 ms apart: about 10 in a second (the first is sent with READY).
    let t0 = Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(1) {
        assert_eq!(recv(&sock), "WATCHDOG=1");
        pings += 1;
    }
    assert!((8..=13).contains(&pings), "{pings} pings in a second");
    // A manager that stops reading never stalls the daemon: fill the queue, then it still serves.
    std::thread::sleep(Duration::from_secs(2));
    dev.wait_state("idle", "running");
    assert_eq!(dev.agent("idle")["restarts"], 0);
    // Make room for STOPPING=1 (pings that find the queue full are dropped, by design).
    let mut buf = [0u8; 512];
    sock.set_nonblocking(true).unwrap();
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
    let status = dev.sigterm();
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
}

#[test]
fn the_daemon_notifies_on_a_path_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    notifications(sock, path.to_str().unwrap().to_owned());
}

#[test]
fn the_daemon_notifies_on_an_abstract_socket() {
    let name = format!("nanoclaw-test-notify-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    notifications(sock, format!("@{name}"));
}

/// The shipped units (packaging/systemd/) as systemd itself reads them: `systemd-analyze
/// verify` reports nothing, with `ExecStart=` pointed at the binaries this run built.
#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let units = nanoclaw_tests::workspace_root().join("packaging/systemd");
    let mut files = Vec::new();
    for (unit, installed, built) in [
        (
            "nanoclaw.service",
            "/usr/sbin/nanoclaw ",
            nanoclaw_tests::bins().nanoclaw.clone(),
        ),
        (
            "nanoclaw-fleet.service",
            "/usr/bin/nanoclaw-fleet ",
            nanoclaw_tests::fleet::fleet_bin().clone(),
        ),
    ] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        assert!(text.contains(&format!("ExecStart={installed}")), "{unit}");
        let text = text.replace(installed, &format!("{} ", built.display()));
        let f = dir.path().join(unit);
        std::fs::write(&f, text).unwrap();
        files.push(f);
    }
    let out = nanoclaw_tests::run(
        std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&files),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stderr.trim(), "", "systemd-analyze verify: {out:?}");
    let unit = std::fs::read_to_string(units.join("nanoclaw.service")).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "KillMode=process",
    ] {
        assert!(unit.contains(needed), "nanoclaw.service lacks {needed}");
    }
}

/// stderr on a full disk (`/dev/full`: every write fails with ENOSPC), as a log file under
/// OpenRC or BusyBox init can be: the daemon keeps supervising, starting and restarting
/// agents, instead of aborting on its first failed log line.
#[test]
fn a_daemon_whose_stderr_is_full_keeps_running() {
    let mut dev = Device::new();
    dev.add_agent(
        "idle",
        manifest("idle", "service", &["sleep"], "8MiB"),
        Some(grant("8MiB")),
    );
    dev.daemon_output = Some("/dev/full".into());
    dev.start();
    dev.wait_state("idle", "running");
    // More log lines: a restart is audited (and echoed to stderr) twice.
    let out = dev.cli(&["restart", "idle"]);
    assert_eq!(out.code, 0, "{out:?}");
    dev.wait_state("idle", "running");
    assert!(
        dev.daemon_pid().is_some_and(nanoclaw_tests::alive),
        "the daemon died on a failed write to stderr"
    );
    let status = dev.sigterm();
    assert!(status.success(), "{status}");
}

/// What started the daemon must not decide what its agents hear: an rc script's background
/// job ignores SIGINT and SIGQUIT, and ignored signals stay ignored across exec, so without
/// a reset every agent would ignore them too.
#[test]
fn agents_do_not_inherit_ignored_signals_from_what_started_the_daemon() {
    let mut dev = Device::new();
    dev.add_agent(
        "probe",
        manifest("probe", "task", &["probe"], "16MiB"),
        Some(grant("16MiB")),
    );
    dev.daemon_shell = Some("trap '' INT QUIT".into());
    dev.start();
    // `SigIgn:` of /proc/PID/status, a hex mask (bit N-1: signal N).
    let ignored = |text: &str| u64::from_str_radix(text.trim(), 16).expect("a hex SigIgn mask");
    let status = std::fs::read_to_string(format!("/proc/{}/status", dev.daemon_pid().unwrap()))
        .unwrap_or_default();
    let daemon = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map_or(0, ignored);
    // The daemon itself was started ignoring them (bits 1 and 2: SIGINT, SIGQUIT) …
    assert_eq!(
        daemon & 0b110,
        0b110,
        "the test's shell did not ignore them"
    );
    // … the agent is not.
    let lines = dev.wait_log("probe", "PROBE ");
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("PROBE "))
        .expect("a PROBE line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let agent = v["sigign"].as_str().map(ignored).expect("sigign");
    // (The probe reports after its own runtime's start-up, which ignores SIGPIPE itself.)
    assert_eq!(
        agent & 0b110,
        0,
        "the agent starts ignoring SIGINT or SIGQUIT: {line}"
    );
    assert!(dev.sigterm().success());
}
