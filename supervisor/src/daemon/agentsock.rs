//! Each agent's own Unix socket, `/run/nanoclaw.sock` in its view.
//!
//! The supervisor binds `<state_dir>/run/sock/<agent>/nanoclaw.sock` (owned by the agent's
//! uid, mode 0600) before the agent starts, and the sandbox binds that directory read-only at
//! `/run`. Binding the directory rather than the socket file lets a restarted supervisor put a
//! new socket in place for agents it re-adopts. Which socket a connection arrives on says which
//! agent it is, so no message carries an identity. The protocol is in `crate::agentapi` and
//! docs/AGENT_API.md.
//!
//! Limits, so one agent cannot hurt the supervisor: 4 connections, lines of at most 64 KiB,
//! 50 messages per second (bursts of 100), 3 malformed messages per connection; crossing any
//! of them ends the connection, is audited (rate-limited) and counts as a `bad_messages`
//! violation event.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use nanoclaw_proto::audit::AuditKind;
use serde_json::{Map, Value, json};
use smol::Async;
use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::{CtxRef, Daemon, now_ms};
use crate::agentapi::{self, Code, MAX_LINE, Op, Refusal};
use crate::config::policy::Event;

pub const SOCKET_NAME: &str = "nanoclaw.sock";
pub const MAX_CONNECTIONS: usize = 4;
pub const RATE_PER_S: f64 = 50.0;
pub const BURST: f64 = 100.0;
pub const BAD_PER_CONNECTION: u32 = 3;
/// Messages kept for an agent that has no connection open.
pub const INBOX_MAX: usize = 64;
/// Bad-message audit records per agent per second (the rest are summarized).
pub const AUDITS_PER_SECOND: u32 = 5;

/// Per-agent socket state in the daemon.
#[derive(Default)]
pub struct Socks {
    conns: Vec<(u64, smol::channel::Sender<String>)>,
    inbox: VecDeque<String>,
    next_id: u64,
}

/// The directory bound at `/run` in the agent's view.
pub fn dir(d: &Daemon, agent: &str) -> PathBuf {
    d.run_dir().join("sock").join(agent)
}

/// Creates the agent's socket (before it starts, so it never sees a missing socket).
pub fn bind(d: &Daemon, agent: &str, uid: u32) -> std::io::Result<UnixListener> {
    let dir = dir(d, agent);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let path = dir.join(SOCKET_NAME);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = UnixListener::bind(&path)?;
    std::os::unix::fs::chown(&path, Some(uid), Some(uid))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves the agent's socket until the returned task is dropped (with its instance).
pub fn serve(
    ctx: &CtxRef,
    agent: &str,
    uid: u32,
    listener: UnixListener,
) -> Option<smol::Task<()>> {
    let listener = match Async::new(listener) {
        Ok(l) => l,
        Err(e) => {
            crate::log!("nanoclaw: {agent}: agent socket: {e}");
            return None;
        }
    };
    let c = ctx.clone();
    let name = agent.to_owned();
    Some(ctx.ex.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                smol::Timer::after(Duration::from_millis(50)).await;
                continue;
            };
            accept(&c, &name, uid, stream);
        }
    }))
}

/// Ties the socket's serving task to the agent's running instance (dropped with it).
pub fn keep(ctx: &CtxRef, agent: &str, task: Option<smol::Task<()>>) {
    if let Some(i) = ctx
        .d
        .borrow_mut()
        .agents
        .get_mut(agent)
        .and_then(|a| a.instance.as_mut())
    {
        i.socket = task;
    }
}

/// Re-creates the socket of an agent a previous supervisor started (re-adoption).
pub fn rebind(ctx: &CtxRef, agent: &str) -> Option<smol::Task<()>> {
    let (uid, has_run) = {
        let d = ctx.d.borrow();
        let a = d.agents.get(agent)?;
        (d.uid_of(a), dir(&d, agent).is_dir())
    };
    if !has_run {
        return None;
    }
    let l = match bind(&ctx.d.borrow(), agent, uid) {
        Ok(l) => l,
        Err(e) => {
            crate::log!("nanoclaw: {agent}: re-creating the agent socket: {e}");
            return None;
        }
    };
    serve(ctx, agent, uid, l)
}

fn accept(ctx: &CtxRef, agent: &str, uid: u32, stream: Async<UnixStream>) {
    let peer = rustix::net::sockopt::socket_peercred(stream.get_ref());
    let refuse = match peer {
        Ok(c) if c.uid.as_raw() == uid || c.uid.is_root() => None,
        Ok(c) => Some(format!("uid {} is not this agent's uid", c.uid.as_raw())),
        Err(e) => Some(format!("cannot identify the peer: {e}")),
    };
    let refuse = refuse.or_else(|| {
        let d = ctx.d.borrow();
        let n = d.socks.get(agent).map_or(0, |s| s.conns.len());
        (n >= MAX_CONNECTIONS).then(|| format!("more than {MAX_CONNECTIONS} connections"))
    });
    if let Some(why) = refuse {
        bad(ctx, agent, &format!("connection refused: {why}"));
        ctx.ex
            .spawn(async move {
                let _ = (&stream)
                    .write_all(agentapi::err(&None, Code::Limit, &why).as_bytes())
                    .await;
            })
            .detach();
        return;
    }
    let (tx, rx) = smol::channel::bounded::<String>(64);
    let id = {
        let mut d = ctx.d.borrow_mut();
        let s = d.socks.entry(agent.to_owned()).or_default();
        s.next_id += 1;
        s.conns.push((s.next_id, tx.clone()));
        s.next_id
    };
    let stream = Rc::new(stream);
    let w = stream.clone();
    ctx.ex
        .spawn(async move {
            while let Ok(line) = rx.recv().await {
                if (&*w).write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        })
        .detach();
    let c = ctx.clone();
    let name = agent.to_owned();
    ctx.ex
        .spawn(async move {
            if let Some(why) = read_loop(&c, &name, &stream, &tx).await {
                let _ = tx.send(agentapi::err(&None, Code::Limit, &why)).await;
                bad(&c, &name, &format!("disconnected: {why}"));
            }
            if let Some(s) = c.d.borrow_mut().socks.get_mut(&name) {
                s.conns.retain(|(i, _)| *i != id);
            }
            // Let the writer flush the last answer, then close.
            tx.close();
        })
        .detach();
}

/// Reads and serves lines until EOF (`None`) or a limit is crossed (`Some(why)`).
async fn read_loop(
    ctx: &CtxRef,
    agent: &str,
    stream: &Async<UnixStream>,
    tx: &smol::channel::Sender<String>,
) -> Option<String> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let (mut tokens, mut last) = (BURST, std::time::Instant::now());
    let mut bad_count = 0u32;
    loop {
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let now = std::time::Instant::now();
            tokens = (tokens + now.duration_since(last).as_secs_f64() * RATE_PER_S).min(BURST);
            last = now;
            if tokens < 1.0 {
                return Some(format!(
                    "more than {RATE_PER_S} messages per second (bursts of {BURST})"
                ));
            }
            tokens -= 1.0;
            let answer = match agentapi::parse(line) {
                Ok((id, op)) => serve_op(ctx, agent, &id, op),
                Err(b) => {
                    bad_count += 1;
                    bad(ctx, agent, &format!("malformed message: {}", b.error));
                    if bad_count >= BAD_PER_CONNECTION {
                        let _ = tx
                            .send(agentapi::err(&b.id, Code::BadRequest, &b.error))
                            .await;
                        return Some(format!("{bad_count} malformed messages"));
                    }
                    agentapi::err(&b.id, Code::BadRequest, &b.error)
                }
            };
            if tx.send(answer).await.is_err() {
                return None;
            }
        }
        if buf.len() > MAX_LINE {
            return Some(format!("a message longer than {MAX_LINE} bytes"));
        }
        match (&*stream).read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Audits a misbehaving client (rate-limited) and counts it for the agent's rules.
fn bad(ctx: &CtxRef, agent: &str, what: &str) {
    {
        let mut d = ctx.d.borrow_mut();
        let key = d.agents.get(agent).map_or(u64::MAX, |a| u64::from(a.slot));
        let now = now_ms();
        let (closed, admit) = d.sock_limiter.admit(key, now);
        if let Some(n) = closed {
            d.audit(
                agent,
                AuditKind::BadMessage,
                &format!("{n} more socket problems in the last second (rate-limited)"),
                true,
            );
        }
        if admit {
            d.audit(
                agent,
                AuditKind::BadMessage,
                &format!("agent socket: {what}"),
                true,
            );
        }
    }
    super::violations::note(ctx, agent, Event::BadMessage);
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Serves one request; returns the answer line.
fn serve_op(ctx: &CtxRef, agent: &str, id: &Option<Value>, op: Op) -> String {
    let result: Result<Value, Refusal> = match op {
        Op::Hello { protocol } => {
            let r = hello(ctx, agent, protocol);
            // Messages that waited for this agent follow the answer.
            if r.is_ok() {
                let c = ctx.clone();
                let n = agent.to_owned();
                ctx.ex
                    .spawn(async move {
                        smol::future::yield_now().await;
                        flush_inbox(&c, &n);
                    })
                    .detach();
            }
            r
        }
        Op::Heartbeat { status } => heartbeat(ctx, agent, status),
        Op::Whoami => Ok(whoami(&ctx.d.borrow(), agent)),
        Op::Config => Ok(config(&ctx.d.borrow(), agent)),
        Op::OutboxPut { topic, data } => outbox_put(ctx, agent, &topic, data),
        Op::RequestCapability { token } => {
            super::grants::request(ctx, agent, &token).map_err(|e| (Code::Denied, e))
        }
        Op::Send { to, topic, data } => send(ctx, agent, &to, &topic, data),
    };
    match result {
        Ok(v) => agentapi::ok(id, obj(v)),
        Err((code, e)) => agentapi::err(id, code, &e),
    }
}

fn unknown() -> Refusal {
    (Code::Unavailable, "unknown agent".into())
}

fn hello(ctx: &CtxRef, agent: &str, protocol: Option<u32>) -> Result<Value, Refusal> {
    if let Some(p) = protocol
        && p != agentapi::PROTOCOL
    {
        return Err((
            Code::BadRequest,
            format!(
                "protocol {p} is not spoken here; this supervisor speaks {}",
                agentapi::PROTOCOL
            ),
        ));
    }
    let d = ctx.d.borrow();
    let a = d.agents.get(agent).ok_or_else(unknown)?;
    Ok(json!({
        "agent": agent,
        "version": a.manifest.version,
        "device_id": d.device_id,
        "protocol": agentapi::PROTOCOL,
        "heartbeat_s": a.manifest.health.map(|h| h.heartbeat_s),
    }))
}

fn heartbeat(ctx: &CtxRef, agent: &str, status: Option<String>) -> Result<Value, Refusal> {
    let mut d = ctx.d.borrow_mut();
    let a = d.agents.get_mut(agent).ok_or_else(unknown)?;
    let now = now_ms();
    a.last_heartbeat_ms = Some(now);
    if let Some(s) = status {
        a.health_status = s.chars().take(200).collect();
    }
    let due = a
        .manifest
        .health
        .map(|h| now + 2_000 * u64::from(h.heartbeat_s));
    Ok(json!({ "due_by_ms": due }))
}

fn whoami(d: &Daemon, agent: &str) -> Value {
    let Some(a) = d.agents.get(agent) else {
        return json!({});
    };
    json!({
        "agent": agent,
        "version": a.manifest.version,
        "uid": d.uid_of(a),
        "device_id": d.device_id,
        "state": a.state,
        "trust": a.rules.trust.score(now_ms()),
        "policy_version": d.policy.version,
    })
}

fn config(d: &Daemon, agent: &str) -> Value {
    let Some(a) = d.agents.get(agent) else {
        return json!({});
    };
    let eff = a.admission.as_ref().ok();
    let grant = d.policy.agents.get(agent);
    let out: Vec<Value> = d
        .policy
        .channels
        .iter()
        .filter(|c| c.from == agent)
        .map(|c| json!({"to": c.to, "topic": c.topic}))
        .collect();
    let inc: Vec<Value> = d
        .policy
        .channels
        .iter()
        .filter(|c| c.to == agent)
        .map(|c| json!({"from": c.from, "topic": c.topic}))
        .collect();
    json!({
        "memory_bytes": eff.map(|e| e.memory_max),
        "cpus": eff.map(|e| e.cpus),
        "pids": eff.map(|e| e.pids_max),
        "scratch_bytes": eff.map(|e| e.scratch_bytes),
        "network": eff.map(|e| e.network.iter().map(ToString::to_string).collect::<Vec<_>>()),
        "grantable": grant.map(|g| g.grantable.clone()).unwrap_or_default(),
        "grants": d.grants.for_agent(agent).iter()
            .map(|g| json!({"capability": g.capability, "not_after": g.not_after}))
            .collect::<Vec<_>>(),
        "channels": { "send": out, "receive": inc },
        "heartbeat_s": a.manifest.health.map(|h| h.heartbeat_s),
        "policy_version": d.policy.version,
        "energy": grant.and_then(|g| g.energy).map(|e| json!({
            "budget_mwh": e.budget_mwh,
            "window_s": e.window_s,
            "used_mwh": a.energy.window.used_mwh,
        })),
        "runtime": a.manifest.runtime,
    })
}

fn outbox_put(ctx: &CtxRef, agent: &str, topic: &str, data: Value) -> Result<Value, Refusal> {
    if !crate::config::policy::valid_topic(topic) {
        return Err((
            Code::BadRequest,
            format!(
                "topic `{}` must be 1 to 64 of a-z 0-9 . _ -",
                topic.escape_default()
            ),
        ));
    }
    let mut d = ctx.d.borrow_mut();
    let Some(o) = d.outbox.as_mut() else {
        return Err((
            Code::Unavailable,
            "the outbox is unavailable on this device (see `nanoclaw status`)".into(),
        ));
    };
    let seq = o.put(now_ms(), agent, topic, data).map_err(|e| {
        let code = match e {
            crate::outbox::OutboxError::TooLarge(_) => Code::BadRequest,
            _ => Code::Unavailable,
        };
        (code, e.to_string())
    })?;
    Ok(json!({ "seq": seq }))
}

/// Inter-agent message along a declared channel.
fn send(ctx: &CtxRef, agent: &str, to: &str, topic: &str, data: Value) -> Result<Value, Refusal> {
    let mut d = ctx.d.borrow_mut();
    let allowed = d.policy.channels.iter().any(|c| c.allows(agent, to, topic));
    if !allowed || !crate::config::policy::valid_topic(topic) {
        let why = format!(
            "no channel from {agent} to {} for topic {} in the policy",
            to.escape_default(),
            topic.escape_default()
        );
        d.audit(agent, AuditKind::ChannelRefused, &why, true);
        return Err((Code::Denied, why));
    }
    let size = serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len());
    if size > crate::outbox::MAX_DATA {
        return Err((
            Code::BadRequest,
            format!("data is {size} bytes; at most {}", crate::outbox::MAX_DATA),
        ));
    }
    let line = format!(
        "{}\n",
        json!({"event": "message", "from": agent, "topic": topic, "data": data})
    );
    let s = d.socks.entry(to.to_owned()).or_default();
    let delivered = s
        .conns
        .iter()
        .filter(|(_, tx)| tx.try_send(line.clone()).is_ok())
        .count();
    if delivered > 0 {
        return Ok(json!({ "delivered": delivered }));
    }
    if s.inbox.len() >= INBOX_MAX {
        return Err((
            Code::Unavailable,
            format!("{to} is not connected and {INBOX_MAX} messages already wait for it"),
        ));
    }
    s.inbox.push_back(line);
    Ok(json!({ "delivered": 0, "queued": s.inbox.len() }))
}

/// Delivers queued messages once the agent said hello.
fn flush_inbox(ctx: &CtxRef, agent: &str) {
    let mut d = ctx.d.borrow_mut();
    let Some(s) = d.socks.get_mut(agent) else {
        return;
    };
    let Some((_, tx)) = s.conns.last().cloned() else {
        return;
    };
    while let Some(line) = s.inbox.front() {
        if tx.try_send(line.clone()).is_err() {
            break;
        }
        s.inbox.pop_front();
    }
}

/// Forgets an agent's connections and queued messages (it was removed).
pub fn forget(d: &mut Daemon, agent: &str) {
    d.socks.remove(agent);
}

/// The socket state of every agent, for `status`.
pub fn summary(d: &Daemon) -> BTreeMap<String, Value> {
    d.socks
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                json!({"connections": s.conns.len(), "queued": s.inbox.len()}),
            )
        })
        .collect()
}
