//! The device's end of the fleet link: TCP + TLS 1.3 with mutual authentication (rustls over
//! smol, crypto from [`super::crypto`]), frames in and out, and every byte counted at the
//! socket for the daily budget. The server CA in device.json is the only trust anchor; no
//! system roots.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use nanoclaw_proto::sync::{FRAME_MAX, frame};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::net::TcpStream;

use crate::config::device::FleetConfig;

const CONNECT: Duration = Duration::from_secs(15);
const HANDSHAKE: Duration = Duration::from_secs(20);
/// How long the server may stay silent inside a session.
const IDLE: Duration = Duration::from_secs(60);

/// Bytes through the socket (TLS records included), for the budget and `status`, and the
/// protocol frames among them.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: Cell<u64>,
    pub received: Cell<u64>,
    pub payload_sent: Cell<u64>,
    pub payload_received: Cell<u64>,
    /// TCP connections opened.
    pub connections: Cell<u64>,
}

impl Counters {
    /// What was counted so far, leaving zeros: a kept connection's counters then count the
    /// next session alone.
    pub fn take(&self) -> Counters {
        Counters {
            sent: Cell::new(self.sent.take()),
            received: Cell::new(self.received.take()),
            payload_sent: Cell::new(self.payload_sent.take()),
            payload_received: Cell::new(self.payload_received.take()),
            connections: Cell::new(self.connections.take()),
        }
    }
}

fn add(c: &Cell<u64>, n: usize) {
    c.set(c.get() + n as u64);
}

/// The TLS client configuration from device.json's `fleet` paths. Built once per daemon
/// start; it keeps session tickets, so later check-ins resume without a full handshake.
pub fn client_config(f: &FleetConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let read = |p: &std::path::Path| {
        crate::sigstore::read_capped(p, 64 * 1024, "fleet certificate or key")
    };
    let mut roots = rustls::RootCertStore::empty();
    let ca = read(&f.ca)?;
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        let c = c.map_err(|e| format!("fleet.ca {}: {e}", f.ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("fleet.ca {}: {e}", f.ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("fleet.ca {}: no certificate in it", f.ca.display()));
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(read(&f.cert)?.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("fleet.cert {}: {e}", f.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "fleet.cert {}: no certificate in it",
            f.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(read(&f.key)?.as_bytes())
        .map_err(|e| format!("fleet.key {}: {e}", f.key.display()))?;
    let provider = super::crypto::provider();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("fleet.cert/fleet.key: {e}"))?;
    Ok(Arc::new(cfg))
}

/// A TCP stream that counts what passes through it.
pub struct Counted {
    inner: TcpStream,
    counters: Rc<Counters>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            add(&self.counters.received, *n);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            add(&self.counters.sent, *n);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

async fn timed<T>(
    d: Duration,
    what: &str,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, String> {
    let what = what.to_owned();
    smol::future::or(
        async { f.await.map_err(|e| format!("{what}: {e}")) },
        async {
            smol::Timer::after(d).await;
            Err(format!("{what}: timed out after {} s", d.as_secs()))
        },
    )
    .await
}

/// One TLS connection to the fleet server, speaking frames.
pub struct Link {
    tls: TlsStream<Counted>,
    inbuf: Vec<u8>,
    counters: Rc<Counters>,
    /// Kept from an earlier session (the server may have closed it meanwhile).
    reused: bool,
}

impl Link {
    pub fn counters(&self) -> Rc<Counters> {
        self.counters.clone()
    }

    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Kept for the next session.
    pub fn mark_reused(&mut self) {
        self.reused = true;
    }

    pub async fn connect(
        f: &FleetConfig,
        cfg: Arc<rustls::ClientConfig>,
        counters: Rc<Counters>,
    ) -> Result<Link, String> {
        let server = f.server.clone();
        let tcp = timed(CONNECT, &format!("connecting to {server}"), async {
            TcpStream::connect(server.as_str()).await
        })
        .await?;
        let _ = tcp.set_nodelay(true);
        add(&counters.connections, 1);
        let name = ServerName::try_from(f.name().to_owned())
            .map_err(|e| format!("fleet.server_name `{}`: {e}", f.name()))?;
        let counted = Counted {
            inner: tcp,
            counters: counters.clone(),
        };
        let tls = timed(
            HANDSHAKE,
            "TLS handshake",
            TlsConnector::from(cfg).connect(name, counted),
        )
        .await?;
        Ok(Link {
            tls,
            inbuf: Vec::with_capacity(1024),
            counters,
            reused: false,
        })
    }

    /// Sends `out` (whole frames) and clears it.
    pub async fn send(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        if out.is_empty() {
            return Ok(());
        }
        let tls = &mut self.tls;
        timed(IDLE, "sending", async {
            tls.write_all(out).await?;
            tls.flush().await
        })
        .await?;
        add(&self.counters.payload_sent, out.len());
        out.clear();
        Ok(())
    }

    /// The next frame's bytes.
    pub async fn recv(&mut self) -> Result<&[u8], String> {
        let mut len = [0u8; 4];
        let tls = &mut self.tls;
        timed(IDLE, "receiving", tls.read_exact(&mut len)).await?;
        let len = frame::body_len(len)
            .map_err(|len| format!("the server sent a {len}-byte frame, over {FRAME_MAX}"))?;
        self.inbuf.resize(len, 0);
        let (tls, buf) = (&mut self.tls, &mut self.inbuf);
        timed(IDLE, "receiving", tls.read_exact(buf)).await?;
        add(&self.counters.payload_received, 4 + len);
        Ok(&self.inbuf)
    }

    /// The frame `recv` read last.
    pub fn frame(&self) -> &[u8] {
        &self.inbuf
    }

    /// Ends the TLS session cleanly (close_notify), best effort.
    pub async fn close(mut self) {
        let tls = &mut self.tls;
        let _ = timed(Duration::from_secs(2), "closing", tls.close()).await;
    }
}
