//! What devices report about themselves (protocol 2 `Status`): decoded and checked here,
//! written in batches (one transaction per batch, like check-ins), kept as the newest per
//! device for the dashboard and as a bounded per-agent history for its plots.

use std::collections::HashMap;
use std::time::Duration;

use nanoclaw_proto::sync::{AgentStatus, NO_BATTERY, Status, records};
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::mpsc;

use crate::db::{Db, DbError, placeholders};

/// History points closer together than this (per device) are not kept: devices that stay
/// connected check in every few seconds, and the plots need minutes, not seconds.
pub const POINT_EVERY_MS: i64 = 15_000;
/// History older than this is deleted.
pub const KEEP_MS: i64 = 7 * 24 * 3_600_000;
/// Longest posture text and agent state kept.
const POSTURE_MAX: usize = 512;
const STATE_MAX: usize = 32;
/// Most agents, and most bytes of agent records, in one report (the device keeps to 32 KiB).
const AGENTS_MAX: u16 = 256;
const AGENTS_BYTES_MAX: usize = 32 * 1024;
/// States that count as down in the dashboard's per-device summary.
const DOWN: [&str; 2] = ["failed", "quarantined"];

/// One agent as stored (and served as JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Agent {
    pub name: String,
    pub state: String,
    pub restarts: u32,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub energy_mwh: u64,
    pub energy_budget_mwh: u64,
    pub trust: u8,
    pub denials: u32,
}

/// A decoded `Status` with the device and time it belongs to.
#[derive(Debug, Clone)]
pub struct Report {
    pub device: String,
    pub at_ms: i64,
    pub battery_pct: Option<u8>,
    pub external_power: bool,
    pub posture: String,
    pub degraded: bool,
    pub agents: Vec<Agent>,
}

/// Decodes a device's `Status`, or says what is wrong with it.
pub fn decode(device: &str, at_ms: i64, st: &Status<'_>) -> Result<Report, String> {
    if st.posture.len() > POSTURE_MAX {
        return Err(format!("status posture over {POSTURE_MAX} bytes"));
    }
    if st.battery_pct > 100 && st.battery_pct != NO_BATTERY {
        return Err(format!("status battery {} % is over 100", st.battery_pct));
    }
    if st.n > AGENTS_MAX || st.agents.len() > AGENTS_BYTES_MAX {
        return Err(format!(
            "status with {} agents in {} bytes: at most {AGENTS_MAX} in {AGENTS_BYTES_MAX}",
            st.n,
            st.agents.len()
        ));
    }
    let mut agents = Vec::with_capacity(usize::from(st.n));
    let mut bad = None;
    let split = records::split(st.agents, st.n, |rec| {
        match postcard::from_bytes::<AgentStatus<'_>>(rec) {
            Ok(a) if bad.is_none() => {
                if let Err(e) = nanoclaw::config::check_name(a.name) {
                    bad = Some(format!("status agent name: {e}"));
                } else if a.state.len() > STATE_MAX || a.trust > 100 {
                    bad = Some(format!("status of agent `{}` is out of range", a.name));
                } else {
                    agents.push(Agent {
                        name: a.name.into(),
                        state: a.state.into(),
                        restarts: a.restarts,
                        memory_bytes: a.memory_bytes,
                        memory_limit_bytes: a.memory_limit_bytes,
                        energy_mwh: a.energy_mwh,
                        energy_budget_mwh: a.energy_budget_mwh,
                        trust: a.trust,
                        denials: a.denials,
                    });
                }
            }
            Ok(_) => {}
            Err(e) => {
                bad = bad
                    .take()
                    .or(Some(format!("undecodable agent status: {e}")))
            }
        }
    });
    if let Some(b) = bad {
        return Err(b);
    }
    if split.is_none() {
        return Err(format!("status does not hold {} agent records", st.n));
    }
    Ok(Report {
        device: device.into(),
        at_ms,
        battery_pct: (st.battery_pct != NO_BATTERY).then_some(st.battery_pct),
        external_power: st.external_power,
        posture: st.posture.into(),
        degraded: st.degraded,
        agents,
    })
}

/// Writes reports in batches; keeps the history thinned to [`POINT_EVERY_MS`] per device
/// (except that an agent new since the device's last point gets its first at once) and
/// deletes what is older than [`KEEP_MS`] once an hour.
pub async fn record(db: Db, mut rx: mpsc::Receiver<Report>) {
    // Per device: when its last point was kept, and which agents it had.
    let mut last_point: HashMap<String, (i64, Vec<String>)> = HashMap::new();
    let mut pruned = 0i64;
    let mut batch = Vec::new();
    while let Some(r) = rx.recv().await {
        batch.push(r);
        while batch.len() < 500 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let points: Vec<&Report> = batch
            .iter()
            .filter(|r| match last_point.get(&r.device) {
                None => true,
                Some((at, names)) => {
                    r.at_ms - at >= POINT_EVERY_MS
                        || r.agents.iter().any(|a| !names.contains(&a.name))
                }
            })
            .collect();
        match store(&db, &batch, &points).await {
            Ok(()) => {
                for p in &points {
                    let names = p.agents.iter().map(|a| a.name.clone()).collect();
                    last_point.insert(p.device.clone(), (p.at_ms, names));
                }
            }
            Err(e) => eprintln!("nanoclaw-fleet: recording device status: {e}"),
        }
        let now = crate::serve::now_ms();
        if now - pruned > 3_600_000 {
            pruned = now;
            if let Err(e) = sqlx::query("DELETE FROM telemetry WHERE at_ms < $1")
                .bind(now - KEEP_MS)
                .execute(&db.pool)
                .await
            {
                eprintln!("nanoclaw-fleet: pruning telemetry: {e}");
            }
        }
        batch.clear();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The newest report per device (an upsert; a device reported twice keeps its latest) and
/// the history points, in one transaction.
async fn store(db: &Db, batch: &[Report], points: &[&Report]) -> Result<(), DbError> {
    let mut latest: HashMap<&str, &Report> = HashMap::new();
    for r in batch {
        latest.insert(&r.device, r);
    }
    let latest: Vec<&Report> = latest.into_values().collect();
    let mut tx = db.write_tx().await?;
    for part in latest.chunks(50) {
        let sql = format!(
            "INSERT INTO device_status (device, at_ms, battery_pct, external_power, posture, \
             degraded, agents_total, agents_running, agents_failed, trust_min, denials, agents) \
             VALUES {} ON CONFLICT (device) DO UPDATE SET at_ms = excluded.at_ms, \
             battery_pct = excluded.battery_pct, external_power = excluded.external_power, \
             posture = excluded.posture, degraded = excluded.degraded, \
             agents_total = excluded.agents_total, agents_running = excluded.agents_running, \
             agents_failed = excluded.agents_failed, trust_min = excluded.trust_min, \
             denials = excluded.denials, agents = excluded.agents \
             WHERE device_status.at_ms <= excluded.at_ms",
            placeholders(part.len(), 12)
        );
        let mut q = sqlx::query(&sql);
        for r in part {
            let count = |s: &[&str]| {
                r.agents
                    .iter()
                    .filter(|a| s.contains(&a.state.as_str()))
                    .count() as i64
            };
            q = q
                .bind(&r.device)
                .bind(r.at_ms)
                .bind(r.battery_pct.map(i64::from))
                .bind(i64::from(r.external_power))
                .bind(&r.posture)
                .bind(i64::from(r.degraded))
                .bind(r.agents.len() as i64)
                .bind(count(&["running"]))
                .bind(count(&DOWN))
                .bind(r.agents.iter().map(|a| i64::from(a.trust)).min())
                .bind(r.agents.iter().map(|a| i64::from(a.denials)).sum::<i64>())
                .bind(serde_json::to_string(&r.agents).unwrap_or_else(|_| "[]".into()));
        }
        q.execute(&mut *tx).await?;
    }
    let rows: Vec<(&Report, &Agent)> = points
        .iter()
        .flat_map(|r| r.agents.iter().map(move |a| (*r, a)))
        .collect();
    for part in rows.chunks(100) {
        let sql = format!(
            "INSERT INTO telemetry (device, agent, at_ms, memory_bytes, energy_mwh) VALUES {} \
             ON CONFLICT DO NOTHING",
            placeholders(part.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for (r, a) in part {
            q = q
                .bind(&r.device)
                .bind(&a.name)
                .bind(r.at_ms)
                .bind(a.memory_bytes.min(i64::MAX as u64) as i64)
                .bind(a.energy_mwh.min(i64::MAX as u64) as i64);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A device's newest report as JSON, `None` before its first.
pub async fn latest(db: &Db, device: &str) -> Result<Option<Value>, DbError> {
    let row = sqlx::query(
        "SELECT at_ms, battery_pct, external_power, posture, degraded, agents \
         FROM device_status WHERE device = $1",
    )
    .bind(device)
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let agents: String = r.try_get(5)?;
    Ok(Some(json!({
        "at_ms": r.try_get::<i64, _>(0)?,
        "battery_pct": r.try_get::<Option<i64>, _>(1)?,
        "external_power": r.try_get::<i64, _>(2)? != 0,
        "posture": r.try_get::<String, _>(3)?,
        "degraded": r.try_get::<i64, _>(4)? != 0,
        "agents": serde_json::from_str::<Value>(&agents).unwrap_or(Value::Array(vec![])),
    })))
}

/// A device's history from `since_ms`, per agent `[[at_ms, memory_bytes, energy_mwh], …]`
/// oldest first (at most `limit` points in all, the newest).
pub async fn history(db: &Db, device: &str, since_ms: i64, limit: i64) -> Result<Value, DbError> {
    let rows = sqlx::query(
        "SELECT agent, at_ms, memory_bytes, energy_mwh FROM telemetry \
         WHERE device = $1 AND at_ms >= $2 ORDER BY at_ms DESC LIMIT $3",
    )
    .bind(device)
    .bind(since_ms)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let mut out: std::collections::BTreeMap<String, Vec<[i64; 3]>> = Default::default();
    for r in rows.iter().rev() {
        out.entry(r.try_get(0)?)
            .or_default()
            .push([r.try_get(1)?, r.try_get(2)?, r.try_get(3)?]);
    }
    Ok(json!({ "agents": out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(list: &[AgentStatus<'_>]) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let mut used = 0;
        for a in list {
            let b = postcard::to_allocvec(a).unwrap();
            assert!(records::push(&mut buf, &mut used, &b));
        }
        buf.truncate(used);
        buf
    }

    fn agent(name: &str) -> AgentStatus<'_> {
        AgentStatus {
            name,
            state: "running",
            restarts: 1,
            memory_bytes: 1 << 20,
            memory_limit_bytes: 32 << 20,
            energy_mwh: 5,
            energy_budget_mwh: 100,
            trust: 90,
            denials: 2,
        }
    }

    fn status(agents: &[u8], n: u16) -> Status<'_> {
        Status {
            battery_pct: 55,
            external_power: false,
            posture: "seccomp=enforced",
            degraded: false,
            n,
            agents,
        }
    }

    #[test]
    fn decodes_and_names_what_is_wrong() {
        let bytes = agents(&[agent("sensor"), agent("uplink")]);
        let r = decode("d1", 7, &status(&bytes, 2)).unwrap();
        assert_eq!(r.battery_pct, Some(55));
        assert_eq!(r.agents.len(), 2);
        assert_eq!(r.agents[1].name, "uplink");
        assert_eq!(r.agents[0].memory_limit_bytes, 32 << 20);

        let e = decode("d1", 7, &status(&bytes, 3)).unwrap_err();
        assert!(e.contains("does not hold 3"), "{e}");
        let bad = agents(&[agent("Bad/Name")]);
        let e = decode("d1", 7, &status(&bad, 1)).unwrap_err();
        assert!(e.contains("agent name"), "{e}");
        let mut t = agent("x");
        t.trust = 101;
        let bad = agents(&[t]);
        assert!(decode("d1", 7, &status(&bad, 1)).is_err());
        let e = decode("d1", 7, &status(b"\x02\x00\xff\xff", 1)).unwrap_err();
        assert!(e.contains("undecodable"), "{e}");
        let mut st = status(&bytes, 2);
        st.battery_pct = 101;
        assert!(decode("d1", 7, &st).is_err());
        st.battery_pct = NO_BATTERY;
        assert_eq!(decode("d1", 7, &st).unwrap().battery_pct, None);
        // Counts and sizes are capped before anything is allocated for them.
        let e = decode("d1", 7, &status(&bytes, 257)).unwrap_err();
        assert!(e.contains("at most 256"), "{e}");
        let big = vec![0u8; 33 * 1024];
        assert!(decode("d1", 7, &status(&big, 1)).is_err());
    }
}
