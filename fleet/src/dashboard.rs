//! The fleet dashboard: three static files (fleet/web/, built into the binary, so nothing is
//! fetched from anywhere else at run time) and the JSON views they poll, on the admin API
//! behind its bearer token. The views aggregate in SQL, so the overview and a page of the
//! device list cost the same with 10 devices or 100,000.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nanoclaw_proto::audit::{AuditKind, AuditRecord};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use crate::admin::{Admin, ApiError, App, bad, internal, rejected};
use crate::db::{DEVICE_COLS, Device, device_of, group_target};
use crate::serve::now_ms;

const INDEX: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/style.css");
const ICON: &str = include_str!("../web/icon.svg");

/// Nothing but these files runs or loads: no inline script or style, no other origin.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// Audit records a search looks through at most (newest first).
const SEARCH_SCAN: i64 = 20_000;
/// Denials shown on a device's page.
const DENIALS: usize = 20;

pub fn routes() -> Router<App> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/ui/icon.svg",
            get(|| async { asset(ICON, "image/svg+xml") }),
        )
        .route("/v1/overview", get(overview))
        .route("/v1/devices/{id}", get(device))
        .route("/v1/devices/{id}/telemetry", get(telemetry))
        .route("/v1/audit", get(search))
}

/// A built-in file with headers that keep it to itself: CSP, no sniffing, no framing.
fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `column` ordered by its bytes on both backends (PostgreSQL's default collation ignores
/// case and punctuation; SQLite compares bytes), so pages are the same on either.
fn bytewise(db: &crate::db::Db, column: &str) -> String {
    match db.backend {
        crate::db::Backend::Postgres => format!("{column} COLLATE \"C\""),
        crate::db::Backend::Sqlite => column.to_owned(),
    }
}

/// Devices seen since this time count as online: two missed check-ins and some slack.
fn online_after(app: &App, now: i64) -> i64 {
    now - (2 * i64::from(app.poll_s) + 30) * 1000
}

fn sum(r: &sqlx::any::AnyRow, i: usize) -> Result<i64, sqlx::Error> {
    // SUM over no rows is NULL.
    Ok(r.try_get::<Option<i64>, _>(i)?.unwrap_or(0))
}

/// `GET /v1/overview`: counts, versions, battery and posture, and per group how far the
/// newest policy and the assigned bundles have rolled out.
async fn overview(_: Admin, State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let (now, pool, e) = (now_ms(), &app.db.pool, internal);
    let on = online_after(&app, now);
    let r = sqlx::query(
        "SELECT COUNT(*), SUM(CASE WHEN last_seen_ms >= $1 THEN 1 ELSE 0 END), \
         SUM(CASE WHEN last_seen_ms = 0 THEN 1 ELSE 0 END) FROM devices",
    )
    .bind(on)
    .fetch_one(pool)
    .await
    .map_err(e)?;
    let (total, online, never) = (
        r.try_get::<i64, _>(0).map_err(e)?,
        sum(&r, 1).map_err(e)?,
        sum(&r, 2).map_err(e)?,
    );
    let firmware: Vec<Value> = sqlx::query(
        "SELECT firmware, COUNT(*) FROM devices WHERE last_seen_ms > 0 GROUP BY firmware \
         ORDER BY firmware",
    )
    .fetch_all(pool)
    .await
    .map_err(e)?
    .iter()
    .map(|r| Ok(json!({"version": r.try_get::<String, _>(0)?, "devices": r.try_get::<i64, _>(1)?})))
    .collect::<Result<_, sqlx::Error>>()
    .map_err(e)?;
    let b = sqlx::query(
        "SELECT SUM(CASE WHEN battery_pct < 20 THEN 1 ELSE 0 END), \
         SUM(CASE WHEN external_power = 0 THEN 1 ELSE 0 END), \
         SUM(CASE WHEN external_power = 1 THEN 1 ELSE 0 END), \
         SUM(CASE WHEN degraded = 1 THEN 1 ELSE 0 END), COUNT(*) FROM device_status",
    )
    .fetch_one(pool)
    .await
    .map_err(e)?;
    let reported = b.try_get::<i64, _>(4).map_err(e)?;
    let battery = json!({
        "low": sum(&b, 0).map_err(e)?,
        "on_battery": sum(&b, 1).map_err(e)?,
        "external": sum(&b, 2).map_err(e)?,
        "unknown": total - reported,
    });
    Ok(Json(json!({
        "now_ms": now,
        "online_window_s": (now - on) / 1000,
        "devices": {"total": total, "online": online, "offline": total - online - never,
                    "never": never},
        "firmware": firmware,
        "battery": battery,
        "posture_degraded": sum(&b, 3).map_err(e)?,
        "groups": groups(&app, on).await?,
    })))
}

/// Per group: devices, online, the policy versions in force against the group's newest
/// policy, and how many devices hold exactly the bundles assigned to the group. (A device
/// with its own policy or bundles counts against its group's, which it then differs from.)
async fn groups(app: &App, on: i64) -> Result<Vec<Value>, ApiError> {
    let (pool, e) = (&app.db.pool, internal);
    let mut out = Vec::new();
    let sql = format!(
        "SELECT grp, COUNT(*), SUM(CASE WHEN last_seen_ms >= $1 THEN 1 ELSE 0 END) \
         FROM devices GROUP BY grp ORDER BY {}",
        bytewise(&app.db, "grp")
    );
    let rows = sqlx::query(&sql)
        .bind(on)
        .fetch_all(pool)
        .await
        .map_err(e)?;
    let versions = app.db.rollout().await.map_err(internal)?;
    let policies = app.db.newest_policies().await.map_err(internal)?;
    let assignments = app.db.assignments().await.map_err(internal)?;
    // How many devices of each group hold each bundle set: one query for every group.
    let held: Vec<(String, String, i64)> = if assignments.is_empty() {
        Vec::new()
    } else {
        sqlx::query("SELECT grp, bundles, COUNT(*) FROM devices GROUP BY grp, bundles")
            .fetch_all(pool)
            .await
            .map_err(e)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(e)?
    };
    for r in rows {
        let g: String = r.try_get(0).map_err(e)?;
        let devices: i64 = r.try_get(1).map_err(e)?;
        let key = group_target(&g);
        let target = policies
            .iter()
            .find(|(t, _)| *t == key)
            .map(|(_, p)| p.version);
        let mine: Vec<(i64, i64)> = versions
            .iter()
            .filter(|(vg, _, _)| *vg == g)
            .map(|(_, v, n)| (*v, *n))
            .collect();
        let applied = target.map(|t| {
            mine.iter()
                .filter(|(v, _)| *v >= t)
                .map(|(_, n)| n)
                .sum::<i64>()
        });
        let assigned: Vec<&crate::db::Assigned> = assignments
            .iter()
            .filter(|(t, _)| *t == key)
            .map(|(_, a)| a)
            .collect();
        let bundles_applied = if assigned.is_empty() {
            Value::Null
        } else {
            let want = nanoclaw::bundle::hex(&nanoclaw::daemon::fleet::host::bundles_digest(
                assigned
                    .iter()
                    .map(|a| (a.name.as_str(), a.version.as_str())),
            ));
            let n: i64 = held
                .iter()
                .filter(|(hg, b, _)| *hg == g && *b == want)
                .map(|(_, _, n)| n)
                .sum();
            json!(n)
        };
        out.push(json!({
            "group": g,
            "devices": devices,
            "online": sum(&r, 2).map_err(e)?,
            "policy": {
                "target": target,
                "applied": applied.unwrap_or(0),
                "versions": mine.iter().map(|(v, n)| json!({"version": v, "devices": n})).collect::<Vec<_>>(),
            },
            "bundles": {
                "assigned": assigned.iter().map(|a| json!({"name": a.name, "version": a.version})).collect::<Vec<_>>(),
                "applied": bundles_applied,
            },
        }));
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    offset: Option<i64>,
    limit: Option<i64>,
    q: Option<String>,
    group: Option<String>,
    state: Option<String>,
}

const STATUS_COLS: &str = "s.battery_pct, s.external_power, s.posture, s.degraded, \
     s.agents_total, s.agents_running, s.agents_failed, s.trust_min, s.denials";

/// One device as the list and its page show it: the registry row and its newest report.
fn device_json(
    d: &Device,
    r: &sqlx::any::AnyRow,
    at: usize,
    on: i64,
) -> Result<Value, sqlx::Error> {
    let total: Option<i64> = r.try_get(at + 4)?;
    Ok(json!({
        "id": d.id, "group": d.group, "enrolled_ms": d.enrolled_ms,
        "last_seen_ms": d.last_seen_ms, "online": d.last_seen_ms >= on && d.last_seen_ms > 0,
        "firmware": d.firmware, "policy_version": d.policy_version,
        "battery_pct": r.try_get::<Option<i64>, _>(at)?,
        "external_power": r.try_get::<Option<i64>, _>(at + 1)?.map(|v| v != 0),
        "posture": r.try_get::<Option<String>, _>(at + 2)?,
        "degraded": r.try_get::<Option<i64>, _>(at + 3)?.is_some_and(|v| v != 0),
        "agents": total.map(|t| Ok::<_, sqlx::Error>(json!({
            "total": t,
            "running": r.try_get::<Option<i64>, _>(at + 5)?.unwrap_or(0),
            "failed": r.try_get::<Option<i64>, _>(at + 6)?.unwrap_or(0),
        }))).transpose()?,
        "trust_min": r.try_get::<Option<i64>, _>(at + 7)?,
        "denials": r.try_get::<Option<i64>, _>(at + 8)?,
        "sessions": d.sessions,
        "audit_backlog": (d.audit_high - d.audit_acked).max(0),
    }))
}

/// `GET /v1/devices?offset&limit&q&group&state` with any of them: one page of the registry
/// (by id) with each device's newest report, and the number of matches. Without them, the
/// whole registry as `devices --json` prints it.
pub async fn list(app: &App, q: ListQuery) -> Result<Json<Value>, ApiError> {
    let now = now_ms();
    let on = online_after(app, now);
    let (offset, limit) = (
        q.offset.unwrap_or(0).max(0),
        q.limit.unwrap_or(100).clamp(1, 1000),
    );
    let mut conds = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    if let Some(text) = q.q.as_deref().filter(|t| !t.is_empty()) {
        if text.len() > 128 {
            return Err(bad("q: at most 128 bytes"));
        }
        let esc = text
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        binds.push(format!("%{esc}%"));
        conds.push(format!(
            "LOWER(id) LIKE LOWER(${}) ESCAPE '\\'",
            binds.len() + 1
        ));
    }
    if let Some(g) = q.group.as_deref().filter(|g| !g.is_empty()) {
        binds.push(g.to_owned());
        conds.push(format!("grp = ${}", binds.len() + 1));
    }
    match q.state.as_deref() {
        None | Some("") | Some("any") => {}
        Some("online") => conds.push("last_seen_ms >= $1 AND last_seen_ms > 0".into()),
        Some("offline") => conds.push("last_seen_ms < $1 AND last_seen_ms > 0".into()),
        Some("never") => conds.push("last_seen_ms = 0".into()),
        Some(s) => {
            return Err(bad(format!(
                "state `{s}`: expected online, offline or never"
            )));
        }
    }
    // $1 is always the online mark, so every statement binds it (it may go unused).
    conds.push("$1 = $1".into());
    let filter = conds.join(" AND ");
    let count_sql = format!("SELECT COUNT(*) FROM devices WHERE {filter}");
    let mut cq = sqlx::query(&count_sql).bind(on);
    for b in &binds {
        cq = cq.bind(b);
    }
    let total: i64 = cq
        .fetch_one(&app.db.pool)
        .await
        .map_err(internal)?
        .try_get(0)
        .map_err(internal)?;
    let n = binds.len();
    let sql = format!(
        "SELECT {DEVICE_COLS}, {STATUS_COLS} FROM devices LEFT JOIN device_status s \
         ON s.device = devices.id WHERE {filter} ORDER BY {} LIMIT ${} OFFSET ${}",
        bytewise(&app.db, "id"),
        n + 2,
        n + 3
    );
    let mut lq = sqlx::query(&sql).bind(on);
    for b in &binds {
        lq = lq.bind(b);
    }
    let rows = lq
        .bind(limit)
        .bind(offset)
        .fetch_all(&app.db.pool)
        .await
        .map_err(internal)?;
    let at = DEVICE_COLS.split(',').count();
    let devices = rows
        .iter()
        .map(|r| device_json(&device_of(r)?, r, at, on))
        .collect::<Result<Vec<_>, _>>()
        .map_err(internal)?;
    Ok(Json(json!({ "total": total, "devices": devices })))
}

/// Denials and refusals: what an operator opens a device's page to find.
fn is_denial(k: AuditKind) -> bool {
    use AuditKind as K;
    matches!(
        k,
        K::DeniedConnect
            | K::DeniedExec
            | K::DeniedOperation
            | K::AdmissionDenied
            | K::ChannelRefused
            | K::Violation
            | K::SyscallAnomaly
            | K::InstallRefused
            | K::PolicyRejected
            | K::GrantRefused
    )
}

/// `GET /v1/devices/{id}`: the device, its newest report and its recent denials.
async fn device(
    _: Admin,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let on = online_after(&app, now_ms());
    let sql = format!(
        "SELECT {DEVICE_COLS}, {STATUS_COLS} FROM devices LEFT JOIN device_status s \
         ON s.device = devices.id WHERE id = $1"
    );
    let Some(r) = sqlx::query(&sql)
        .bind(&id)
        .fetch_optional(&app.db.pool)
        .await
        .map_err(internal)?
    else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no device `{id}` is enrolled"),
        ));
    };
    let d = device_of(&r).map_err(internal)?;
    let dev = device_json(&d, &r, DEVICE_COLS.split(',').count(), on).map_err(internal)?;
    let status = crate::telemetry::latest(&app.db, &id)
        .await
        .map_err(internal)?;
    let rows =
        sqlx::query("SELECT seq, record FROM audit WHERE device = $1 ORDER BY seq DESC LIMIT 2000")
            .bind(&id)
            .fetch_all(&app.db.pool)
            .await
            .map_err(internal)?;
    let denials: Vec<Value> = rows
        .iter()
        .filter_map(|r| {
            let rec: Vec<u8> = r.try_get(1).ok()?;
            let a: AuditRecord = postcard::from_bytes(&rec).ok()?;
            let seq: i64 = r.try_get(0).ok()?;
            is_denial(a.kind).then(|| record_json(&id, seq, &a))
        })
        .take(DENIALS)
        .collect();
    Ok(Json(
        json!({ "device": dev, "status": status, "denials": denials }),
    ))
}

/// An audit record with the device it came from.
fn record_json(device: &str, seq: i64, a: &AuditRecord) -> Value {
    let mut v = crate::ops::audit_json(seq, a);
    v["device"] = json!(device);
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    since_ms: Option<i64>,
}

/// `GET /v1/devices/{id}/telemetry?since_ms=T`: memory and energy per agent over time
/// (the last 24 hours by default).
async fn telemetry(
    _: Admin,
    State(app): State<App>,
    Path(id): Path<String>,
    q: Result<Query<Since>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(s) = q.map_err(|r| rejected(r.status(), r.body_text()))?;
    let since = s.since_ms.unwrap_or(now_ms() - 24 * 3_600_000);
    Ok(Json(
        crate::telemetry::history(&app.db, &id, since, 5000)
            .await
            .map_err(internal)?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    device: Option<String>,
    agent: Option<String>,
    kind: Option<String>,
    q: Option<String>,
    last: Option<i64>,
}

/// `GET /v1/audit?device&agent&kind&q&last`: audit records across the fleet, newest first,
/// matching all the given filters (`q`: a case-insensitive substring of the reason). Looks
/// through the newest [`SEARCH_SCAN`] records (of the device, when given).
async fn search(
    _: Admin,
    State(app): State<App>,
    q: Result<Query<Search>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(s) = q.map_err(|r| rejected(r.status(), r.body_text()))?;
    let some = |o: &Option<String>| o.clone().filter(|v| !v.is_empty());
    let (device, agent, text) = (some(&s.device), some(&s.agent), some(&s.q));
    let kind: Option<AuditKind> = match some(&s.kind).filter(|k| k != "any") {
        Some(k) => Some(
            serde_json::from_value(Value::String(k.clone())).map_err(|_| {
                bad(format!(
                    "kind `{k}`: not an audit kind (docs/FORMATS.md lists them)"
                ))
            })?,
        ),
        None => None,
    };
    let needle = text.map(|t| t.to_lowercase());
    let last = s.last.unwrap_or(100).clamp(1, 1000) as usize;
    let rows = match &device {
        Some(d) => sqlx::query(
            "SELECT device, seq, record FROM audit WHERE device = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(d)
        .bind(SEARCH_SCAN),
        None => sqlx::query(
            "SELECT device, seq, record FROM audit ORDER BY received_ms DESC, seq DESC LIMIT $1",
        )
        .bind(SEARCH_SCAN),
    }
    .fetch_all(&app.db.pool)
    .await
    .map_err(internal)?;
    let scanned = rows.len();
    let mut out = Vec::new();
    for r in &rows {
        let (Ok(dev), Ok(seq), Ok(rec)) = (
            r.try_get::<String, _>(0),
            r.try_get::<i64, _>(1),
            r.try_get::<Vec<u8>, _>(2),
        ) else {
            continue;
        };
        let Ok(a) = postcard::from_bytes::<AuditRecord>(&rec) else {
            continue;
        };
        if kind.is_some_and(|k| k != a.kind)
            || agent.as_deref().is_some_and(|x| x != a.agent.as_str())
            || needle
                .as_deref()
                .is_some_and(|n| !a.reason.to_lowercase().contains(n))
        {
            continue;
        }
        out.push(record_json(&dev, seq, &a));
        if out.len() >= last {
            break;
        }
    }
    Ok(Json(json!({ "records": out, "scanned": scanned })))
}
