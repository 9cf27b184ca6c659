//! End-to-end harness: a real `nanoclaw-fleet` server (its own directory, database and port),
//! and a fault-injecting TCP proxy to put between it and a device.
//!
//! The proxy forwards byte for byte and, per connection, applies the fault that is set when
//! the connection is accepted: cut the connection after N bytes from the server (drops and
//! truncation mid-chunk), stall for a while, or flip one bit (which TLS must catch).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::workspace_root;

/// The `nanoclaw-fleet` binary: `NANOCLAW_FLEET_BIN`, else built once (debug) per process.
pub fn fleet_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("NANOCLAW_FLEET_BIN") {
            return PathBuf::from(p);
        }
        let root = workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(&cargo)
            .current_dir(&root)
            .args(["build", "-p", "nanoclaw-fleet"])
            .status()
            .expect("running cargo build -p nanoclaw-fleet");
        assert!(status.success(), "building nanoclaw-fleet failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|d| root.join(d))
            .unwrap_or_else(|| root.join("target"));
        target.join("debug").join("nanoclaw-fleet")
    })
}

/// A fleet server directory (keys, CA, database) and, while serving, its process.
pub struct Fleet {
    pub dir: PathBuf,
    pub db: String,
    server: Option<Child>,
    pub addr: Option<SocketAddr>,
    /// The admin API's address while serving with it.
    pub admin: Option<SocketAddr>,
    log: PathBuf,
}

/// A request body for [`Fleet::api`].
pub enum Body<'a> {
    None,
    Json(&'a str),
    /// Multipart form fields, each a file.
    Form(&'a [(&'a str, &'a Path)]),
}

impl Fleet {
    /// `nanoclaw-fleet init` in `dir` with the SQLite database there, or `db` when given.
    pub fn init(dir: &Path, db: Option<&str>) -> Fleet {
        let db = db.map_or_else(
            || format!("sqlite:{}", dir.join("fleet.db").display()),
            str::to_owned,
        );
        let f = Fleet {
            dir: dir.to_path_buf(),
            db,
            server: None,
            addr: None,
            admin: None,
            log: dir.join("server.log"),
        };
        let out = f.cli(&["init", "--name", "localhost"]);
        assert!(out.0, "fleet init failed: {}", out.2);
        f
    }

    /// Another server process on the same directory and database (a replica).
    pub fn replica(&self, n: usize) -> Fleet {
        Fleet {
            dir: self.dir.clone(),
            db: self.db.clone(),
            server: None,
            addr: None,
            admin: None,
            log: self.dir.join(format!("server-{n}.log")),
        }
    }

    /// Runs SQL on the server's database with the backend's own client (sqlite3 or psql),
    /// as an attacker or a bad restore would.
    pub fn sql(&self, sql: &str) {
        let out = match self.db.strip_prefix("sqlite:") {
            // The server may hold the write lock for a moment: wait for it like a client should.
            Some(path) => Command::new("sqlite3")
                .args(["-cmd", ".timeout 10000"])
                .arg(path)
                .arg(sql)
                .output(),
            None => Command::new("psql")
                .args(["-v", "ON_ERROR_STOP=1", "-d", &self.db, "-c", sql])
                .output(),
        }
        .expect("running sqlite3/psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a fleet CLI command; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(fleet_bin())
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--db")
            .arg(&self.db)
            .output()
            .expect("running nanoclaw-fleet");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like [`Fleet::cli`] but panics on failure and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(ok, "nanoclaw-fleet {args:?} failed:\n{err}");
        out
    }

    /// Starts `serve` on 127.0.0.1 (a free port, or `port`) and waits until it listens.
    pub fn serve(&mut self, poll_s: u32, port: u16) -> SocketAddr {
        self.serve_with(poll_s, port, &[])
    }

    /// [`Fleet::serve`] with the admin API on a free loopback port (`self.admin`).
    pub fn serve_admin(&mut self, poll_s: u32) -> SocketAddr {
        self.serve_with(poll_s, 0, &["--admin", "127.0.0.1:0"])
    }

    fn serve_with(&mut self, poll_s: u32, port: u16, extra: &[&str]) -> SocketAddr {
        assert!(self.server.is_none(), "already serving");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let mut child = Command::new(fleet_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--poll", &poll_s.to_string()])
            .args(extra)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--db")
            .arg(&self.db)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning nanoclaw-fleet serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("fleet server exited:\n{}", self.log_text());
            };
            if let Some(a) = line.split("admin: listening on ").nth(1) {
                self.admin = Some(a.trim().parse().expect("admin address"));
            }
            if let Some(a) = line.split("devices: listening on ").nth(1) {
                break a.trim().parse::<SocketAddr>().expect("listen address");
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.server = Some(child);
        self.addr = Some(addr);
        addr
    }

    /// One admin API request through curl (real HTTPS, the fleet CA pinned): the status and
    /// the JSON answer. `token` None sends no Authorization header.
    pub fn api(&self, method: &str, path: &str, token: Option<&str>, body: Body) -> (u16, Value) {
        let admin = self.admin.expect("serving with the admin API");
        let mut c = Command::new("curl");
        c.args(["-sS", "-X", method, "--cacert"])
            .arg(self.dir.join("ca.pem"))
            .args(["-o", "-", "-w", "\n%{http_code}"])
            .arg(format!("https://localhost:{}{path}", admin.port()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let mut input = None;
        match body {
            Body::None => {}
            Body::Json(j) => {
                c.args([
                    "-H",
                    "content-type: application/json",
                    "--data-binary",
                    "@-",
                ]);
                input = Some(j.to_owned());
            }
            Body::Form(fields) => {
                for (name, file) in fields {
                    c.args(["-F", &format!("{name}=@{}", file.display())]);
                }
            }
        }
        let mut child = c
            .spawn()
            .expect("curl (Debian curl; cargo xtask setup installs it)");
        if let Some(i) = input {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(i.as_bytes())
                .expect("curl stdin");
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (json, code) = text.rsplit_once('\n').expect("status line");
        let code: u16 = code.trim().parse().expect("HTTP status");
        let v = if json.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{method} {path}: {e}: {json}"))
        };
        (code, v)
    }

    /// The admin token from `init`.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned()
    }

    /// Kills the server (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Enrols `id` in `group`; returns the directory with its certificate and key.
    pub fn enrol(&self, id: &str, group: &str) -> PathBuf {
        let out = self.dir.join("devices").join(id);
        self.ok(&[
            "enrol",
            id,
            "--group",
            group,
            "--out",
            &out.display().to_string(),
        ]);
        out
    }

    /// `device.json`'s `fleet` section for a device enrolled at `creds`, dialing `addr`.
    pub fn device_section(creds: &Path, addr: SocketAddr, poll_s: u32) -> Value {
        serde_json::json!({
            "server": addr.to_string(),
            "server_name": "localhost",
            "ca": creds.join("fleet-ca.pem"),
            "cert": creds.join("device.pem"),
            "key": creds.join("device.key"),
            "poll_s": poll_s,
            "urgent_gap_s": 1,
        })
    }

    /// `devices --json`, one device.
    pub fn device(&self, id: &str) -> Value {
        let out = self.ok(&["devices", "--json"]);
        let list: Value = serde_json::from_str(&out).expect("devices JSON");
        list.as_array()
            .and_then(|a| a.iter().find(|d| d["id"] == id).cloned())
            .unwrap_or(Value::Null)
    }

    /// `audit --device D`: every stored record, oldest first.
    pub fn audit(&self, id: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0i64;
        loop {
            let out = self.ok(&[
                "audit",
                "--device",
                id,
                "--after",
                &after.to_string(),
                "--last",
                "5000",
            ]);
            let page: Vec<Value> = out
                .lines()
                .map(|l| serde_json::from_str(l).expect("audit line"))
                .collect();
            let Some(last) = page.last() else {
                return all;
            };
            after = last["seq"].as_i64().expect("seq");
            all.extend(page);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the proxy does to the next connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Close both directions after this many bytes from the server.
    CutAfter(u64),
    /// Stop forwarding server bytes after this many, for this long, then close.
    StallAfter(u64, Duration),
    /// Flip one bit of the server byte at this offset.
    FlipAt(u64),
}

/// A TCP proxy on 127.0.0.1 in front of `upstream`.
pub struct Proxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    upstream: Arc<Mutex<Vec<SocketAddr>>>,
    pub connections: Arc<AtomicU64>,
    /// Bytes forwarded from the server to devices, over all connections.
    pub bytes_down: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let p = Proxy {
            addr,
            fault: Arc::new(Mutex::new(Fault::None)),
            upstream: Arc::new(Mutex::new(vec![upstream])),
            connections: Arc::new(AtomicU64::new(0)),
            bytes_down: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (fault, up, conns, stop, down) = (
            p.fault.clone(),
            p.upstream.clone(),
            p.connections.clone(),
            p.stop.clone(),
            p.bytes_down.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let i = conns.fetch_add(1, Ordering::Relaxed) as usize;
                let f = *fault.lock().expect("fault");
                let target = {
                    let list = up.lock().expect("upstream");
                    list[i % list.len()]
                };
                let down = down.clone();
                std::thread::spawn(move || relay(client, target, f, &down));
            }
        });
        p
    }

    pub fn set(&self, f: Fault) {
        *self.fault.lock().expect("fault") = f;
    }

    /// Connections go to these servers in turn (replicas behind a load balancer).
    pub fn set_upstreams(&self, a: Vec<SocketAddr>) {
        assert!(!a.is_empty());
        *self.upstream.lock().expect("upstream") = a;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn relay(client: TcpStream, target: SocketAddr, fault: Fault, down: &AtomicU64) {
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let (c2, s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    // Device → server: plain copy.
    let up = std::thread::spawn(move || {
        let (mut from, mut to) = (c2, s2);
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    // Server → device: with the fault.
    let (mut from, mut to) = (server, client);
    let mut buf = [0u8; 16384];
    let mut seen = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let end = seen + n as u64;
        match fault {
            Fault::CutAfter(at) | Fault::StallAfter(at, _) if end > at => {
                let keep = (at - seen) as usize;
                let _ = to.write_all(&chunk[..keep]);
                down.fetch_add(keep as u64, Ordering::Relaxed);
                if let Fault::StallAfter(_, d) = fault {
                    std::thread::sleep(d);
                }
                break;
            }
            Fault::FlipAt(at) if (seen..end).contains(&at) => {
                chunk[(at - seen) as usize] ^= 0x10;
            }
            _ => {}
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        down.fetch_add(n as u64, Ordering::Relaxed);
        seen = end;
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
    let _ = up.join();
}

/// A private PostgreSQL server (Debian `postgresql`) on a free 127.0.0.1 port, in a
/// temporary directory, run as the `postgres` user; stopped and removed on drop.
pub struct Postgres {
    _dir: tempfile::TempDir,
    child: Child,
    pub url: String,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed: run `cargo xtask setup` (Debian postgresql)")
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|p| p.join("postgres").is_file())
            .max()
            .expect("no /usr/lib/postgresql/*/bin/postgres");
        let dir = tempfile::Builder::new()
            .prefix("nc-pg-")
            .tempdir()
            .expect("temp dir");
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        let data = dir.path().join("data");
        let as_pg = |prog: &Path| {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
            ])
            .arg(prog)
            .env("HOME", dir.path());
            c
        };
        let out = as_pg(&bin.join("initdb"))
            .args(["-D", data.to_str().expect("path")])
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::fs::File::create(dir.path().join("pg.log")).expect("log");
        let child = as_pg(&bin.join("postgres"))
            .args(["-D", data.to_str().expect("path"), "-p", &port.to_string()])
            .args(["-k", dir.path().to_str().expect("path")])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        let pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            child,
            _dir: dir,
        };
        let ready = crate::wait_until(Duration::from_secs(60), || {
            let log = std::fs::read_to_string(pg._dir.path().join("pg.log")).ok()?;
            log.contains("ready to accept connections").then_some(())
        });
        assert!(
            ready.is_some(),
            "postgres did not start: {}",
            std::fs::read_to_string(pg._dir.path().join("pg.log")).unwrap_or_default()
        );
        pg
    }
}

fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id")
        .arg("-u")
        .arg("postgres")
        .output()
        .expect("id");
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("postgres uid");
    let out = Command::new("id")
        .arg("-g")
        .arg("postgres")
        .output()
        .expect("id");
    let gid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("postgres gid");
    (uid, gid)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown of the server we started.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::QUIT,
        );
        let _ = self.child.wait();
    }
}
