//! Example agents, one static multi-call binary (`demo-agent ROLE [ARGS]`) so every demo
//! rootfs holds a single small file:
//!
//! - `sensor [INTERVAL_S]`: a well-behaved service printing a reading periodically.
//! - `memhog [STEP_MIB]`: allocates and touches memory until the kernel OOM-kills it.
//! - `forkbomb`: spawns children until the pids limit refuses, then holds them.
//! - `escape`: tries to read host files and write outside its scratch, reporting each result.
//! - `probe`: prints what the sandbox looks like from inside, as JSON (used by tests).
//! - `sleep`, `exit CODE`, `ignore-term`: helpers for tests.
//! - `try-mount`: calls mount(2) on a mount point that does not exist and reports the errno
//!   (EPERM means the seccomp filter refused it before the kernel looked at the path; without
//!   the filter the answer would be ENOENT).
//! - `syscall-socket`: creates an AF_UNIX socket and reports the result (under the `strict`
//!   seccomp profile the kernel kills the process with SIGSYS instead).
//! - `scratch`: lists `/tmp`, writes `/tmp/marker`, lists again, then sleeps.
//! - `connect [--stay] [--repeat N] [udp:]ADDR|sleep:MS ...`: connects (or sends one UDP
//!   datagram) to each address in turn, printing `connect ADDR: ok` or `denied (error)`.
//! - `hostile [MS]`: a raw socket, a mount, ptrace of a sibling, exec from the scratch and
//!   from a memfd, a host file through /proc; prints each outcome; with MS, every MS
//!   milliseconds forever.
//! - `stat-storm N`: N `lstat`s of `/go` as fast as possible (the call `wait-file` polls
//!   with), then sleeps: a syscall rate far above any learned baseline.
//! - `revoke-probe DELAY_MS DENIED N ALLOWED`: measures how fast an `on_violation`
//!   `revoke_network` rule cuts the agent off (see the function).
//! - `wait-file PATH ROLE [ARGS]`: waits until PATH exists, then runs ROLE (tests use it to
//!   trigger a role at a moment of their choosing).
//! - `sock STEP...`: talks to the supervisor over `/run/nanoclaw.sock`. A step is a JSON
//!   request (sent; the answer is printed as `sock< ANSWER`), `raw:TEXT` (sent verbatim),
//!   `flood:N` (N requests without waiting), `big:N` (a request of about N bytes), `read:N` (print N more lines), `sleep:MS`,
//!   `file:PATH` (send the file's first line: a grant token a test wrote into the bundle),
//!   `connect:ADDR` (a TCP connect, reported like `connect`) or `stay` (print whatever
//!   arrives, forever).
//! - `heartbeat MS [COUNT]`: `hello`, then a heartbeat every MS ms; after COUNT heartbeats it
//!   goes silent but keeps running (a health-check failure).
//! - `memhold MIB`: allocates and touches MIB MiB, then sleeps.
//! - `burn`: spins on one core, printing the work done per second (`burn: N/s`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args)
}

fn run(args: &[String]) -> ExitCode {
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("sensor") => sensor(arg(1).and_then(|s| s.parse().ok()).unwrap_or(2)),
        Some("memhog") => memhog(arg(1).and_then(|s| s.parse().ok()).unwrap_or(4)),
        Some("forkbomb") => forkbomb(),
        Some("escape") => escape(),
        Some("probe") => probe(&args[1..]),
        Some("sleep") => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Some("exit") => ExitCode::from(arg(1).and_then(|s| s.parse().ok()).unwrap_or(1)),
        Some("ignore-term") => ignore_term(),
        Some("try-mount") => try_mount(),
        Some("syscall-socket") => syscall_socket(),
        Some("scratch") => scratch(),
        Some("connect") => connect(&args[1..]),
        Some("exec-scratch") => exec_scratch(),
        Some("hostile") => match arg(1).and_then(|s| s.parse::<u64>().ok()) {
            // `hostile MS`: every MS milliseconds, forever (enforcement while no supervisor runs).
            Some(ms) => loop {
                hostile();
                std::thread::sleep(Duration::from_millis(ms));
            },
            None => hostile(),
        },
        Some("connect-time") => {
            let code = connect_time(
                arg(1).and_then(|s| s.parse().ok()).unwrap_or(1000),
                arg(2).unwrap_or("127.0.0.1:1"),
            );
            // `stay`: keep running (its rules stay loaded) until stopped.
            while arg(3) == Some("stay") {
                std::thread::sleep(Duration::from_secs(3600));
            }
            code
        }
        Some("revoke-probe") if args.len() >= 5 => revoke_probe(
            arg(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            &args[2],
            arg(3).and_then(|s| s.parse().ok()).unwrap_or(3),
            &args[4],
        ),
        Some("syscall-loop") => syscall_loop(
            arg(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000),
            arg(2).and_then(|s| s.parse().ok()).unwrap_or(5),
        ),
        Some("stat-storm") => {
            // The syscall wait-file polls with, as fast as possible: a rate anomaly.
            let n: u64 = arg(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
            let hits = (0..n)
                .filter(|_| std::fs::symlink_metadata("/go").is_ok())
                .count();
            println!("stat-storm: {n} stats ({hits} found)");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("sock") => sock(&args[1..]),
        Some("heartbeat") => heartbeat(
            arg(1).and_then(|s| s.parse().ok()).unwrap_or(1000),
            arg(2).and_then(|s| s.parse().ok()),
        ),
        Some("burn") => burn(),
        Some("memhold") => {
            let mib: usize = arg(1).and_then(|s| s.parse().ok()).unwrap_or(16);
            let held = vec![0x5au8; mib << 20];
            println!("memhold: holding {} MiB", held.len() >> 20);
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
                std::hint::black_box(&held);
            }
        }
        Some("wait-file") if args.len() >= 3 => {
            while std::fs::symlink_metadata(&args[1]).is_err() {
                std::thread::sleep(Duration::from_millis(50));
            }
            run(&args[2..])
        }
        _ => {
            eprintln!(
                "usage: demo-agent sensor|memhog|forkbomb|escape|probe|sleep|exit N|ignore-term|\
                 try-mount|syscall-socket|scratch|connect [udp:]ADDR...|wait-file PATH ROLE [ARGS]"
            );
            ExitCode::from(2)
        }
    }
}

/// Spins on one core, printing how much work it got done each second (`burn: N/s`): a CPU
/// throttle shows as a drop in N.
fn burn() -> ExitCode {
    let mut x: u64 = 1;
    loop {
        let t0 = std::time::Instant::now();
        let mut n: u64 = 0;
        while t0.elapsed() < Duration::from_secs(1) {
            for _ in 0..10_000 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            }
            n += 1;
        }
        println!("burn: {n}/s ({})", x % 10);
        let _ = std::io::stdout().flush();
    }
}

const SOCKET: &str = "/run/nanoclaw.sock";

/// Connects to the agent socket, retrying briefly (the supervisor creates it before the
/// agent starts, so a failure here is real).
fn sock_connect() -> Option<std::os::unix::net::UnixStream> {
    for _ in 0..20 {
        match std::os::unix::net::UnixStream::connect(SOCKET) {
            Ok(s) => return Some(s),
            Err(e) => {
                println!("sock: connect {SOCKET}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    None
}

fn sock(steps: &[String]) -> ExitCode {
    use std::io::{BufRead, BufReader};
    let Some(stream) = sock_connect() else {
        return ExitCode::from(1);
    };
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            println!("sock: {e}");
            return ExitCode::from(1);
        }
    };
    let mut r = BufReader::new(stream);
    let read_line = |r: &mut BufReader<std::os::unix::net::UnixStream>| {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(0) => println!("sock< EOF"),
            Ok(_) => print!("sock< {l}"),
            Err(e) => println!("sock< error {e}"),
        }
        let _ = std::io::stdout().flush();
    };
    for step in steps {
        if let Some(ms) = step.strip_prefix("sleep:") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        } else if let Some(n) = step.strip_prefix("read:") {
            for _ in 0..n.parse::<usize>().unwrap_or(1) {
                read_line(&mut r);
            }
        } else if let Some(n) = step.strip_prefix("flood:") {
            let n: usize = n.parse().unwrap_or(1000);
            let mut sent = 0;
            for _ in 0..n {
                if w.write_all(b"{\"op\":\"whoami\"}\n").is_err() {
                    break;
                }
                sent += 1;
            }
            println!("sock: flooded {sent} requests");
        } else if let Some(addr) = step.strip_prefix("connect:") {
            let r = addr
                .parse::<std::net::SocketAddr>()
                .map_err(std::io::Error::other)
                .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)));
            match r {
                Ok(_) => println!("connect {addr}: ok"),
                Err(e) => println!("connect {addr}: denied ({e})"),
            }
        } else if step == "stay" {
            loop {
                read_line(&mut r);
            }
        } else {
            let line = if let Some(t) = step.strip_prefix("raw:") {
                t.to_owned()
            } else if let Some(n) = step.strip_prefix("big:") {
                format!(
                    "{{\"op\":\"whoami\",\"pad\":\"{}\"}}",
                    "x".repeat(n.parse().unwrap_or(70_000))
                )
            } else if let Some(p) = step.strip_prefix("file:") {
                std::fs::read_to_string(p)
                    .map(|s| s.lines().next().unwrap_or_default().to_owned())
                    .unwrap_or_else(|e| format!("(cannot read {p}: {e})"))
            } else {
                step.clone()
            };
            if let Err(e) = w.write_all(format!("{line}\n").as_bytes()) {
                // The supervisor may have closed the connection: its last words are still
                // there to read.
                println!("sock: write: {e}");
            }
            read_line(&mut r);
        }
    }
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

fn heartbeat(ms: u64, count: Option<u64>) -> ExitCode {
    use std::io::{BufRead, BufReader};
    let Some(stream) = sock_connect() else {
        return ExitCode::from(1);
    };
    let Ok(mut w) = stream.try_clone() else {
        return ExitCode::from(1);
    };
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let _ = w.write_all(b"{\"op\":\"hello\",\"protocol\":1}\n");
    let _ = r.read_line(&mut line);
    print!("heartbeat: hello {line}");
    let mut n = 0u64;
    loop {
        if count.is_none_or(|c| n < c) {
            line.clear();
            let _ = w.write_all(b"{\"op\":\"heartbeat\",\"status\":\"fine\"}\n");
            let _ = r.read_line(&mut line);
            n += 1;
            println!("heartbeat {n}");
        } else if n == count.unwrap_or(0) {
            println!("heartbeat: going silent after {n}");
            n += 1;
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(ms));
    }
}

fn sensor(interval_s: u64) -> ExitCode {
    let mut reading: u64 = 20_000;
    let mut n = 0u64;
    loop {
        // A cheap deterministic "temperature" walk.
        reading = (reading * 1_103_515_245 + 12_345) % 40_000;
        n += 1;
        println!("reading {n}: {:.2} C", 10.0 + reading as f64 / 2000.0);
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(interval_s));
    }
}

fn memhog(step_mib: usize) -> ExitCode {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really charged to the cgroup.
        held.push(vec![0x5a; step_mib << 20]);
        println!("memhog: holding {} MiB", held.len() * step_mib);
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn forkbomb() -> ExitCode {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/bin/demo-agent".into());
    let mut children = Vec::new();
    let mut refused = 0;
    for _ in 0..10_000 {
        match std::process::Command::new(&exe).arg("sleep").spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                refused += 1;
                if refused == 1 {
                    println!(
                        "forkbomb: the kernel refused child {} ({e}); holding {} children",
                        children.len() + 1,
                        children.len()
                    );
                    let _ = std::io::stdout().flush();
                }
                if refused > 50 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    println!(
        "forkbomb: gave up after {refused} refusals with {} children",
        children.len()
    );
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn attempt(what: &str, r: std::io::Result<()>) -> bool {
    match r {
        Ok(()) => {
            println!("escape: {what}: SUCCEEDED");
            true
        }
        Err(e) => {
            println!("escape: {what}: denied ({e})");
            false
        }
    }
}

fn escape() -> ExitCode {
    let mut escaped = false;
    escaped |= attempt("read /etc/shadow", std::fs::read("/etc/shadow").map(drop));
    escaped |= attempt(
        "read the host's /proc/1/root/etc/shadow",
        std::fs::read("/proc/1/root/etc/shadow").map(drop),
    );
    escaped |= attempt("write /bin/pwned", std::fs::write("/bin/pwned", b"x"));
    escaped |= attempt("write /etc-pwned", std::fs::write("/etc-pwned", b"x"));
    escaped |= attempt("create /dev/pwned", std::fs::write("/dev/pwned", b"x"));
    escaped |= attempt(
        "list the host's /sys/fs/cgroup",
        std::fs::read_dir("/sys/fs/cgroup").map(drop),
    );
    let scratch = std::fs::write("/tmp/scratch-ok", b"mine");
    println!("escape: write /tmp/scratch-ok (own scratch): {scratch:?}");
    let _ = std::io::stdout().flush();
    if escaped {
        println!("escape: at least one attempt got out of the sandbox");
        ExitCode::from(1)
    } else {
        println!("escape: every attempt was contained");
        ExitCode::SUCCESS
    }
}

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(&format!("{name}:"))
                    .map(|v| v.trim().to_owned())
            })
        })
        .unwrap_or_default()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            c if (c as u32) < 0x20 => out += &format!("\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out + "\""
}

/// Prints one JSON object describing the sandbox from inside. Extra args name files whose
/// existence to report, and `write:PATH` entries to try writing.
fn probe(extra: &[String]) -> ExitCode {
    let mut fields: Vec<(String, String)> = vec![];
    for f in [
        "Uid",
        "Gid",
        "CapEff",
        "CapPrm",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
        "SigIgn",
    ] {
        fields.push((f.to_lowercase(), json_str(&status_field(f))));
    }
    fields.push(("pid".into(), std::process::id().to_string()));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    fields.push(("hostname".into(), json_str(hostname.trim())));
    let list = |p: &str| -> String {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| json_str(&e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        format!("[{}]", v.join(","))
    };
    fields.push(("root".into(), list("/")));
    fields.push(("tmp".into(), list("/tmp")));
    fields.push(("dev".into(), list("/dev")));
    fields.push(("proc_pids".into(), {
        let n = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                    .count()
            })
            .unwrap_or(0);
        n.to_string()
    }));
    let mut checks = vec![];
    for e in extra {
        if let Some(p) = e.strip_prefix("write:") {
            let r = std::fs::write(p, b"probe");
            checks.push(format!(
                "{}:{}",
                json_str(e),
                json_str(&r.err().map_or("ok".into(), |e| e.to_string()))
            ));
        } else {
            let r = std::fs::metadata(e);
            checks.push(format!(
                "{}:{}",
                json_str(e),
                json_str(&r.err().map_or("ok".into(), |e| e.to_string()))
            ));
        }
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .chain(std::iter::once(format!(
            "\"checks\":{{{}}}",
            checks.join(",")
        )))
        .collect();
    println!("PROBE {{{}}}", body.join(","));
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

fn ignore_term() -> ExitCode {
    sys::ignore_sigterm();
    println!("ignore-term: running with SIGTERM ignored");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn try_mount() -> ExitCode {
    const TARGET: &str = "/nonexistent-nanoclaw-mountpoint";
    match sys::mount_tmpfs(TARGET) {
        Ok(()) => println!("try-mount: mount() on {TARGET} SUCCEEDED"),
        Err(e) => println!(
            "try-mount: mount() on {TARGET} failed with errno {} ({e})",
            e.raw_os_error().unwrap_or(0)
        ),
    }
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

fn syscall_socket() -> ExitCode {
    println!("syscall-socket: calling socket(AF_UNIX, SOCK_DGRAM)");
    let _ = std::io::stdout().flush();
    match std::os::unix::net::UnixDatagram::unbound() {
        Ok(_) => println!("syscall-socket: socket() returned a descriptor"),
        Err(e) => println!("syscall-socket: socket() failed ({e})"),
    }
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

fn scratch() -> ExitCode {
    let list = || -> String {
        let mut v: Vec<String> = std::fs::read_dir("/tmp")
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        format!("[{}]", v.join(","))
    };
    println!("scratch: before: {}", list());
    let w = std::fs::write("/tmp/marker", b"written by the previous run");
    println!("scratch: write /tmp/marker: {w:?}");
    println!("scratch: after: {}", list());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

mod sys {
    //! The demo's only `unsafe`: std has no way to ignore a signal or call mount(2).
    #![allow(unsafe_code)]

    pub fn ignore_sigterm() {
        // SAFETY: SIG_IGN is a valid disposition for SIGTERM; no handler code runs.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }

    /// mount("none", target, "tmpfs", 0, NULL).
    pub fn mount_tmpfs(target: &str) -> std::io::Result<()> {
        let target = std::ffi::CString::new(target).map_err(std::io::Error::other)?;
        // SAFETY: every pointer is a valid NUL-terminated C string that outlives the call
        // (c"..." literals are static, `target` lives to the end of this function), and a
        // NULL `data` is allowed for tmpfs.
        let r = unsafe {
            libc::mount(
                c"none".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn check(r: libc::c_long) -> std::io::Result<()> {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// socket(AF_INET, SOCK_RAW, IPPROTO_ICMP), closed again on success.
    pub fn raw_socket() -> std::io::Result<()> {
        // SAFETY: integer arguments only; a returned fd is closed right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        if fd >= 0 {
            // SAFETY: `fd` was just returned to us and is not used afterwards.
            unsafe { libc::close(fd) };
        }
        check(fd.into())
    }

    /// memfd_create("x", 0): an anonymous file (not close-on-exec) for a fileless exec.
    pub fn memfd() -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: a static NUL-terminated name and integer flags.
        let fd = unsafe { libc::memfd_create(c"x".as_ptr(), 0) };
        check(fd.into())?;
        // SAFETY: `fd` was just returned to us and is owned by nothing else.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    /// ptrace(PTRACE_ATTACH, pid): on success, detaches again.
    pub fn ptrace_attach(pid: i32) -> std::io::Result<()> {
        // SAFETY: PTRACE_ATTACH/DETACH take a pid and ignore the pointer arguments.
        let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) };
        if r == 0 {
            // SAFETY: as above.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
        }
        check(r)
    }
}

/// Tries each destination (`ip:port` → TCP connect, `udp:ip:port` → UDP sendto) and prints
/// `connect DEST: ok` or `connect DEST: denied (error)` (`sleep:MS` pauses between them);
/// exits 0 either way, or with a leading `--stay` keeps running afterwards.
fn connect(dests: &[String]) -> ExitCode {
    let (stay, dests) = match dests.split_first() {
        Some((first, rest)) if first == "--stay" => (true, rest),
        _ => (false, dests),
    };
    // `--repeat N`: the whole list N times (a denial flood).
    let (repeat, dests) = match dests {
        [flag, n, rest @ ..] if flag == "--repeat" => (n.parse::<usize>().unwrap_or(1), rest),
        _ => (1, dests),
    };
    for d in std::iter::repeat_n(dests, repeat).flatten() {
        if let Some(ms) = d.strip_prefix("sleep:").and_then(|m| m.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
            continue;
        }
        let result = match d.strip_prefix("udp:") {
            Some(addr) => addr
                .parse::<std::net::SocketAddr>()
                .map_err(std::io::Error::other)
                .and_then(|a| {
                    let any: std::net::SocketAddr = if a.is_ipv4() {
                        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
                    } else {
                        "[::]:0".parse().map_err(std::io::Error::other)?
                    };
                    std::net::UdpSocket::bind(any)?
                        .send_to(b"hello", a)
                        .map(drop)
                }),
            None => d
                .parse::<std::net::SocketAddr>()
                .map_err(std::io::Error::other)
                .and_then(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).map(drop)
                }),
        };
        match result {
            Ok(()) => println!("connect {d}: ok"),
            Err(e) => println!("connect {d}: denied ({e})"),
        }
    }
    let _ = std::io::stdout().flush();
    if stay {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    ExitCode::SUCCESS
}

/// Copies this program into the scratch (/tmp), marks it executable and tries to run it:
/// prints `exec-scratch: ran` or `exec-scratch: denied (error)`.
fn exec_scratch() -> ExitCode {
    use std::os::unix::fs::PermissionsExt;
    let r = std::fs::copy("/bin/demo-agent", "/tmp/smuggled")
        .and_then(|_| {
            std::fs::set_permissions("/tmp/smuggled", std::fs::Permissions::from_mode(0o755))
        })
        .and_then(|()| {
            std::process::Command::new("/tmp/smuggled")
                .arg("exit")
                .arg("0")
                .status()
        });
    match r {
        Ok(s) => println!("exec-scratch: ran ({s})"),
        Err(e) => println!("exec-scratch: denied ({e})"),
    }
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

/// The hostile acts the fallback chain (seccomp, capabilities, mounts) must refuse; prints
/// `hostile ACT: denied (error)` or `hostile ACT: SUCCEEDED` for each.
fn hostile() -> ExitCode {
    let report = |act: &str, r: std::io::Result<()>| match r {
        Ok(()) => println!("hostile {act}: SUCCEEDED"),
        Err(e) => println!("hostile {act}: denied ({e})"),
    };
    report("raw-socket", sys::raw_socket());
    report("mount-tmpfs", sys::mount_tmpfs("/tmp"));
    match std::process::Command::new("/bin/demo-agent")
        .arg("sleep")
        .spawn()
    {
        Ok(mut sibling) => {
            report("ptrace-sibling", sys::ptrace_attach(sibling.id() as i32));
            let _ = sibling.kill();
            let _ = sibling.wait();
        }
        Err(e) => println!("hostile ptrace-sibling: no sibling ({e})"),
    }
    report("scratch-exec", exec_copy_of_self_in_scratch());
    report("memfd-exec", exec_from_memfd());
    report(
        "proc-root-host-file",
        std::fs::read("/proc/1/root/../../etc/hostname").map(drop),
    );
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

/// Copies this binary into the scratch /tmp and runs it (`exit 0`).
fn exec_copy_of_self_in_scratch() -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy("/bin/demo-agent", "/tmp/smuggled-sh")?;
    std::fs::set_permissions("/tmp/smuggled-sh", std::fs::Permissions::from_mode(0o755))?;
    std::process::Command::new("/tmp/smuggled-sh")
        .args(["exit", "0"])
        .status()
        .map(drop)
}

/// A fileless exec: this binary copied into a memfd and run from /proc/self/fd (`exit 0`).
fn exec_from_memfd() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = sys::memfd()?;
    let mut f = std::fs::File::from(fd);
    f.write_all(&std::fs::read("/bin/demo-agent")?)?;
    std::process::Command::new(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .args(["exit", "0"])
        .status()
        .map(drop)
}

/// A syscall-heavy loop (getppid) for the monitoring benchmark: prints
/// `syscall-loop: N calls in T ns` per round.
fn syscall_loop(calls: u64, rounds: u32) -> ExitCode {
    for _ in 0..rounds {
        let t0 = std::time::Instant::now();
        let mut acc = 0u64;
        for _ in 0..calls {
            acc = acc.wrapping_add(u64::from(std::os::unix::process::parent_id()));
        }
        println!(
            "syscall-loop: {calls} calls in {} ns ({acc})",
            t0.elapsed().as_nanos()
        );
        let _ = std::io::stdout().flush();
    }
    ExitCode::SUCCESS
}

/// After `delay_ms`, knocks `n` times on `denied` (a destination outside the allowlist), then
/// connects to `allowed` (a closed port: "refused" while allowed) until the kernel answers
/// EPERM: prints `revoke-probe: cut off after T us (K connects got through)`. With a policy
/// `on_violation` rule of `n` denials → `revoke_network`, T is the time from the last denial
/// to the revocation holding in the kernel (ring buffer, daemon, map update).
fn revoke_probe(delay_ms: u64, denied: &str, n: u32, allowed: &str) -> ExitCode {
    let (Ok(denied), Ok(allowed)) = (
        denied.parse::<std::net::SocketAddr>(),
        allowed.parse::<std::net::SocketAddr>(),
    ) else {
        eprintln!("revoke-probe: bad address");
        return ExitCode::from(2);
    };
    std::thread::sleep(Duration::from_millis(delay_ms));
    let eperm = |r: &std::io::Result<std::net::TcpStream>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied);
    if eperm(&std::net::TcpStream::connect(allowed)) {
        println!("revoke-probe: {allowed} is refused before any violation");
        return ExitCode::from(1);
    }
    for _ in 0..n {
        let _ = std::net::TcpStream::connect(denied);
    }
    let t0 = std::time::Instant::now();
    let mut through = 0u64;
    while t0.elapsed() < Duration::from_secs(10) {
        if eperm(&std::net::TcpStream::connect(allowed)) {
            println!(
                "revoke-probe: cut off after {} us ({through} connects got through)",
                t0.elapsed().as_micros()
            );
            let _ = std::io::stdout().flush();
            return ExitCode::SUCCESS;
        }
        through += 1;
    }
    println!("revoke-probe: never cut off ({through} connects got through)");
    ExitCode::from(1)
}

/// Times `n` TCP connects to `dest` (a closed port answers with RST at once): prints
/// `connect-time: N connects in T ns (errors: E)`.
fn connect_time(n: u32, dest: &str) -> ExitCode {
    let Ok(addr) = dest.parse::<std::net::SocketAddr>() else {
        eprintln!("connect-time: bad address {dest}");
        return ExitCode::from(2);
    };
    let t0 = std::time::Instant::now();
    let mut first_error = String::new();
    for _ in 0..n {
        if let Err(e) = std::net::TcpStream::connect(addr)
            && first_error.is_empty()
        {
            first_error = e.to_string();
        }
    }
    println!(
        "connect-time: {n} connects in {} ns (first error: {first_error})",
        t0.elapsed().as_nanos()
    );
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}
