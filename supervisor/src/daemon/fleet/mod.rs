//! Fleet sync, the device side: when to check in, and one session over the link.
//!
//! Check-ins come at the server's suggested interval with ±10 % jitter (so a fleet that
//! rebooted together does not arrive together), back off exponentially with full jitter
//! while the server is unreachable, and come at once — at most every `urgent_gap_s` — when
//! a security event or crash loop is audited. A daily byte budget counted at the socket
//! holds metered links: once spent, only security events open a session, and no bundle is
//! downloaded. The session itself is `nanoclaw_proto::session` (sans-IO); this module only
//! moves its frames and keeps the marks that must survive a restart in
//! `<state_dir>/fleet/state.json`.

pub mod crypto;
pub mod host;
pub mod link;
pub mod schedule;
pub mod status;

use std::rc::Rc;
use std::time::Duration;

use nanoclaw_proto::audit::AuditKind;
use nanoclaw_proto::session::Session;
use nanoclaw_proto::sync::{DeviceMsg, Digest, ServerMsg, frame};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{CtxRef, Daemon, now_ms};

/// What the device must remember between sessions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Audit records up to this seq are stored by the server.
    pub audit_acked: u64,
    /// The fleet bundle set the device holds (`host::bundles_digest` of the last complete
    /// offer list).
    pub bundles: Digest,
    /// Bundles whose install was refused (hex digests): not downloaded again.
    pub refused: Vec<String>,
    /// The UTC day (`unix_s / 86400`) `day_bytes` counts.
    pub day: u64,
    pub day_bytes: u64,
    /// The last status report the server received (not kept across restarts: a restarted
    /// daemon reports at once).
    #[serde(skip)]
    pub status_sent: status::Sent,
}

/// Live counters for `nanoclaw status`.
#[derive(Debug, Default)]
pub struct Status {
    pub server: String,
    pub sessions_ok: u64,
    pub sessions_failed: u64,
    pub last_attempt_ms: u64,
    pub last_ok_ms: u64,
    pub last_error: Option<String>,
    pub next_ms: u64,
    pub poll_s: u32,
    pub bytes_today: u64,
    pub daily_bytes: Option<u64>,
    pub urgent: u64,
    /// Since start: through the socket, and the protocol frames among those bytes.
    pub wire_sent: u64,
    pub wire_received: u64,
    pub payload_sent: u64,
    pub payload_received: u64,
    /// Connections opened since start (with `stay_connected`, far fewer than sessions).
    pub connections: u64,
    /// A connection is kept open for the next session.
    pub connected: bool,
    /// Audit records up to this seq are stored by the server (metrics: the backlog).
    pub audit_acked: u64,
    /// Wakes the sync task for a session now.
    pub wake: Option<smol::channel::Sender<Wake>>,
}

impl Status {
    pub fn json(&self) -> Value {
        json!({
            "server": self.server,
            "sessions_ok": self.sessions_ok,
            "sessions_failed": self.sessions_failed,
            "last_attempt_s_ago": (self.last_attempt_ms > 0).then(|| now_ms().saturating_sub(self.last_attempt_ms) / 1000),
            "last_ok_s_ago": (self.last_ok_ms > 0).then(|| now_ms().saturating_sub(self.last_ok_ms) / 1000),
            "last_error": self.last_error,
            "next_in_s": self.next_ms.saturating_sub(now_ms()) / 1000,
            "poll_s": self.poll_s,
            "bytes_today": self.bytes_today,
            "daily_bytes": self.daily_bytes,
            "urgent_sessions": self.urgent,
            "wire_sent": self.wire_sent,
            "wire_received": self.wire_received,
            "payload_sent": self.payload_sent,
            "payload_received": self.payload_received,
            "connections": self.connections,
            "connected": self.connected,
        })
    }
}

/// Why a session runs before its time. Both skip the schedule and a spent budget (without
/// downloads); only events count as urgent sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A security event or crash loop was audited.
    Event,
    /// `nanoclaw sync`.
    Asked,
}

/// Asks the sync task for a session now; false when there is no fleet sync.
pub fn wake(d: &Daemon, why: Wake) -> bool {
    match d.fleet.as_ref().and_then(|f| f.wake.as_ref()) {
        Some(w) => {
            // Full: a wake-up is already pending, which serves this one too.
            let _ = w.try_send(why);
            true
        }
        None => false,
    }
}

/// Security events that open a session at once.
pub fn is_urgent(kind: AuditKind) -> bool {
    matches!(
        kind,
        AuditKind::CrashLoop
            | AuditKind::Violation
            | AuditKind::SyscallAnomaly
            | AuditKind::DeniedExec
            | AuditKind::DeniedOperation
            | AuditKind::Rollback
    )
}

fn state_path(d: &Daemon) -> std::path::PathBuf {
    d.cfg.state_dir.join("fleet").join("state.json")
}

fn load_state(d: &Daemon) -> State {
    let path = state_path(d);
    match std::fs::read(&path) {
        Ok(b) if b.len() < 1024 * 1024 => serde_json::from_slice(&b).unwrap_or_else(|e| {
            crate::log!(
                "nanoclaw: {}: {e}; starting the fleet marks over (the server's acks win)",
                path.display()
            );
            State::default()
        }),
        _ => State::default(),
    }
}

fn save_state(d: &Daemon, s: &State) {
    let path = state_path(d);
    let r = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let bytes = serde_json::to_vec(s).unwrap_or_default();
            crate::agents::persist::write_file_atomic(&path, &bytes, true)
        });
    if let Err(e) = r {
        crate::log!("nanoclaw: fleet sync: saving {}: {e}", path.display());
    }
}

/// Starts the sync task when device.json has a `fleet` section.
pub fn spawn(ctx: &CtxRef) {
    let Some(cfg) = ctx.d.borrow().cfg.fleet.clone() else {
        return;
    };
    let tls = match link::client_config(&cfg) {
        Ok(t) => t,
        Err(e) => {
            ctx.d.borrow_mut().audit(
                "",
                AuditKind::Posture,
                &format!("fleet sync disabled: {e}"),
                true,
            );
            return;
        }
    };
    let (tx, rx) = smol::channel::bounded::<Wake>(1);
    let mut state = {
        let mut d = ctx.d.borrow_mut();
        let state = load_state(&d);
        d.fleet = Some(Status {
            server: cfg.server.clone(),
            poll_s: cfg.poll_s,
            daily_bytes: cfg.daily_bytes.map(|b| b.0),
            bytes_today: if state.day == now_ms() / 86_400_000 {
                state.day_bytes
            } else {
                0
            },
            wake: Some(tx),
            audit_acked: state.audit_acked,
            ..Status::default()
        });
        state
    };
    let c = ctx.clone();
    ctx.ex
        .spawn(async move {
            let mut sched = schedule::Schedule::new(cfg.poll_s, super::random_u64());
            // The connection kept between check-ins with `stay_connected`.
            let mut kept: Option<link::Link> = None;
            // The first check-in soon after start, jittered over a few seconds.
            let mut wait = Duration::from_millis(500 + super::random_u64() % 2500);
            loop {
                if let Some(s) = c.d.borrow_mut().fleet.as_mut() {
                    s.next_ms = now_ms() + wait.as_millis() as u64;
                }
                let woken = smol::future::or(
                    async {
                        smol::Timer::after(wait).await;
                        None
                    },
                    async { rx.recv().await.ok() },
                )
                .await;
                if c.d.borrow().shutting_down {
                    if let Some(l) = kept.take() {
                        l.close().await;
                    }
                    return;
                }
                if woken.is_some() {
                    // Let a burst of events land in the log first, and keep the gap.
                    let since = now_ms().saturating_sub(sched.last_attempt_ms);
                    let gap = u64::from(cfg.urgent_gap_s) * 1000;
                    smol::Timer::after(Duration::from_millis(gap.saturating_sub(since).max(200)))
                        .await;
                }
                wait = run_once(&c, &cfg, &tls, &mut sched, &mut state, &mut kept, woken).await;
            }
        })
        .detach();
}

/// One check-in if the budget allows; returns how long to wait for the next.
async fn run_once(
    ctx: &CtxRef,
    cfg: &crate::config::device::FleetConfig,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    sched: &mut schedule::Schedule,
    state: &mut State,
    kept: &mut Option<link::Link>,
    woken: Option<Wake>,
) -> Duration {
    let now = now_ms();
    let today = now / 86_400_000;
    if state.day != today {
        state.day = today;
        state.day_bytes = 0;
    }
    let left = cfg.daily_bytes.map(|b| b.0.saturating_sub(state.day_bytes));
    if left == Some(0) && woken.is_none() {
        // Spent: wait for the next day (or an urgent event).
        let next_day = (today + 1) * 86_400_000;
        return Duration::from_millis(next_day.saturating_sub(now).max(1000));
    }
    sched.last_attempt_ms = now;
    let counters = match kept {
        Some(l) => l.counters(),
        None => Rc::new(link::Counters::default()),
    };
    let result = session(ctx, cfg, tls, &counters, state, kept, left).await;
    let counters = counters.take();
    state.day_bytes += counters.sent.get() + counters.received.get();
    let mut d = ctx.d.borrow_mut();
    save_state(&d, state);
    let wait = match &result {
        Ok(poll_s) => sched.ok(*poll_s),
        Err(_) => sched.failed(),
    };
    if let Some(st) = d.fleet.as_mut() {
        st.last_attempt_ms = now;
        st.bytes_today = state.day_bytes;
        st.urgent += u64::from(woken == Some(Wake::Event));
        st.wire_sent += counters.sent.get();
        st.wire_received += counters.received.get();
        st.payload_sent += counters.payload_sent.get();
        st.payload_received += counters.payload_received.get();
        st.connections += counters.connections.get();
        st.connected = kept.is_some();
        match &result {
            Ok(poll_s) => {
                st.sessions_ok += 1;
                st.last_ok_ms = now_ms();
                st.last_error = None;
                st.poll_s = *poll_s;
            }
            Err(e) => {
                st.sessions_failed += 1;
                st.last_error = Some(e.clone());
            }
        }
    }
    if let Err(e) = &result {
        crate::log!("nanoclaw: fleet sync with {}: {e}", cfg.server);
    }
    drop(d);
    wait
}

/// One session: connect, run the state machine to Bye, then trim what the server stored and
/// install what arrived; returns the server's poll interval. `state` takes the acks received
/// even when the session fails.
async fn session(
    ctx: &CtxRef,
    cfg: &crate::config::device::FleetConfig,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    counters: &Rc<link::Counters>,
    state: &mut State,
    kept: &mut Option<link::Link>,
    left: Option<u64>,
) -> Result<u32, String> {
    let dir = ctx.d.borrow().cfg.state_dir.join("fleet").join("downloads");
    let mut host = host::DeviceHost::new(ctx, std::mem::take(state), dir, left);
    let r = exchange(cfg, tls, counters, &mut host, kept).await;
    host.trim_outbox();
    // Install what arrived whole, even if the link dropped afterwards.
    for (digest, file) in std::mem::take(&mut host.ready) {
        let res = super::installer::install(ctx, &file).await;
        if let Err(e) = &res
            && !e.contains("another install is in progress")
        {
            host.state.refused.push(crate::bundle::hex(&digest));
            if host.state.refused.len() > 64 {
                host.state.refused.remove(0);
            }
        }
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(format!("{}.sigstore.json", file.display()));
    }
    if r.is_ok() {
        // The server's bundle set is held when every offered bundle is installed or refused.
        let d = ctx.d.borrow();
        let held = host.offered.iter().all(|(n, v, hex)| {
            d.agents.get(n).is_some_and(|a| &a.manifest.version == v)
                || host.state.refused.contains(hex)
        });
        if !host.offered.is_empty() && held {
            host.state.bundles = host::bundles_digest(
                host.offered
                    .iter()
                    .map(|(n, v, _)| (n.as_str(), v.as_str())),
            );
        }
    }
    if r.is_ok()
        && let Some(sent) = host.status_sent()
    {
        host.state.status_sent = Some(sent);
    }
    *state = host.state;
    r
}

/// The frames of one session, on the kept connection if there is one (re-opened once if it
/// turns out to be gone: nothing happened on it before the server's Welcome, so the retry
/// is safe). With `stay_connected` the connection is kept again after the server's Bye.
async fn exchange(
    cfg: &crate::config::device::FleetConfig,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    counters: &Rc<link::Counters>,
    host: &mut host::DeviceHost,
    kept: &mut Option<link::Link>,
) -> Result<u32, String> {
    let mut out = Vec::with_capacity(1024);
    let mut scratch = vec![0u8; 48 * 1024];
    let (mut session, hello) = {
        let (s, hello) = Session::start(&*host);
        frame::push(&mut out, &DeviceMsg::Hello(hello)).map_err(|e| format!("encode: {e}"))?;
        (s, out.clone())
    };
    let mut link = match kept.take() {
        Some(l) => l,
        None => link::Link::connect(cfg, tls.clone(), counters.clone()).await?,
    };
    // Hello and the server's first answer. A kept connection the server closed meanwhile
    // (restart, keep timeout, NAT) fails here and is re-opened once.
    loop {
        let r = match link.send(&mut out).await {
            Ok(()) => link.recv().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => break,
            Err(_) if link.reused() => {
                link = link::Link::connect(cfg, tls.clone(), counters.clone()).await?;
                out.clone_from(&hello);
            }
            Err(e) => return Err(e),
        }
    }
    loop {
        let frame = link.frame();
        let msg: ServerMsg<'_> =
            postcard::from_bytes(frame).map_err(|e| format!("undecodable server message: {e}"))?;
        if let ServerMsg::Error { code, message } = &msg {
            return Err(format!("the server refused: {code:?}: {message}"));
        }
        let mut encode_err = None;
        session
            .on_message(host, msg, &mut scratch, &mut |m| {
                if let Err(e) = frame::push(&mut out, &m) {
                    encode_err = Some(format!("encode: {e}"));
                }
            })
            .map_err(|f| format!("protocol error: {f:?}"))?;
        if let Some(e) = encode_err {
            return Err(e);
        }
        link.send(&mut out).await?;
        if session.done() {
            let poll_s = session.poll_s;
            if !cfg.stay_connected {
                link.close().await;
                return Ok(poll_s);
            }
            // Read the server's Bye, so the next session starts on a clean stream.
            let frame = link.recv().await?;
            return match postcard::from_bytes(frame) {
                Ok(ServerMsg::Bye { poll_s }) => {
                    link.mark_reused();
                    *kept = Some(link);
                    Ok(poll_s)
                }
                _ => Err("the server did not end the session with Bye".into()),
            };
        }
        link.recv().await?;
    }
}
