//! `nanoclaw console` against a real daemon, driven through a real pseudo-terminal pair as a
//! terminal program would (and once through socat, a standard serial terminal program):
//! read-only without a token, changes only after `unlock` with a fleet-signed field-engineer
//! token, every line audited with who ran it, line noise, idle lock and a hangup mid-command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nanoclaw_tests::{Device, bins, keypair, wait_until};
use rustix::event::{PollFd, PollFlags, poll};
use serde_json::json;

/// The far end of a console: what a terminal program holds.
struct Terminal {
    writer: Option<std::fs::File>,
    seen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    console: Child,
}

impl Terminal {
    /// Opens a pty pair and starts the console on its slave side.
    fn pty(dev: &Device, extra: &[&str]) -> Terminal {
        use rustix::pty::OpenptFlags;
        let master: OwnedFd =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
                .unwrap();
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        let slave = rustix::pty::ptsname(&master, Vec::new()).unwrap();
        let slave = PathBuf::from(slave.to_str().unwrap());
        let console = Command::new(&bins().nanoclaw)
            .arg("console")
            .arg("--tty")
            .arg(&slave)
            .arg("--socket")
            .arg(dev.socket())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let master = std::fs::File::from(master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut reader = master.try_clone().unwrap();
        let (s, st) = (seen.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(&reader, PollFlags::IN)];
                let ts = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                if poll(&mut fds, Some(&ts)).unwrap_or(0) == 0 {
                    continue;
                }
                // EIO once the console closed the slave side: done.
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        Terminal {
            writer: Some(master),
            seen,
            stop,
            reader: Some(reader),
            console,
        }
    }

    /// Closes the terminal side (every copy of the master): a hangup for the console.
    fn hangup(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.writer = None;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.as_mut().unwrap().write_all(bytes).unwrap();
    }

    /// Waits until the output after byte `from` contains `needle`; returns that output.
    fn expect_from(&self, from: usize, needle: &str) -> String {
        wait_until(Duration::from_secs(20), || {
            let t = self.text();
            let tail = t.get(from..).unwrap_or("").to_owned();
            tail.contains(needle).then_some(tail)
        })
        .unwrap_or_else(|| panic!("the console never printed {needle:?}:\n{}", self.text()))
    }

    /// Sends a line and waits for `needle` in what follows it.
    fn run(&mut self, line: &str, needle: &str) -> String {
        let from = self.text().len();
        self.send(line.as_bytes());
        self.send(b"\r");
        self.expect_from(from, needle)
    }

    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        wait_until(Duration::from_secs(20), || {
            self.console.try_wait().ok().flatten()
        })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.console.kill();
        let _ = self.console.wait();
    }
}

/// A device `gw-17` whose fleet key is `keys/fleet.pem`, with the demo sensor running.
fn device() -> (Device, PathBuf) {
    let mut dev = Device::new();
    let keys = dev.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (key, public) = keypair(&keys, "fleet", false);
    dev.device["policy_key"] = json!(public);
    dev.device["device_id"] = json!("gw-17");
    dev.add_demo_agent("sensor");
    dev.start();
    dev.wait_state("sensor", "running");
    (dev, key)
}

fn token(key: &Path, devices: &str, validity: &[&str]) -> String {
    let mut args = vec![
        "engineer",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--engineer",
        "alice",
        "--devices",
        devices,
    ];
    args.extend(validity);
    let out = nanoclaw_tests::nanoclaw(&args);
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout.trim().to_owned()
}

fn console_records(dev: &Device) -> Vec<String> {
    dev.audit_of("console")
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn console_on_a_pty_reads_freely_and_changes_only_when_unlocked() {
    let (dev, key) = device();
    let mut t = Terminal::pty(&dev, &["--term", "dumb"]);
    let banner = t.expect_from(0, "gw-17> ");
    assert!(
        banner.contains("console on gw-17") && banner.contains("1 running"),
        "{banner}"
    );

    // Read-only commands work without a token.
    t.run("status", "policy version");
    let out = t.run("why sensor", "gw-17> ");
    assert!(out.contains("sensor: running"), "{out}");

    // A change is refused while locked, and audited as such.
    let pid = dev.agent("sensor")["pid"].clone();
    let out = t.run("restart sensor", "gw-17> ");
    assert!(out.contains("locked") && out.contains("unlock"), "{out}");
    assert_eq!(dev.agent("sensor")["pid"], pid);

    // Line noise: NUL, bell, broken UTF-8, an unknown escape sequence, a stray continuation
    // byte: the line still reads `agents`.
    let from = t.text().len();
    t.send(b"\x00\x07ag\xffen\x1b[99~t\x80s\r");
    let out = t.expect_from(from, "gw-17> ");
    assert!(out.contains("NAME") && out.contains("sensor"), "{out}");
    let out = t.run("frobnicate", "gw-17> ");
    assert!(out.contains("unknown command"), "{out}");
    let out = t.run(&"x".repeat(3500), "gw-17> ");
    assert!(out.contains("line longer than"), "{out}");

    // Tokens that do not hold.
    let rogue_dir = dev.path().join("rogue");
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let (rogue, _) = keypair(&rogue_dir, "rogue", false);
    for (tok, why) in [
        (token(&key, "gw-17", &["--not-after", "1000"]), "expired"),
        (
            token(&key, "cam-*", &["--ttl", "600"]),
            "not for this device",
        ),
        (
            token(&rogue, "gw-17", &["--ttl", "600"]),
            "not by the fleet key",
        ),
        ("{\"payload\":1}".to_owned(), "malformed"),
    ] {
        let out = t.run(&format!("unlock {tok}"), "gw-17> ");
        assert!(
            out.contains("unlock refused") && out.contains(why),
            "{why}: {out}"
        );
    }

    // A good token, pasted without echo.
    let good = token(&key, "gw-*", &["--ttl", "600"]);
    t.run("unlock", "not echoed");
    let from = t.text().len();
    t.send(good.as_bytes());
    t.send(b"\r");
    let out = t.expect_from(from, "gw-17 (alice)# ");
    assert!(out.contains("unlocked for alice"), "{out}");
    assert!(!t.text().contains(&good), "the token was echoed");
    t.run("restart sensor", "gw-17 (alice)# ");
    dev.wait(Duration::from_secs(20), "a new sensor pid", || {
        let a = dev.agent("sensor");
        (a["state"] == "running" && a["pid"] != pid).then_some(())
    });
    let out = t.run("history", "gw-17 (alice)# ");
    assert!(
        !out.contains("payload") && out.contains("restart sensor"),
        "{out}"
    );
    t.run("lock", "gw-17> ");
    let out = t.run("stop sensor", "gw-17> ");
    assert!(out.contains("locked"), "{out}");

    // A dumb terminal never gets an escape sequence.
    assert!(
        !t.text().contains('\x1b'),
        "escape codes sent to a dumb terminal"
    );

    // Hang up in the middle of a command: nothing runs, the console ends, the hangup is
    // audited.
    t.run("unlock @/nonexistent", "gw-17> ");
    t.run(&format!("unlock {good}"), "gw-17 (alice)# ");
    t.send(b"stop sens");
    std::thread::sleep(Duration::from_millis(300));
    t.hangup();
    let status = t.wait_exit().expect("the console did not end on hangup");
    assert!(status.success(), "{status}");
    assert_eq!(dev.agent("sensor")["state"], "running");

    let records = console_records(&dev);
    let has = |s: &str| records.iter().any(|r| r.contains(s));
    assert!(has("unauthenticated: status"), "{records:#?}");
    assert!(
        has("unauthenticated: restart sensor (refused: locked)"),
        "{records:#?}"
    );
    assert!(has("alice unlocked the console"), "{records:#?}");
    assert!(has("alice: restart sensor"), "{records:#?}");
    assert!(has("unlock refused: token expired"), "{records:#?}");
    assert!(has("alice: lock"), "{records:#?}");
    // After the last unlock only the hangup: the half-typed `stop sens` never ran.
    let last_unlock = records
        .iter()
        .rposition(|r| r.contains("unlocked the console"))
        .unwrap();
    let after = &records[last_unlock + 1..];
    assert!(
        after.len() == 1 && after[0].ends_with("alice: hangup"),
        "{records:#?}"
    );
    assert!(
        !records.iter().any(|r| r.contains("payload")),
        "a token reached the audit log"
    );
}

#[test]
fn ansi_terminals_get_history_and_idle_sessions_lock() {
    let (dev, key) = device();
    let mut t = Terminal::pty(&dev, &["--term", "ansi", "--idle", "2"]);
    t.expect_from(0, "gw-17> ");
    t.run("agents", "gw-17> ");
    // Up arrow recalls `agents`; left arrow and an insert edit it into `agents --json`.
    let from = t.text().len();
    t.send(b"\x1b[A --json\r");
    let out = t.expect_from(from, "\"memory_limit_bytes\"");
    assert!(out.contains("\x1b[K"), "no in-place redraw: {out:?}");
    let good = token(&key, "gw-17", &["--ttl", "600"]);
    t.run(&format!("unlock {good}"), "gw-17 (alice)# ");
    // Idle for longer than --idle: the session locks itself.
    let out = t.expect_from(t.text().len(), "locked after 2 s idle");
    assert!(!out.contains("alice)#"), "{out}");
    let out = t.run("restart sensor", "gw-17> ");
    assert!(out.contains("locked"), "{out}");
    t.run("exit", "bye");
    assert!(t.wait_exit().is_some_and(|s| s.success()));
    let records = console_records(&dev);
    assert!(
        records.iter().any(|r| r.contains("lock (idle 2 s)")),
        "{records:#?}"
    );
    assert!(
        records.iter().any(|r| r.ends_with(": exit")),
        "{records:#?}"
    );
}

#[test]
fn socat_as_the_serial_terminal_and_a_pipe_without_a_tty() {
    let (dev, key) = device();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyS0");
    // socat makes a pty (its slave at `link`) and relays it to and from its own stdio: the
    // test types into socat like a field engineer into picocom.
    let mut socat = Command::new("socat")
        .arg("-")
        .arg(format!("PTY,link={},raw,echo=0", link.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("socat (Debian socat) is installed by `cargo xtask test`");
    wait_until(Duration::from_secs(10), || link.exists().then_some(())).expect("socat made no pty");
    let mut console = Command::new(&bins().nanoclaw)
        .args(["console", "--baud", "115200", "--tty"])
        .arg(&link)
        .arg("--socket")
        .arg(dev.socket())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = socat.stdin.take().unwrap();
    let mut output = socat.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = output.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let wait_for = |needle: &str| {
        wait_until(Duration::from_secs(20), || {
            text().contains(needle).then_some(())
        })
        .unwrap_or_else(|| panic!("no {needle:?} over socat:\n{}", text()))
    };
    wait_for("gw-17> ");
    let good = token(&key, "gw-17", &["--ttl", "600"]);
    input
        .write_all(format!("battery\runlock {good}\rstop sensor\r").as_bytes())
        .unwrap();
    wait_for("source");
    dev.wait_state("sensor", "stopped");
    // The serial line drops: socat ends, the console sees the hangup and ends too.
    drop(input);
    let _ = socat.wait();
    let status = wait_until(Duration::from_secs(20), || {
        console.try_wait().ok().flatten()
    });
    if status.is_none() {
        let _ = console.kill();
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "console still running after the hangup"
    );
    assert!(
        text().contains("\r\n"),
        "newlines go out as CR LF on a serial line"
    );

    // Without a tty (ssh without -t, a script): lines in, answers out, no echo.
    let mut pipe = Command::new(&bins().nanoclaw)
        .args(["console", "--socket"])
        .arg(dev.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    pipe.stdin
        .take()
        .unwrap()
        .write_all(b"agents\nstart sensor\nexit\n")
        .unwrap();
    let out = pipe.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("sensor") && out.contains("locked") && out.contains("bye"),
        "{out}"
    );
    // Nothing shows what a pipe typed: no echo.
    assert!(!out.contains("start sensor"), "{out}");
    assert_eq!(dev.agent("sensor")["state"], "stopped");
}
