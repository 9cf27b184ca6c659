//! Serving the control socket inside the daemon's event loop.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use smol::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use smol::{Async, future::FutureExt};

use super::{ErrorCode, REQUEST_MAX, Request, Response};
use crate::agents::{Agent, State};
use crate::daemon::{CtxRef, Daemon, fleet, kind_name, lifecycle, now_ms};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CLIENTS: usize = 8;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for one connection: `stop`/`restart` wait for the longest allowed grace period
/// (300 s, manifest `stop_grace_s`) plus the kill.
pub const CONNECTION_MAX: Duration = Duration::from_secs(330);

/// Binds the socket (mode 0600), replacing a stale socket file nobody listens on.
pub fn bind(path: &Path) -> std::io::Result<Async<UnixListener>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another nanoclaw daemon is listening on this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Async::new(l)
}

pub async fn serve(ctx: CtxRef, listener: Async<UnixListener>) {
    let active = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            smol::Timer::after(Duration::from_millis(50)).await;
            continue;
        };
        while active.get() >= MAX_CLIENTS {
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        active.set(active.get() + 1);
        let c = ctx.clone();
        let a = active.clone();
        ctx.ex
            .spawn(async move {
                let timeout = async {
                    smol::Timer::after(CONNECTION_MAX).await;
                };
                let _ = handle(c, stream).or(timeout).await;
                a.set(a.get() - 1);
            })
            .detach();
    }
}

async fn handle(ctx: CtxRef, stream: Async<std::os::unix::net::UnixStream>) {
    let cred = rustix::net::sockopt::socket_peercred(stream.get_ref());
    let resp = match cred {
        Ok(c) if c.uid.is_root() => match read_request(&stream).await {
            Ok(req) => dispatch(&ctx, req).await,
            Err(resp) => resp,
        },
        Ok(c) => Response::Error {
            code: ErrorCode::Permission,
            message: format!(
                "uid {} may not use the control socket: root only",
                c.uid.as_raw()
            ),
        },
        Err(e) => Response::Error {
            code: ErrorCode::Permission,
            message: format!("cannot identify the peer: {e}"),
        },
    };
    let mut line = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    let mut w = &stream;
    // A client that went away mid-request just loses its answer.
    let _ = w.write_all(&line).await;
    let _ = w.flush().await;
}

async fn read_request(stream: &Async<std::os::unix::net::UnixStream>) -> Result<Request, Response> {
    let bad = |m: String| Response::Error {
        code: ErrorCode::BadRequest,
        message: m,
    };
    let mut line = Vec::new();
    let mut r = BufReader::new(stream).take(REQUEST_MAX as u64 + 1);
    let read = r.read_until(b'\n', &mut line).or(async {
        smol::Timer::after(CLIENT_TIMEOUT).await;
        Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
    });
    match read.await {
        Ok(0) => return Err(bad("empty request".into())),
        Ok(_) => {}
        Err(e) => return Err(bad(format!("reading the request: {e}"))),
    }
    if line.len() > REQUEST_MAX {
        return Err(bad(format!("request longer than {REQUEST_MAX} bytes")));
    }
    serde_json::from_slice(&line).map_err(|e| bad(format!("invalid request: {e}")))
}

fn not_found(name: &str) -> Response {
    Response::Error {
        code: ErrorCode::NotFound,
        message: format!("no agent named {name:?} is installed (see `nanoclaw agents`)"),
    }
}

/// Console requests: audited with who ran them, state changes only with a valid token.
async fn console(
    ctx: &CtxRef,
    tty: &str,
    token: Option<&str>,
    line: &str,
    request: Option<Request>,
) -> Response {
    let tty: String = tty.chars().take(64).collect();
    let line: String = line.chars().take(200).collect();
    let engineer = token.map(|t| check_token(&ctx.d.borrow(), t));
    let changes = request.as_ref().is_some_and(Request::changes_state);
    let who = match &engineer {
        Some(Ok(t)) => t.engineer.clone(),
        _ => "unauthenticated".to_owned(),
    };
    if matches!(
        request,
        Some(Request::Console { .. } | Request::Unlock { .. })
    ) {
        return Response::Error {
            code: ErrorCode::BadRequest,
            message: "a console request cannot carry another console request".into(),
        };
    }
    let locked = changes && !matches!(engineer, Some(Ok(_)));
    let text = format!(
        "console {tty}: {who}: {line}{}",
        if locked { " (refused: locked)" } else { "" }
    );
    ctx.d.borrow_mut().audit(
        "",
        nanoclaw_proto::audit::AuditKind::Console,
        &text,
        changes,
    );
    if locked {
        let why = match engineer {
            Some(Err(e)) => format!("the unlock token no longer holds ({e})"),
            _ => "the console is locked".into(),
        };
        return Response::Error {
            code: ErrorCode::Permission,
            message: format!(
                "{why}: this command changes the device; `unlock` with a field-engineer token first"
            ),
        };
    }
    match request {
        Some(r) => Box::pin(dispatch(ctx, r)).await,
        None => Response::Ok(json!({})),
    }
}

fn check_token(
    d: &Daemon,
    token: &str,
) -> Result<crate::policy::engineer::Token, crate::policy::engineer::TokenError> {
    crate::policy::engineer::check(token, d.anchors.key.as_ref(), &d.device_id, now_ms() / 1000)
}

fn unlock(ctx: &CtxRef, tty: &str, token: &str) -> Response {
    let tty: String = tty.chars().take(64).collect();
    let checked = check_token(&ctx.d.borrow(), token);
    let mut d = ctx.d.borrow_mut();
    match checked {
        Ok(t) => {
            let text = format!(
                "console {tty}: {} unlocked the console (token for {:?} until {})",
                t.engineer, t.devices, t.not_after
            );
            d.audit("", nanoclaw_proto::audit::AuditKind::Console, &text, true);
            Response::Ok(json!({ "engineer": t.engineer, "not_after": t.not_after }))
        }
        Err(e) => {
            let text = format!("console {tty}: unlock refused: {e}");
            d.audit("", nanoclaw_proto::audit::AuditKind::Console, &text, true);
            Response::Error {
                code: ErrorCode::Permission,
                message: format!("unlock refused: {e}"),
            }
        }
    }
}

async fn dispatch(ctx: &CtxRef, req: Request) -> Response {
    let exists = |n: &str| ctx.d.borrow().agents.contains_key(n);
    match req {
        Request::Unlock { tty, token } => unlock(ctx, &tty, &token),
        Request::Console {
            tty,
            token,
            line,
            request,
        } => console(ctx, &tty, token.as_deref(), &line, request.map(|r| *r)).await,
        Request::Status => Response::Ok(status(&ctx.d.borrow())),
        Request::Agents => Response::Ok(json!(agents(&ctx.d.borrow()))),
        Request::Start { agent } if !exists(&agent) => not_found(&agent),
        Request::Start { agent } => {
            {
                let mut d = ctx.d.borrow_mut();
                if let Some(a) = d.agents.get_mut(&agent) {
                    if a.quarantined {
                        return Response::Error {
                            code: ErrorCode::Failed,
                            message: format!(
                                "{agent} is quarantined ({}); lift it with `nanoclaw clear {agent}`",
                                a.reason
                            ),
                        };
                    }
                    if a.instance.is_some() {
                        return Response::Ok(
                            json!({"agent": agent, "state": "running", "note": "already running"}),
                        );
                    }
                    // An operator's start clears crash-loop history and any hold.
                    a.tracker.reset();
                    a.held = false;
                    a.state = State::Stopped;
                }
            }
            lifecycle::start(ctx, &agent);
            agent_result(ctx, &agent)
        }
        Request::Stop { agent } if !exists(&agent) => not_found(&agent),
        Request::Stop { agent } => {
            lifecycle::stop(ctx, &agent, "stopped by the control socket", true);
            lifecycle::wait_down(ctx, &agent).await;
            agent_result(ctx, &agent)
        }
        Request::Restart { agent } if !exists(&agent) => not_found(&agent),
        Request::Restart { agent } => {
            lifecycle::stop(
                ctx,
                &agent,
                "restart requested by the control socket",
                false,
            );
            lifecycle::wait_down(ctx, &agent).await;
            if let Some(a) = ctx.d.borrow_mut().agents.get_mut(&agent) {
                a.tracker.reset();
                a.held = false;
                a.state = State::Stopped;
            }
            lifecycle::start(ctx, &agent);
            agent_result(ctx, &agent)
        }
        Request::Logs { agent, n } => match ctx.d.borrow().agents.get(&agent) {
            Some(a) => Response::Ok(json!({
                "agent": agent,
                "lines": a.logs.tail(n.min(10_000)),
                "dropped_bytes": a.logs.dropped(),
            })),
            None => not_found(&agent),
        },
        Request::Audit { agent, n } => {
            let d = ctx.d.borrow();
            match d.audit.query(agent.as_deref(), n.min(10_000)) {
                Ok(recs) => Response::Ok(Value::Array(recs.iter().map(record_json).collect())),
                Err(e) => Response::Error {
                    code: ErrorCode::Failed,
                    message: format!("reading the audit log: {e}"),
                },
            }
        }
        Request::Why { agent } => match ctx.d.borrow().agents.get(&agent) {
            Some(a) => Response::Ok(why(&ctx.d.borrow(), &agent, a)),
            None => not_found(&agent),
        },
        Request::Install { path } => match crate::daemon::installer::install(ctx, &path).await {
            Ok(m) => Response::Ok(json!({ "result": m })),
            Err(m) => Response::Error {
                code: ErrorCode::Failed,
                message: m,
            },
        },
        Request::Rollback { agent }
            if !exists(&agent) && crate::daemon::runtimes::exists(&ctx.d.borrow(), &agent) =>
        {
            match crate::daemon::runtimes::rollback(ctx, &agent, "requested by the control socket")
            {
                Ok(m) => Response::Ok(json!({ "result": m })),
                Err(m) => Response::Error {
                    code: ErrorCode::Failed,
                    message: m,
                },
            }
        }
        Request::Rollback { agent } if !exists(&agent) => not_found(&agent),
        Request::Rollback { agent } => {
            match crate::daemon::installer::rollback(ctx, &agent, "requested by the control socket")
            {
                Ok(m) => Response::Ok(json!({ "result": m })),
                Err(m) => Response::Error {
                    code: ErrorCode::Failed,
                    message: m,
                },
            }
        }
        Request::Reload => policy_result(crate::daemon::policy::reload(ctx)),
        Request::Battery => Response::Ok(crate::daemon::energy::report(&ctx.d.borrow())),
        Request::Sync => match fleet::wake(&ctx.d.borrow(), fleet::Wake::Asked) {
            true => Response::Ok(json!({
                "result": "fleet session requested; `nanoclaw status` shows how it went"
            })),
            false => Response::Error {
                code: ErrorCode::Failed,
                message: "no fleet sync on this device (device.json has no `fleet` section, or its TLS files could not be loaded: see `nanoclaw audit`)".into(),
            },
        },
        Request::SimSet {
            percent,
            charger,
            speed,
        } => {
            let r =
                crate::daemon::energy::sim_set(&mut ctx.d.borrow_mut(), percent, charger, speed);
            match r {
                Ok(v) => {
                    // Act on the new charge now rather than at the next period.
                    crate::daemon::energy::sample(ctx);
                    Response::Ok(v)
                }
                Err(m) => Response::Error {
                    code: ErrorCode::Failed,
                    message: m,
                },
            }
        }
        Request::PolicyApply { path } => {
            policy_result(crate::daemon::policy::apply_file(ctx, &path))
        }
        Request::Clear { agent } if !exists(&agent) => not_found(&agent),
        Request::Clear { agent } => {
            {
                let mut d = ctx.d.borrow_mut();
                let Some(a) = d.agents.get_mut(&agent) else {
                    return not_found(&agent);
                };
                let was = a.quarantined;
                a.quarantined = false;
                a.rules.reset();
                a.tracker.reset();
                a.held = false;
                if a.instance.is_none() {
                    a.state = State::Stopped;
                }
                let text = if was {
                    "quarantine cleared by the control socket; trust reset to 100"
                } else {
                    "cleared by the control socket (was not quarantined); trust reset to 100"
                };
                d.audit(
                    &agent,
                    nanoclaw_proto::audit::AuditKind::Cleared,
                    text,
                    true,
                );
                lifecycle::persist_agent(&mut d, &agent);
            }
            lifecycle::start(ctx, &agent);
            agent_result(ctx, &agent)
        }
    }
}

/// A reload/apply report, with a one-line `result` for people.
fn policy_result(r: Result<Value, String>) -> Response {
    match r {
        Ok(mut v) => {
            let changed = v["agents"].as_object().map_or(0, |m| m.len());
            v["result"] = json!(format!(
                "policy version {} in force (was {}; {}); {changed} agent(s) changed",
                v["version"],
                v["previous"],
                v["origin"].as_str().unwrap_or("")
            ));
            Response::Ok(v)
        }
        Err(m) => Response::Error {
            code: ErrorCode::Failed,
            message: m,
        },
    }
}

fn agent_result(ctx: &CtxRef, agent: &str) -> Response {
    let d = ctx.d.borrow();
    match d.agents.get(agent) {
        Some(a) if a.state == State::Failed => Response::Error {
            code: ErrorCode::Failed,
            message: format!("{agent}: {}", a.reason),
        },
        Some(a) => Response::Ok(json!(info(&d, agent, a))),
        None => not_found(agent),
    }
}

/// One row of `nanoclaw agents --json` (DESIGN.md §1 contract).
#[derive(Serialize)]
pub struct AgentInfo {
    pub name: String,
    pub version: String,
    pub state: State,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub memory_bytes: u64,
    /// Highest use seen since the daemon started, in any instance.
    pub memory_peak_bytes: u64,
    pub memory_limit_bytes: u64,
    pub mode: &'static str,
    pub uptime_s: Option<u64>,
    pub last_exit: Option<String>,
    pub reason: String,
}

fn info(d: &Daemon, name: &str, a: &Agent) -> AgentInfo {
    let mem = a
        .instance
        .as_ref()
        .and_then(|_| d.cgroups.memory(name).ok());
    AgentInfo {
        name: name.to_owned(),
        version: a.manifest.version.clone(),
        state: a.state,
        pid: a.instance.as_ref().map(|i| i.pid),
        restarts: a.restarts,
        memory_bytes: mem.as_ref().map_or(0, |m| m.current),
        memory_peak_bytes: a.memory_peak.max(mem.as_ref().map_or(0, |m| m.peak)),
        memory_limit_bytes: a.admission.as_ref().map_or(0, |e| e.memory_max),
        mode: if a.is_service() { "service" } else { "task" },
        uptime_s: a
            .instance
            .as_ref()
            .map(|i| now_ms().saturating_sub(i.started_ms) / 1000),
        last_exit: a.last_exit.map(|e| e.to_string()),
        reason: a.reason.clone(),
    }
}

fn agents(d: &Daemon) -> Vec<AgentInfo> {
    d.agents.iter().map(|(n, a)| info(d, n, a)).collect()
}

fn record_json(r: &nanoclaw_proto::audit::AuditRecord) -> Value {
    json!({
        "seq": r.seq,
        "time": r.time_ms,
        "agent": r.agent.as_str(),
        "kind": kind_name(r.kind),
        "reason": r.reason.as_str(),
    })
}

fn status(d: &Daemon) -> Value {
    let rule_uses = d
        .egress
        .as_ref()
        .map(crate::bpf::Egress::rule_uses)
        .unwrap_or_default();
    let per_agent: Vec<Value> = d
        .agents
        .iter()
        .map(|(n, a)| {
            let eff = a.admission.as_ref().ok();
            let rep = a.instance.as_ref().and_then(|i| i.report.as_ref());
            json!({
                "agent": n,
                "state": a.state,
                "uid": d.uid_of(a),
                "memory_limit_bytes": eff.map(|e| e.memory_max),
                "pids_max": eff.map(|e| e.pids_max),
                "cpus": eff.map(|e| e.cpus),
                "scratch_bytes": eff.map(|e| e.scratch_bytes),
                "seccomp": rep.map(|r| r.seccomp.clone()),
                "landlock": rep.map(|r| r.landlock.clone()),
                "namespaces": d.posture.namespaces,
                "network": a.instance.as_ref().map(|i| i.network.clone()),
                "lsm": a
                    .instance
                    .as_ref()
                    .map(|i| crate::daemon::lsm::agent_posture(d, i.lsm_cgid.is_some())),
                "traffic": a
                    .instance
                    .as_ref()
                    .and_then(|i| i.egress_cgid)
                    .and_then(|cgid| d.egress.as_ref().and_then(|e| e.traffic(cgid))),
                "adopted": a.instance.as_ref().map(|i| i.adopted),
                "trust": a.rules.trust.score(now_ms()),
                "recent_events": a
                    .rules
                    .recent(now_ms(), 3_600_000)
                    .into_iter()
                    .map(|(e, n)| (e.rule_key().to_owned(), json!(n)))
                    .collect::<serde_json::Map<_, _>>(),
                "grants": d
                    .grants
                    .for_agent(n)
                    .iter()
                    .map(|g| json!({"capability": g.capability, "not_after": g.not_after}))
                    .collect::<Vec<_>>(),
                "network_use": crate::daemon::egress::network_use(a, &rule_uses),
                "events_total": crate::config::policy::Event::ALL
                    .iter()
                    .map(|e| (e.rule_key().to_owned(), json!(a.events[*e as usize])))
                    .collect::<serde_json::Map<_, _>>(),
                "network_revoked": a.network_revoked,
                "quarantined": a.quarantined,
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for a in d.agents.values() {
        *counts.entry(a.state.as_str()).or_default() += 1;
    }
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "board": d.cfg.board,
        "board_description": d.board.description,
        "uptime_s": now_ms().saturating_sub(d.started_ms) / 1000,
        "policy_version": d.policy.version,
        "policy_origin": d.in_force.origin.to_string(),
        "device_id": d.device_id,
        "device_memory_bytes": d.device_memory,
        "posture": d.posture,
        "agents": counts,
        "fleet": d.fleet.as_ref().map(fleet::Status::json),
        "enforcement": per_agent,
        "runtimes": crate::daemon::runtimes::summary(d),
    })
}

fn why(d: &Daemon, name: &str, a: &Agent) -> Value {
    use nanoclaw_proto::audit::AuditKind as K;
    let recs: Vec<nanoclaw_proto::audit::AuditRecord> = d
        .audit
        .query(Some(name), 200)
        .unwrap_or_default()
        .iter()
        .filter(|r| {
            matches!(
                r.kind,
                K::AdmissionDenied
                    | K::OomKill
                    | K::CrashLoop
                    | K::SandboxError
                    | K::StopTimeout
                    | K::DeniedConnect
                    | K::Violation
                    | K::SyscallAnomaly
                    | K::DeniedExec
                    | K::DeniedOperation
                    | K::Exit
                    | K::HealthCheck
                    | K::BadMessage
                    | K::ChannelRefused
                    | K::GrantRefused
            )
        })
        .rev()
        .take(10)
        .cloned()
        .collect();
    let recent: Vec<Value> = recs.iter().map(record_json).collect();
    let mut hints = Vec::new();
    let seen = |k: K| recs.iter().any(|r| r.kind == k);
    if seen(K::DeniedConnect) {
        hints.push(format!(
            "a connection was denied by the egress allowlist: add the destination to requests.network in the manifest and grant it under agents.{name}.network in the policy"
        ));
    }
    if seen(K::DeniedExec) {
        hints.push(
            "an exec was denied: agents may only execute files shipped in their bundle's rootfs (not from /tmp, memfd or a host path); add the program to the bundle".into(),
        );
    }
    if seen(K::DeniedOperation) {
        hints.push(
            "bpf-lsm denied an operation that no policy grants (mount, ptrace of another process, raw/packet socket, opening a file outside the agent's own mounts): change the agent".into(),
        );
    }
    match &a.admission {
        Err(e) => hints.push(format!(
            "admission refused ({e}): raise the grant under agents.{name} in the policy, or lower the manifest request, then `nanoclaw reload`"
        )),
        Ok(e) => {
            if a.last_exit == Some(crate::agents::restart::Exit::OomKilled) {
                hints.push(format!(
                    "it was OOM-killed at its memory limit of {} bytes: raise requests.memory in the manifest and agents.{name}.memory in the policy",
                    e.memory_max
                ));
            }
        }
    }
    if a.quarantined {
        hints.push(format!(
            "an on_violation rule quarantined it: find out why (`nanoclaw audit --agent {name}`), then `nanoclaw clear {name}`"
        ));
    }
    if seen(K::HealthCheck) {
        hints.push(
            "it missed its heartbeat deadline (2 × health.heartbeat_s): send `heartbeat` on /run/nanoclaw.sock more often, or raise health.heartbeat_s".into(),
        );
    }
    if a.state == State::Failed && a.reason.starts_with("crash loop") {
        hints.push(format!(
            "restart.max_per_hour was exceeded: fix the agent, then `nanoclaw start {name}`"
        ));
    } else if a.state == State::Failed && hints.is_empty() {
        hints.push(format!(
            "see the reason and the agent's output (`nanoclaw logs {name}`)"
        ));
    }
    let hint = if hints.is_empty() {
        "nothing is blocking this agent".to_owned()
    } else {
        hints.join("; ")
    };
    json!({
        "agent": name,
        "state": a.state,
        "reason": a.reason,
        "last_exit": a.last_exit.map(|e| e.to_string()),
        "to_allow": hint,
        "recent": recent,
    })
}
