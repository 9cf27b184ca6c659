use nanoclaw_agent::Client;
use serde_json::json;

fn main() -> Result<(), nanoclaw_agent::Error> {
    let client = Client::connect(None)?;
    let _heartbeat = client.start_heartbeat(None, None);
    let seq = client.outbox_put("telemetry", &json!({"hello": "rust"}))?;
    println!("example: sent seq={seq}");
    loop {
        if let Some(m) = client.receive(None)? {
            println!("example: from={} topic={} data={}", m.from, m.topic, m.data);
        }
    }
}
