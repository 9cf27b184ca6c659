//! `nanoclaw-fleet loadgen`: simulated devices checking in against a server, for capacity
//! planning and `cargo xtask bench`. It registers filler devices up to `--register` (the
//! registry size the server must look up in), enrols `--identities` devices with real
//! certificates, and runs idle sessions (TLS, Hello, Welcome, Bye, through the device's own
//! sans-IO session) from `--concurrency` tasks for `--seconds`. Sessions resume TLS like
//! real devices do after their first check-in.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanoclaw_proto::session::{Host, Session};
use nanoclaw_proto::sync::{self, DeviceMsg, Digest, Hello, Offer, ServerMsg, frame};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::db::Db;
use crate::pki;

pub struct Options {
    pub server: std::net::SocketAddr,
    pub server_name: String,
    pub register: u64,
    pub identities: usize,
    pub concurrency: usize,
    pub seconds: u64,
    /// Devices that stay connected: each task keeps `connections / concurrency` connections
    /// open and runs its sessions on them in turn, as `stay_connected` devices do.
    pub persistent: bool,
    pub connections: usize,
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// An idle device: nothing wanted, nothing to report but (at its first check-in, as a real
/// device after its daemon starts) its status.
struct Idle {
    bundles: Digest,
    agents: Option<Vec<u8>>,
}

/// A typical device's status: three agents (what every real device sends each session).
fn agents() -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let mut used = 0;
    for (i, name) in ["sensor", "uplink", "inference"].into_iter().enumerate() {
        let a = sync::AgentStatus {
            name,
            state: "running",
            restarts: 0,
            memory_bytes: (4 + i as u64 * 8) << 20,
            memory_limit_bytes: 64 << 20,
            energy_mwh: 10 * i as u64,
            energy_budget_mwh: 500,
            trust: 100,
            denials: 0,
        };
        if let Ok(b) = postcard::to_allocvec(&a) {
            sync::records::push(&mut buf, &mut used, &b);
        }
    }
    buf.truncate(used);
    buf
}

impl Host for Idle {
    fn hello(&self) -> Hello<'_> {
        Hello {
            protocol_min: sync::PROTOCOL_MIN,
            protocol_max: sync::PROTOCOL,
            firmware: env!("CARGO_PKG_VERSION"),
            policy_version: 1 << 40,
            bundles: self.bundles,
            audit_high: 0,
            audit_acked: 0,
            outbox_high: 0,
            outbox_acked: 0,
            dropped: 0,
        }
    }
    fn audit(&self, first: u64, _: &mut [u8]) -> (u64, u16, usize) {
        (first, 0, 0)
    }
    fn outbox(&self, first: u64, _: &mut [u8]) -> (u64, u16, usize) {
        (first, 0, 0)
    }
    fn policy(&mut self, _: u64, _: &[u8]) -> Result<(), &str> {
        Ok(())
    }
    fn grant(&mut self, _: &[u8]) -> Result<(), &str> {
        Ok(())
    }
    fn want(&mut self, _: &Offer<'_>) -> Option<u64> {
        None
    }
    fn chunk(&mut self, _: &Digest, _: u64, _: &[u8]) -> bool {
        false
    }
    fn downloaded(&mut self, _: &Digest) {}
    fn acked_audit(&mut self, _: u64) {}
    fn acked_outbox(&mut self, _: u64) {}
    fn status(&self) -> Option<sync::Status<'_>> {
        let agents = self.agents.as_deref()?;
        Some(sync::Status {
            battery_pct: 80,
            external_power: false,
            posture: "cgroup=v2 seccomp=enforced landlock=enforced",
            degraded: false,
            n: 3,
            agents,
        })
    }
}

/// Registers filler devices (unusable fingerprints) until the registry holds `n`.
async fn fill(db: &Db, n: u64) -> Result<(), String> {
    let have = db.device_count().await.map_err(|e| e.to_string())? as u64;
    let now = crate::serve::now_ms();
    let mut next = have;
    while next < n {
        let batch: Vec<(String, String)> = (next..n.min(next + 500))
            .map(|i| {
                let fp = nanoclaw::bundle::hex(&pki::random_bytes::<32>());
                (format!("filler-{i}"), fp)
            })
            .collect();
        db.enrol_many(&batch, "loadgen-filler", now)
            .await
            .map_err(|e| e.to_string())?;
        next += batch.len() as u64;
    }
    Ok(())
}

/// Client configurations of the `k` simulated identities, enrolling the missing ones.
async fn identities(
    db: &Db,
    dir: &Path,
    k: usize,
) -> Result<Vec<Arc<rustls::ClientConfig>>, String> {
    let provider = pki::device_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in pki::certs(&dir.join(pki::CA_CERT))? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let roots = Arc::new(roots);
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        let id = format!("sim-{i}");
        let creds = dir.join("loadgen").join(&id);
        if db.device(&id).await.map_err(|e| e.to_string())?.is_none() {
            let _ = std::fs::remove_dir_all(&creds);
            let fp = pki::issue_device(dir, &id, &creds)?;
            db.enrol(&id, &fp, "loadgen", crate::serve::now_ms())
                .await
                .map_err(|e| e.to_string())?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(
                pki::certs(&creds.join("device.pem"))?,
                pki::key(&creds.join("device.key"))?,
            )
            .map_err(|e| e.to_string())?;
        out.push(Arc::new(cfg));
    }
    Ok(out)
}

async fn connect(
    cfg: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    name: ServerName<'static>,
) -> Result<Tls, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

async fn read_frame(tls: &mut Tls, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut len = [0u8; 4];
    tls.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let len = frame::body_len(len).map_err(|l| format!("{l}-byte frame"))?;
    buf.resize(len, 0);
    tls.read_exact(buf).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// One idle session on `tls`, through the device's own session code; `keep` reads the
/// server's Bye so the connection can carry the next session.
async fn exchange(tls: &mut Tls, bundles: Digest, keep: bool, status: bool) -> Result<(), String> {
    let mut host = Idle {
        bundles,
        agents: status.then(agents),
    };
    let mut out = Vec::with_capacity(256);
    let mut buf = Vec::with_capacity(256);
    let mut scratch = [0u8; 64];
    let mut s = {
        let (s, hello) = Session::start(&host);
        frame::push(&mut out, &DeviceMsg::Hello(hello)).map_err(|e| e.to_string())?;
        s
    };
    loop {
        if !out.is_empty() {
            tls.write_all(&out).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            out.clear();
        }
        if s.done() {
            break;
        }
        read_frame(tls, &mut buf).await?;
        let msg: ServerMsg<'_> = postcard::from_bytes(&buf).map_err(|e| e.to_string())?;
        if let ServerMsg::Error { message, .. } = msg {
            return Err(message.to_owned());
        }
        let mut err = None;
        s.on_message(&mut host, msg, &mut scratch, &mut |m| {
            if let Err(e) = frame::push(&mut out, &m) {
                err = Some(e.to_string());
            }
        })
        .map_err(|f| format!("{f:?}"))?;
        if let Some(e) = err {
            return Err(e);
        }
    }
    if keep {
        read_frame(tls, &mut buf).await?;
        if !matches!(postcard::from_bytes(&buf), Ok(ServerMsg::Bye { .. })) {
            return Err("no Bye from the server".into());
        }
    }
    Ok(())
}

/// One idle session on a new connection, as a device that checked in before would run it
/// (`status`: with a status report, as at its first check-in).
async fn session(
    cfg: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    name: ServerName<'static>,
    bundles: Digest,
    status: bool,
) -> Result<(), String> {
    let mut tls = connect(cfg, addr, name).await?;
    exchange(&mut tls, bundles, false, status).await?;
    let _ = tls.shutdown().await;
    Ok(())
}

/// Runs the load and prints one summary line per second and a final JSON line.
pub async fn run(db: &Db, dir: &Path, o: &Options) -> Result<(), String> {
    fill(db, o.register.saturating_sub(o.identities as u64)).await?;
    let ids = identities(db, dir, o.identities.max(1)).await?;
    let registered = db.device_count().await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(o.server_name.clone()).map_err(|e| e.to_string())?;
    let bundles = nanoclaw::daemon::fleet::host::bundles_digest(std::iter::empty());
    // Warm every identity's TLS session cache once, as devices that checked in before (and
    // reported their status then: idle devices send none again within `status_s`).
    for cfg in &ids {
        session(cfg.clone(), o.server, name.clone(), bundles, true).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let tasks_n = o.concurrency.max(1);
    let per_task = (o.connections.max(tasks_n) / tasks_n).max(1);
    let mut tasks = Vec::new();
    for t in 0..tasks_n {
        let (ids, name) = (ids.clone(), name.clone());
        let (addr, persistent) = (o.server, o.persistent);
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
            let mut kept: Vec<Option<Tls>> = (0..per_task).map(|_| None).collect();
            let mut i = t;
            let mut k = 0usize;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = if persistent {
                    // Connection j of task t is always the same simulated device.
                    let j = k % per_task;
                    k += 1;
                    let cfg = ids[(t * per_task + j) % ids.len()].clone();
                    let slot = &mut kept[j];
                    async {
                        let mut tls = match slot.take() {
                            Some(tls) => tls,
                            None => connect(cfg, addr, name.clone()).await?,
                        };
                        exchange(&mut tls, bundles, true, false).await?;
                        *slot = Some(tls);
                        Ok(())
                    }
                    .await
                } else {
                    i += 7;
                    session(
                        ids[i % ids.len()].clone(),
                        addr,
                        name.clone(),
                        bundles,
                        false,
                    )
                    .await
                };
                match r {
                    Ok(()) => {
                        ok += 1;
                        lat.push(t0.elapsed().as_micros() as u64);
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, lat)
        }));
    }
    let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
    for t in tasks {
        let (a, b, l) = t.await.map_err(|e| e.to_string())?;
        ok += a;
        failed += b;
        lat.extend(l);
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "registered": registered, "identities": ids.len(), "concurrency": o.concurrency,
            "persistent": o.persistent, "connections": if o.persistent { per_task * tasks_n } else { tasks_n },
            "seconds": o.seconds, "sessions": ok, "failed": failed,
            "sessions_per_s": ok as f64 / o.seconds as f64,
            "p50_us": pct(0.5), "p99_us": pct(0.99),
        })
    );
    Ok(())
}
