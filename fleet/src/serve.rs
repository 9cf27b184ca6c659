//! `nanoclaw-fleet serve`: the device-facing TLS listener and the server side of a session.
//!
//! Stateless apart from the database: a replica can die mid-session and the device resumes
//! on any other from the offsets and sequences it holds (docs/PROTOCOL.md). Every read has an
//! idle timeout so a stalled link cannot pin a task, and every frame is capped at
//! `FRAME_MAX` before it is allocated.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nanoclaw_proto::sync::{
    self, DeviceMsg, Digest, ErrorCode, FRAME_MAX, Hello, Offer, ServerMsg, Welcome, records,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::db::{Db, Device, Seen, Stream};

/// How long a device may stay silent inside a session.
const IDLE: Duration = Duration::from_secs(30);
/// Longest TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(15);

pub struct Config {
    pub listen: SocketAddr,
    pub poll_s: u32,
    /// How long a connection may wait idle for the device's next session (devices with
    /// `stay_connected`); devices that close after their Bye are not affected.
    pub keep_s: u32,
}

struct Shared {
    db: Db,
    directives: crate::directives::Directives,
    poll_s: u32,
    keep: Duration,
    seen: mpsc::Sender<Checkin>,
    status: mpsc::Sender<crate::telemetry::Report>,
}

/// Wall-clock milliseconds, as the database stores them.
pub fn now_ms() -> i64 {
    nanoclaw::daemon::now_ms() as i64
}

/// Binds and serves until the process is stopped. Prints `listening on ADDR` once bound (the
/// tests and scripts wait for it).
pub async fn run(db: Db, tls: Arc<rustls::ServerConfig>, cfg: Config) -> Result<(), String> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("nanoclaw-fleet: devices: listening on {addr}");
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(record_seen(db.clone(), rx));
    let (status, status_rx) = mpsc::channel(4096);
    tokio::spawn(crate::telemetry::record(db.clone(), status_rx));
    let shared = Arc::new(Shared {
        directives: crate::directives::Directives::new(db.clone()),
        db,
        poll_s: cfg.poll_s,
        keep: Duration::from_secs(u64::from(cfg.keep_s)),
        seen: tx,
        status,
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("nanoclaw-fleet: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let r = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => connection(&shared, tls).await,
                Ok(Err(e)) => Err(format!("TLS: {e}")),
                Err(_) => Err("TLS handshake timed out".into()),
            };
            if let Err(e) = r {
                eprintln!("nanoclaw-fleet: {peer}: {e}");
            }
        });
    }
}

/// What the check-in writer records: a Hello, or a policy the device then applied.
enum Checkin {
    Hello(Seen),
    Policy(String, i64),
}

/// Writes what devices said in their Hellos in batches (one transaction per batch), so an
/// idle check-in costs the database no synchronous write; the policy versions devices applied
/// go the same way, after the Hellos that came before them.
async fn record_seen(db: Db, mut rx: mpsc::Receiver<Checkin>) {
    let (mut batch, mut policies) = (Vec::new(), Vec::new());
    while let Some(c) = rx.recv().await {
        let mut take = |c| match c {
            Checkin::Hello(s) => batch.push(s),
            Checkin::Policy(id, v) => policies.push((id, v)),
        };
        take(c);
        for _ in 0..1000 {
            match rx.try_recv() {
                Ok(c) => take(c),
                Err(_) => break,
            }
        }
        if let Err(e) = db.seen(&batch, &policies).await {
            eprintln!("nanoclaw-fleet: recording check-ins: {e}");
        }
        batch.clear();
        policies.clear();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Frames over one TLS stream.
struct Link<S> {
    io: S,
    out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    /// Reads the next frame's body into `buf`.
    async fn read(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        match tokio::time::timeout(IDLE, self.read_next(buf)).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err("read: the device closed the connection".into()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("device went silent".into()),
        }
    }

    /// The next frame, however long its first byte takes: `Ok(false)` when the device closed
    /// the connection instead (the usual end of a kept connection).
    async fn read_next(&mut self, buf: &mut Vec<u8>) -> Result<bool, String> {
        let mut len = [0u8; 4];
        match self.io.read(&mut len[..1]).await {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        tokio::time::timeout(IDLE, self.io.read_exact(&mut len[1..]))
            .await
            .map_err(|_| "device went silent".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        let len = sync::frame::body_len(len)
            .map_err(|len| format!("frame of {len} bytes, over {FRAME_MAX}"))?;
        buf.resize(len, 0);
        tokio::time::timeout(IDLE, self.io.read_exact(buf))
            .await
            .map_err(|_| "device went silent mid-frame".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        Ok(true)
    }

    /// Queues one message; `flush` sends what is queued.
    fn push(&mut self, m: &ServerMsg<'_>) -> Result<(), String> {
        sync::frame::push(&mut self.out, m).map_err(|e| format!("encode: {e}"))
    }

    async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(IDLE, async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| "device stopped reading".to_string())?
        .map_err(|e| format!("write: {e}"))?;
        self.out.clear();
        Ok(())
    }

    async fn refuse(&mut self, code: ErrorCode, message: &str) -> String {
        let _ = self.push(&ServerMsg::Error { code, message });
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
        message.to_owned()
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    sh: &Shared,
    tls: tokio_rustls::server::TlsStream<S>,
) -> Result<(), String> {
    let fp = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(c) => crate::pki::fingerprint(c),
        None => return Err("no client certificate".into()),
    };
    let mut link = Link {
        io: tls,
        out: Vec::with_capacity(512),
    };
    let mut frame = Vec::with_capacity(512);
    link.read(&mut frame).await?;
    loop {
        session(sh, &mut link, &fp, &mut frame).await?;
        // A device that stays connected starts its next session on this connection; one
        // that closed after its Bye, or stayed silent for `keep`, is done.
        let next = tokio::time::timeout(sh.keep, link.read_next(&mut frame)).await;
        if !matches!(next, Ok(Ok(true))) {
            let _ = link.io.shutdown().await;
            return Ok(());
        }
    }
}

/// One session on `link`, from the Hello in `frame` to Bye.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    sh: &Shared,
    link: &mut Link<S>,
    fp: &str,
    frame: &mut Vec<u8>,
) -> Result<(), String> {
    let hello: Hello<'_> = match postcard::from_bytes(frame) {
        Ok(DeviceMsg::Hello(h)) => h,
        Ok(_) => {
            return Err(link
                .refuse(ErrorCode::BadRequest, "a session starts with Hello")
                .await);
        }
        Err(e) => {
            let m = format!("undecodable Hello: {e}");
            return Err(link.refuse(ErrorCode::BadRequest, &m).await);
        }
    };
    let Some(protocol) = sync::negotiate(
        hello.protocol_min,
        hello.protocol_max,
        sync::PROTOCOL_MIN,
        sync::PROTOCOL,
    ) else {
        let m = format!(
            "no common protocol version: device speaks {}..={}, server {}..={}",
            hello.protocol_min,
            hello.protocol_max,
            sync::PROTOCOL_MIN,
            sync::PROTOCOL
        );
        return Err(link.refuse(ErrorCode::Version, &m).await);
    };
    let device = match sh.db.device_by_fingerprint(fp).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            let m = format!("certificate {} is not enrolled", &fp[..16]);
            return Err(link.refuse(ErrorCode::Unknown, &m).await);
        }
        Err(e) => {
            let _ = link
                .refuse(ErrorCode::Busy, "server database unavailable")
                .await;
            return Err(e.to_string());
        }
    };
    let now = now_ms();
    let _ = sh
        .seen
        .send(Checkin::Hello(Seen {
            id: device.id.clone(),
            at_ms: now,
            firmware: hello.firmware.to_owned(),
            policy_version: i64::try_from(hello.policy_version).unwrap_or(i64::MAX),
            bundles: nanoclaw::bundle::hex(&hello.bundles),
            audit_high: i64::try_from(hello.audit_high).unwrap_or(i64::MAX),
            outbox_high: i64::try_from(hello.outbox_high).unwrap_or(i64::MAX),
            dropped: i64::try_from(hello.dropped).unwrap_or(i64::MAX),
        }))
        .await;
    let policy_version = hello.policy_version;
    let have_bundles = hello.bundles;
    welcome(sh, link, &device, protocol, policy_version, have_bundles)
        .await
        .map_err(|e| format!("{}: {e}", device.id))?;
    requests(sh, link, &device, frame)
        .await
        .map_err(|e| format!("{}: {e}", device.id))
}

/// Welcome and what the device lacks.
async fn welcome<S: AsyncRead + AsyncWrite + Unpin>(
    sh: &Shared,
    link: &mut Link<S>,
    device: &Device,
    protocol: u16,
    policy_version: u64,
    have_bundles: Digest,
) -> Result<(), String> {
    let db = &sh.db;
    let e = |e: crate::db::DbError| e.to_string();
    let wanted = sh.directives.for_device(device).await.map_err(e)?;
    let policy = wanted
        .policy
        .filter(|p| u64::try_from(p.version).is_ok_and(|v| v > policy_version));
    let bundles = wanted.bundles;
    let want = nanoclaw::daemon::fleet::host::bundles_digest(
        bundles
            .iter()
            .map(|b| (b.name.as_str(), b.version.as_str())),
    );
    let mut offers = Vec::new();
    if want != have_bundles {
        for b in &bundles {
            if let Some(digest) = nanoclaw::bundle::unhex32(&b.digest) {
                offers.push((b, digest, db.signature(&b.digest).await.map_err(e)?));
            }
        }
    }
    let grants = if wanted.grants {
        db.grants_for(device, now_ms()).await.map_err(e)?
    } else {
        Vec::new()
    };
    let pending = usize::from(policy.is_some()) + offers.len() + grants.len();
    link.push(&ServerMsg::Welcome(Welcome {
        protocol,
        poll_s: sh.poll_s,
        audit_acked: device.audit_acked as u64,
        outbox_acked: device.outbox_acked as u64,
        pending: u16::try_from(pending).unwrap_or(u16::MAX),
    }))?;
    if let Some(p) = &policy {
        link.push(&ServerMsg::Policy {
            version: p.version as u64,
            envelope: &p.envelope,
        })?;
    }
    for (b, digest, signature) in &offers {
        link.push(&ServerMsg::Offer(Offer {
            name: &b.name,
            version: &b.version,
            size: b.size as u64,
            digest: *digest,
            signature,
        }))?;
    }
    for g in &grants {
        link.push(&ServerMsg::Grant {
            id: g.id as u64,
            token: &g.token,
        })?;
    }
    link.flush().await
}

/// Serves the device's requests until Bye.
async fn requests<S: AsyncRead + AsyncWrite + Unpin>(
    sh: &Shared,
    link: &mut Link<S>,
    device: &Device,
    frame: &mut Vec<u8>,
) -> Result<(), String> {
    let db = &sh.db;
    let mut had_status = false;
    loop {
        link.read(frame).await?;
        let msg: DeviceMsg<'_> = match postcard::from_bytes(frame) {
            Ok(m) => m,
            Err(e) => {
                let m = format!("undecodable message: {e}");
                return Err(link.refuse(ErrorCode::BadRequest, &m).await);
            }
        };
        match msg {
            DeviceMsg::Pull {
                digest,
                offset,
                len,
            } => {
                let len = len.min(sync::CHUNK_MAX);
                let data = db
                    .chunk(&nanoclaw::bundle::hex(&digest), offset, len)
                    .await
                    .map_err(|e| e.to_string())?;
                if data.is_empty() {
                    let m = format!(
                        "no bytes of {} at offset {offset}",
                        nanoclaw::bundle::hex(&digest)
                    );
                    return Err(link.refuse(ErrorCode::BadRequest, &m).await);
                }
                link.push(&ServerMsg::Chunk {
                    digest,
                    offset,
                    data: &data,
                })?;
            }
            DeviceMsg::Audit { first, n, records } | DeviceMsg::Outbox { first, n, records } => {
                let stream = if matches!(msg, DeviceMsg::Audit { .. }) {
                    Stream::Audit
                } else {
                    Stream::Outbox
                };
                let mut recs: Vec<&[u8]> = Vec::with_capacity(usize::from(n));
                if n == 0 || first == 0 || records::split(records, n, |r| recs.push(r)).is_none() {
                    let m = format!("batch from {first} does not hold {n} records");
                    return Err(link.refuse(ErrorCode::BadRequest, &m).await);
                }
                let upto = db
                    .ingest(stream, &device.id, first, &recs, now_ms())
                    .await
                    .map_err(|e| e.to_string())? as u64;
                link.push(&match stream {
                    Stream::Audit => ServerMsg::AuditAck { upto },
                    Stream::Outbox => ServerMsg::OutboxAck { upto },
                })?;
            }
            DeviceMsg::Applied {
                what,
                version,
                ok,
                reason,
            } => {
                let what = match what {
                    sync::Applied::Policy => "policy",
                    sync::Applied::Bundle => "bundle",
                    sync::Applied::Grant => "grant",
                };
                let version = i64::try_from(version).unwrap_or(i64::MAX);
                db.applied(&device.id, what, version, ok, reason, now_ms())
                    .await
                    .map_err(|e| e.to_string())?;
                if what == "policy" && ok {
                    let _ = sh
                        .seen
                        .send(Checkin::Policy(device.id.clone(), version))
                        .await;
                }
                // No answer: Applied is a report, not a request.
                continue;
            }
            DeviceMsg::Status(st) => {
                if std::mem::replace(&mut had_status, true) {
                    let m = "a second Status in one session";
                    return Err(link.refuse(ErrorCode::BadRequest, m).await);
                }
                // Dashboard telemetry never holds up the rest of the session: a report that
                // does not check out is dropped and logged, a full queue drops it too.
                match crate::telemetry::decode(&device.id, now_ms(), &st) {
                    Ok(report) => {
                        let _ = sh.status.try_send(report);
                    }
                    Err(m) => eprintln!("nanoclaw-fleet: {}: status dropped: {m}", device.id),
                }
                continue;
            }
            DeviceMsg::Bye => {
                link.push(&ServerMsg::Bye { poll_s: sh.poll_s })?;
                link.flush().await?;
                return Ok(());
            }
            DeviceMsg::Hello(_) => {
                return Err(link.refuse(ErrorCode::BadRequest, "a second Hello").await);
            }
        }
        link.flush().await?;
    }
}
