//! The conformance agent (sdk/CONFORMANCE.md): the host test runs it in a real sandbox and
//! reads these lines from its stdout, the same for every SDK.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nanoclaw_agent::{Client, Code, Error, Result};
use serde_json::{Value, json};

/// Linux errno values for a connect the egress rules refuse.
const EPERM: i32 = 1;
const EACCES: i32 = 13;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "conformance: {line}");
    let _ = out.flush();
}

/// Prints why a step that must succeed did not, and ends the agent.
fn fail(e: &Error) -> ! {
    say(&format!("unexpected error {e}"));
    std::process::exit(1);
}

/// The line for a step that must be refused with `want`.
fn refused<T>(result: Result<T>, want: &Code) -> String {
    match result {
        Ok(_) => "unexpected success".into(),
        Err(Error::Supervisor { code, reason }) if code == *want => {
            format!("error {code}: {reason}")
        }
        Err(e) => format!("unexpected error {e}"),
    }
}

fn connect(port: u16) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(_) => "ok".into(),
        Err(e) if matches!(e.raw_os_error(), Some(EPERM | EACCES)) => "denied".into(),
        Err(e) => format!("error {e}"),
    }
}

fn port(data: &Value, key: &str) -> u16 {
    data[key]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| fail(&Error::Protocol(format!("the message has no `{key}`"))))
}

fn main() {
    let lang = std::env::var("LANG_NAME").unwrap_or_else(|_| "rust".into());
    let peer = std::env::var("PEER").unwrap_or_else(|_| "hub".into());

    let client = Client::connect(None).unwrap_or_else(|e| fail(&e));
    let hello = client.hello();
    let beat = hello.heartbeat_s.map_or("none".into(), |s| s.to_string());
    say(&format!("hello agent={} heartbeat_s={beat}", hello.agent));

    let heartbeat = client.start_heartbeat(None, None);

    let config = client.config().unwrap_or_else(|e| fail(&e));
    let send: Vec<String> = config
        .channels
        .send
        .iter()
        .map(|c| format!("{}/{}", c.to, c.topic))
        .collect();
    let receive: Vec<String> = config
        .channels
        .receive
        .iter()
        .map(|c| format!("{}/{}", c.from, c.topic))
        .collect();
    say(&format!(
        "config memory_bytes={} send={} receive={} energy_budget_mwh={} runtime={}",
        config.memory_bytes.map_or("none".into(), |n| n.to_string()),
        send.join(","),
        receive.join(","),
        config
            .energy
            .as_ref()
            .map_or("none".into(), |e| e.budget_mwh.to_string()),
        config.runtime.as_deref().unwrap_or("none"),
    ));

    let seq = client
        .outbox_put("telemetry", &json!({"lang": lang, "n": 1}))
        .unwrap_or_else(|e| fail(&e));
    say(&format!("outbox seq={seq}"));

    say(&refused(
        client.outbox_put("Bad Topic", &1),
        &Code::BadRequest,
    ));
    say(&refused(client.send(&peer, "secrets", "x"), &Code::Denied));

    let sent = client
        .send(&peer, "readings", &json!({"lang": lang}))
        .unwrap_or_else(|e| fail(&e));
    let queued = sent.queued.map_or("none".into(), |n| n.to_string());
    say(&format!(
        "send delivered={} queued={queued}",
        sent.delivered
    ));

    say("ready");
    let message = match client.receive(Some(Duration::from_secs(60))) {
        Ok(Some(m)) => m,
        Ok(None) => fail(&Error::Protocol("no message within 60 s".into())),
        Err(e) => fail(&e),
    };
    say(&format!(
        "message from={} topic={}",
        message.from, message.topic
    ));

    let token = &message.data["token"];
    let grant = client
        .request_capability(token)
        .unwrap_or_else(|e| fail(&e));
    say(&format!(
        "grant capability={} not_after={}",
        grant.capability, grant.not_after
    ));

    let granted = port(&message.data, "port");
    let other = port(&message.data, "other_port");
    say(&format!("connect granted {}", connect(granted)));
    say(&format!("connect other {}", connect(other)));

    say(&refused(client.request_capability(token), &Code::Denied));

    let past = UNIX_EPOCH + Duration::from_secs(grant.not_after + 2);
    while let Ok(left) = past.duration_since(SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(100));
    }
    say(&format!("connect expired {}", connect(granted)));

    heartbeat.stop();
    say("heartbeat stopped");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
