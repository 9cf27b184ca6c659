//! The client against an in-process fake supervisor on a temporary Unix socket: answers
//! matched by id around message events, refusals with their codes, lost connections and
//! reconnects, timeouts, concurrent callers and the heartbeat helper.
// Test support code: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nanoclaw_agent::{Client, Code, Error};
use serde_json::{Value, json};

/// The supervisor's side of one connection.
struct Peer {
    out: UnixStream,
}

impl Peer {
    fn line(&mut self, v: &Value) {
        let _ = writeln!(self.out, "{v}");
    }

    fn ok(&mut self, req: &Value, fields: Value) {
        let mut v = fields;
        v["ok"] = json!(true);
        v["id"] = req["id"].clone();
        self.line(&v);
    }

    fn refuse(&mut self, req: &Value, code: Option<&str>, reason: &str) {
        let mut v = json!({"ok": false, "id": req["id"], "error": reason});
        if let Some(c) = code {
            v["code"] = json!(c);
        }
        self.line(&v);
    }

    fn close(&mut self) {
        let _ = self.out.shutdown(Shutdown::Both);
    }
}

type Handler = dyn Fn(&mut Peer, &Value) + Send + Sync;

/// A fake supervisor: answers `hello` itself and hands every other request to the test.
struct Fake {
    path: PathBuf,
    hellos: Arc<AtomicUsize>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn fake(handler: impl Fn(&mut Peer, &Value) + Send + Sync + 'static) -> Fake {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "nanoclaw-agent-test-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let handler: Arc<Handler> = Arc::new(handler);
    let hellos = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hellos);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let handler = Arc::clone(&handler);
            let hellos = Arc::clone(&counted);
            thread::spawn(move || serve(stream, &*handler, &hellos));
        }
    });
    Fake { path, hellos }
}

fn serve(stream: UnixStream, handler: &Handler, hellos: &AtomicUsize) {
    let mut peer = Peer {
        out: stream.try_clone().unwrap(),
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let req: Value = serde_json::from_str(&line).unwrap();
        if req["op"] == "hello" {
            assert_eq!(req["protocol"], 1);
            hellos.fetch_add(1, Ordering::SeqCst);
            peer.ok(
                &req,
                json!({"agent": "sensor", "version": "1.0.0", "device_id": "dev-1",
                       "protocol": 1, "heartbeat_s": 1, "from_the_future": true}),
            );
        } else {
            handler(&mut peer, &req);
        }
    }
}

fn whoami_answer() -> Value {
    json!({"agent": "sensor", "version": "1.0.0", "uid": 61000, "device_id": "dev-1",
           "state": "running", "trust": 100, "policy_version": 3, "new_field": [1, 2]})
}

fn connect(f: &Fake) -> Client {
    Client::connect(Some(&f.path)).unwrap()
}

#[test]
fn client_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Client>();
}

#[test]
fn hello_is_typed_and_ignores_unknown_fields() {
    let f = fake(|_, _| {});
    let c = connect(&f);
    let h = c.hello();
    assert_eq!(
        (
            h.agent.as_str(),
            h.device_id.as_str(),
            h.protocol,
            h.heartbeat_s
        ),
        ("sensor", "dev-1", 1, Some(1))
    );
}

#[test]
fn answers_are_matched_by_id_and_events_between_them_are_queued() {
    let f = fake(|p, req| {
        // An answer to nobody's id and a message event come before the real answer.
        p.line(&json!({"ok": true, "id": 987_654, "agent": "wrong"}));
        p.line(
            &json!({"event": "message", "from": "hub", "topic": "readings",
                       "data": {"n": 1}}),
        );
        p.line(&json!({"event": "something_new"}));
        match req["op"].as_str() {
            Some("whoami") => p.ok(req, whoami_answer()),
            _ => p.refuse(req, Some("bad_request"), "unknown op"),
        }
    });
    let c = connect(&f);
    let w = c.whoami().unwrap();
    assert_eq!(w.agent, "sensor");
    assert_eq!(w.uid, Some(61000));
    assert_eq!(w.state.as_deref(), Some("running"));
    let m = c.receive(Some(Duration::from_secs(1))).unwrap().unwrap();
    assert_eq!((m.from.as_str(), m.topic.as_str()), ("hub", "readings"));
    assert_eq!(m.data, json!({"n": 1}));
    assert_eq!(c.receive(Some(Duration::ZERO)).unwrap(), None);
}

#[test]
fn config_is_typed_and_lenient() {
    let f = fake(|p, req| {
        p.ok(
            req,
            json!({"memory_bytes": 16_777_216, "cpus": 0.5, "pids": 64, "scratch_bytes": null,
                       "network": ["10.0.0.1:443"], "grantable": ["net:10.0.0.2:80"],
                       "grants": [{"capability": "net:10.0.0.2:80", "not_after": 99}],
                       "channels": {"send": [{"to": "display", "topic": "readings"}],
                                    "receive": [{"from": "hub", "topic": "*"}]},
                       "heartbeat_s": 30, "policy_version": 2,
                       "energy": {"budget_mwh": 500, "window_s": 3600, "used_mwh": 1.5},
                       "runtime": "python", "something_newer": {}}),
        );
    });
    let c = connect(&f);
    let cfg = c.config().unwrap();
    assert_eq!(cfg.memory_bytes, Some(16_777_216));
    assert_eq!(cfg.scratch_bytes, None);
    assert_eq!(cfg.channels.send[0].to, "display");
    assert_eq!(cfg.channels.receive[0].from, "hub");
    assert_eq!(cfg.grants[0].not_after, 99);
    let energy = cfg.energy.unwrap();
    assert_eq!((energy.budget_mwh, energy.window_s), (500, 3600));
    assert_eq!(cfg.runtime.as_deref(), Some("python"));
    // An older supervisor: no energy, runtime or lists.
    let old: nanoclaw_agent::Config =
        serde_json::from_value(json!({"memory_bytes": null})).unwrap();
    assert_eq!((old.energy, old.runtime), (None, None));
    assert!(old.channels.send.is_empty() && old.grantable.is_empty());
}

#[test]
fn refusals_keep_their_code_and_reason_verbatim() {
    let f = fake(|p, req| {
        let topic = req["topic"].as_str().unwrap();
        let reason = format!("no channel for `{topic}` — ünïcode \"quoted\"");
        p.refuse(req, (topic != "none").then_some(topic), &reason);
    });
    let c = connect(&f);
    for (topic, want) in [
        ("bad_request", Code::BadRequest),
        ("denied", Code::Denied),
        ("unavailable", Code::Unavailable),
        ("limit", Code::Limit),
        ("teapot", Code::Other("teapot".into())),
        ("none", Code::Other(String::new())),
    ] {
        match c.send("display", topic, "x") {
            Err(Error::Supervisor { code, reason }) => {
                assert_eq!(code, want);
                assert_eq!(
                    reason,
                    format!("no channel for `{topic}` — ünïcode \"quoted\"")
                );
            }
            other => panic!("{topic}: {other:?}"),
        }
    }
    let e = c.outbox_put("denied", &1).unwrap_err();
    assert_eq!(e.code(), Some(&Code::Denied));
    assert!(
        e.to_string().contains("(denied): no channel for `denied`"),
        "{e}"
    );
}

#[test]
fn an_error_line_without_id_then_close_is_disconnected() {
    let f = fake(|p, _| {
        p.line(&json!({"ok": false, "error": "more than 4 connections", "code": "limit"}));
        p.close();
    });
    let c = connect(&f);
    match c.whoami() {
        Err(Error::Disconnected(why)) => assert!(why.contains("more than 4 connections"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reconnects_and_says_hello_again_after_the_server_closes() {
    let calls = AtomicUsize::new(0);
    let f = fake(move |p, req| match calls.fetch_add(1, Ordering::SeqCst) {
        // The first call is in flight when the connection drops.
        0 => p.close(),
        // The second is answered, then the connection drops between calls.
        1 => {
            p.ok(req, whoami_answer());
            p.close();
        }
        _ => p.ok(req, whoami_answer()),
    });
    let c = connect(&f);
    assert!(matches!(c.whoami(), Err(Error::Disconnected(_))));
    assert_eq!(c.whoami().unwrap().agent, "sensor");
    assert_eq!(f.hellos.load(Ordering::SeqCst), 2);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(c.whoami().unwrap().agent, "sensor");
    assert_eq!(f.hellos.load(Ordering::SeqCst), 3);
}

#[test]
fn connecting_without_a_socket_and_calling_after_close_are_disconnected() {
    let missing = std::env::temp_dir().join(format!("nanoclaw-agent-none-{}", std::process::id()));
    assert!(matches!(
        Client::connect(Some(&missing)),
        Err(Error::Disconnected(_))
    ));
    let f = fake(|p, req| p.ok(req, json!({"due_by_ms": 5})));
    let c = connect(&f);
    assert_eq!(c.heartbeat(Some("ok")).unwrap(), Some(5));
    c.close();
    assert!(matches!(c.heartbeat(None), Err(Error::Disconnected(_))));
    assert!(matches!(c.receive(None), Err(Error::Disconnected(_))));
}

#[test]
fn receive_times_out() {
    let f = fake(|_, _| {});
    let c = connect(&f);
    let start = Instant::now();
    assert_eq!(c.receive(Some(Duration::from_millis(150))).unwrap(), None);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn concurrent_calls_from_two_threads_get_their_own_answers() {
    // The fake holds the first heartbeat until the second arrives, then answers the
    // second first: each caller must still get the answer to its own request.
    let held: Mutex<Vec<Value>> = Mutex::new(Vec::new());
    let f = fake(move |p, req| {
        let mut held = held.lock().unwrap();
        held.push(req.clone());
        if held.len() == 2 {
            for r in held.drain(..).rev() {
                let due = if r["status"] == "a" { 1 } else { 2 };
                p.ok(&r, json!({"due_by_ms": due}));
            }
        }
    });
    let c = connect(&f);
    thread::scope(|s| {
        let a = s.spawn(|| c.heartbeat(Some("a")));
        let b = s.spawn(|| c.heartbeat(Some("b")));
        assert_eq!(a.join().unwrap().unwrap(), Some(1));
        assert_eq!(b.join().unwrap().unwrap(), Some(2));
    });
}

#[test]
fn request_capability_takes_an_object_or_its_text() {
    let f = fake(|p, req| match req["token"].get("capability") {
        Some(cap) => p.ok(req, json!({"capability": cap, "not_after": 42})),
        None => p.refuse(req, Some("bad_request"), "the token is not an object"),
    });
    let c = connect(&f);
    let token = json!({"capability": "net:10.0.0.2:80", "sig": "…"});
    assert_eq!(c.request_capability(&token).unwrap().not_after, 42);
    let g = c.request_capability_text(&token.to_string()).unwrap();
    assert_eq!(g.capability, "net:10.0.0.2:80");
    let e = c.request_capability_text("not json").unwrap_err();
    assert_eq!(e.code(), Some(&Code::BadRequest));
}

#[test]
fn heartbeat_helper_beats_until_stopped_and_reconnects() {
    let beats = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&beats);
    let f = fake(move |p, req| {
        assert_eq!(req["op"], "heartbeat");
        assert_eq!(req["status"], "fine");
        // The third beat finds the supervisor restarting.
        if counted.fetch_add(1, Ordering::SeqCst) == 2 {
            p.close();
        } else {
            p.ok(req, json!({"due_by_ms": 1}));
        }
    });
    let c = connect(&f);
    let hb = c.start_heartbeat(Some(Duration::from_millis(40)), Some("fine".into()));
    let start = Instant::now();
    while beats.load(Ordering::SeqCst) < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "too few heartbeats"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(f.hellos.load(Ordering::SeqCst), 2);
    hb.stop();
    let after = beats.load(Ordering::SeqCst);
    thread::sleep(Duration::from_millis(150));
    assert_eq!(beats.load(Ordering::SeqCst), after);
}

#[test]
fn readme_example_is_examples_agent() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{dir}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{dir}/examples/agent.rs")).unwrap();
    let after = &readme[readme.find("<!-- example: agent -->\n```rust\n").unwrap()..];
    let body = &after[after.find('\n').unwrap() + 1..];
    let body = &body[body.find('\n').unwrap() + 1..];
    assert_eq!(&body[..body.find("```").unwrap()], example);
}
