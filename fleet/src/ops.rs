//! Operator commands: enrol devices, push policies, publish bundles, issue grants, and look
//! at the fleet. They work on the database directly, so any machine that reaches it (every
//! replica) can run them; the admin HTTP API calls the same functions.

use std::path::Path;

use nanoclaw::policy::signed::{self, Kind};
use serde_json::{Value, json};

use crate::db::{BundleRow, Db, Stream, device_target, group_target};
use crate::pki;
use crate::serve::now_ms;

/// Largest bundle accepted for publishing.
pub const MAX_BUNDLE: u64 = 512 * 1024 * 1024;

/// Who a push is for.
#[derive(Debug, Clone)]
pub enum Target {
    Group(String),
    Device(String),
}

impl Target {
    /// Exactly one of a group or a device.
    pub fn of(group: Option<String>, device: Option<String>) -> Option<Target> {
        match (group, device) {
            (Some(g), None) => Some(Target::Group(g)),
            (None, Some(d)) => Some(Target::Device(d)),
            _ => None,
        }
    }

    pub fn key(&self) -> String {
        match self {
            Target::Group(g) => group_target(g),
            Target::Device(d) => device_target(d),
        }
    }
}

/// Parses a policy file (read with its size cap) as JSON or YAML, by content: JSON starts
/// with `{`.
pub fn parse_policy(text: &str, name: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("{name}: {e}"))
    } else {
        // serde_yaml refuses duplicate keys, like the device's JSON parser.
        serde_yaml::from_str::<Value>(text).map_err(|e| format!("{name}: YAML: {e}"))
    }
}

/// `policy push`: validates the policy (the device's own checks, against `master.json` in the
/// fleet dir when present), gives it the next fleet-wide version, signs and stores it.
/// Returns the version.
pub async fn push_policy(
    db: &Db,
    dir: &Path,
    doc: Value,
    base: &Path,
    target: &Target,
) -> Result<u64, String> {
    if signed::is_envelope(&doc) {
        return Err("push the unsigned policy; the fleet signs it".into());
    }
    let Value::Object(mut obj) = doc else {
        return Err("a policy is a JSON object".into());
    };
    if let Target::Device(d) = target
        && db.device(d).await.map_err(|e| e.to_string())?.is_none()
    {
        return Err(format!("no device `{d}` is enrolled"));
    }
    let asked = obj.get("version").and_then(Value::as_u64).unwrap_or(0);
    let next = (db.max_policy_version().await.map_err(|e| e.to_string())? as u64 + 1).max(asked);
    obj.insert("version".into(), json!(next));
    let payload = Value::Object(obj);
    let master_path = dir.join("master.json");
    let master = if master_path.exists() {
        Some(
            nanoclaw::config::master::MasterPolicy::load(&master_path)
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let bytes = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
    let judge = nanoclaw::policy::Judge {
        key: None,
        allow_local: true,
        master: master.as_ref(),
        device_memory: u64::MAX / 4,
        base,
    };
    judge.accept(&bytes).map_err(|e| e.to_string())?;
    let key = pki::signing_key(dir)?;
    let env = signed::sign(Kind::Policy, payload, &key)?;
    let env = serde_json::to_vec(&env).map_err(|e| e.to_string())?;
    db.store_policy(&target.key(), next as i64, &env, now_ms())
        .await
        .map_err(|e| e.to_string())?;
    Ok(next)
}

/// `bundle publish`: stores the archive and its signature (`FILE.sigstore.json`) by digest
/// and assigns it to the target. Returns `name version digest`.
pub async fn publish_bundle(db: &Db, file: &Path, target: &Target) -> Result<String, String> {
    let len = std::fs::metadata(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    if len > MAX_BUNDLE {
        return Err(format!(
            "{}: {len} bytes; at most {MAX_BUNDLE}",
            file.display()
        ));
    }
    let manifest = nanoclaw::bundle::manifest_of(file)?;
    let sig_path = std::path::PathBuf::from(format!("{}.sigstore.json", file.display()));
    let signature = nanoclaw::sigstore::read_capped(&sig_path, 1024 * 1024, "signature")
        .map_err(|e| format!("{e} (sign it with `nanoclaw bundle sign` first)"))?;
    serde_json::from_str::<Value>(&signature)
        .map_err(|e| format!("{}: not JSON: {e}", sig_path.display()))?;
    let (digest, size) = nanoclaw::bundle::sha256_file(file).map_err(|e| e.to_string())?;
    let digest = nanoclaw::bundle::hex(&digest);
    let row = BundleRow {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        size: size as i64,
        digest: digest.clone(),
        signature: signature.into_bytes(),
    };
    let mut data = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    db.store_bundle(&row, &mut data, now_ms())
        .await
        .map_err(|e| e.to_string())?;
    db.assign(&target.key(), &row.name, &digest)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("{} {} sha256:{digest}", row.name, row.version))
}

/// `grant`: signs a grant token with the fleet key and queues it for the target.
pub async fn grant(
    db: &Db,
    dir: &Path,
    agent: &str,
    capability: &str,
    ttl_s: u64,
    target: &Target,
) -> Result<Value, String> {
    capability
        .parse::<nanoclaw::config::policy::Capability>()
        .map_err(|e| format!("--capability: {e}"))?;
    if ttl_s == 0 || ttl_s > nanoclaw::policy::grant::MAX_LIFETIME_S {
        return Err(format!(
            "--ttl {ttl_s}: between 1 and {} seconds",
            nanoclaw::policy::grant::MAX_LIFETIME_S
        ));
    }
    let now_s = now_ms() as u64 / 1000;
    let token = nanoclaw::policy::grant::Token {
        agent: agent.into(),
        capability: capability.into(),
        not_after: now_s + ttl_s,
        nonce: nanoclaw::bundle::hex(&pki::random_bytes::<12>()),
        device: match target {
            Target::Device(d) => Some(d.clone()),
            Target::Group(_) => None,
        },
    };
    let env = nanoclaw::policy::grant::sign(&token, &pki::signing_key(dir)?)?;
    let bytes = serde_json::to_vec(&env).map_err(|e| e.to_string())?;
    db.store_grant(
        &target.key(),
        agent,
        capability,
        &bytes,
        (token.not_after * 1000) as i64,
        now_ms(),
    )
    .await
    .map_err(|e| e.to_string())?;
    serde_json::to_value(&env).map_err(|e| e.to_string())
}

/// `devices`: the registry with what each device last said.
pub async fn devices(db: &Db) -> Result<Vec<Value>, String> {
    let now = now_ms();
    let list = db.devices(100_000).await.map_err(|e| e.to_string())?;
    Ok(list
        .into_iter()
        .map(|d| {
            json!({
                "id": d.id, "group": d.group,
                "last_seen_s_ago": (d.last_seen_ms > 0).then(|| (now - d.last_seen_ms) / 1000),
                "firmware": d.firmware, "policy_version": d.policy_version,
                "audit": {"acked": d.audit_acked, "high": d.audit_high,
                          "backlog": (d.audit_high - d.audit_acked).max(0)},
                "outbox": {"acked": d.outbox_acked, "high": d.outbox_high,
                           "backlog": (d.outbox_high - d.outbox_acked).max(0)},
                "dropped_on_device": d.dropped, "gaps": d.gaps, "sessions": d.sessions,
            })
        })
        .collect())
}

/// `audit --device D`: the device's audit records as JSON, oldest first.
pub async fn audit(db: &Db, device: &str, after: i64, limit: i64) -> Result<Vec<Value>, String> {
    if db
        .device(device)
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err(format!("no device `{device}` is enrolled"));
    }
    let rows = db
        .records(Stream::Audit, device, after, limit)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(
            |(seq, rec)| match postcard::from_bytes::<nanoclaw_proto::audit::AuditRecord>(&rec) {
                Ok(r) => audit_json(seq, &r),
                Err(e) => json!({"seq": seq, "undecodable": e.to_string()}),
            },
        )
        .collect())
}

/// One stored audit record as the CLI, the admin API and the dashboard show it.
pub fn audit_json(seq: i64, r: &nanoclaw_proto::audit::AuditRecord) -> Value {
    json!({"seq": seq, "time_ms": r.time_ms, "agent": r.agent.as_str(),
           "kind": nanoclaw::daemon::kind_name(r.kind), "reason": r.reason.as_str()})
}

/// `outbox --device D`: what the device's agents put, oldest first.
pub async fn outbox(db: &Db, device: &str, after: i64, limit: i64) -> Result<Vec<Value>, String> {
    let rows = db
        .records(Stream::Outbox, device, after, limit)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(|(seq, rec)| {
            let body = serde_json::from_slice::<Value>(&rec)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&rec).into()));
            json!({"seq": seq, "record": body})
        })
        .collect())
}
