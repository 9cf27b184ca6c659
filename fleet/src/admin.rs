//! The admin HTTP API (`serve --admin ADDR`): the operator commands over HTTPS with the
//! server's certificate, authenticated by the bearer token from `init` (`admin.token`).
//! It calls the same functions as the CLI (`ops`), so both always agree; docs/FLEET.md lists
//! the endpoints. Every request body is capped, JSON bodies and query strings with unknown
//! fields are refused, and every error is a JSON object that says what was wrong.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection, StringRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Multipart, Query, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::db::{Db, Stream};
use crate::ops::{self, Target};
use crate::pki;
use crate::serve::now_ms;

/// Longest TLS handshake and longest wait for a request's headers.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long, and how many bytes, a closing connection drains (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 * 1024 * 1024;
/// Admin connections served at once; more wait in the listen queue.
const CONNECTIONS: usize = 64;
/// Cap of JSON and query bodies other than policies and bundles.
const SMALL_BODY: usize = 64 * 1024;
/// Cap of an uploaded bundle signature.
const SIGNATURE_MAX: u64 = 1024 * 1024;

#[derive(Clone)]
pub(crate) struct App {
    pub db: Db,
    dir: Arc<PathBuf>,
    token: Arc<[u8; 32]>,
    /// The devices' check-in interval (`serve --poll`): who counts as online.
    pub poll_s: u32,
}

/// An error answer: `{"error": "..."}` with its status.
pub(crate) struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

pub(crate) fn bad(e: impl ToString) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.to_string())
}

/// An extractor's refusal: its own status (413 for an oversized body), except that input
/// that does not parse or has unknown fields is a 400, like every other bad input here.
pub(crate) fn rejected(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::UNPROCESSABLE_ENTITY => ApiError(StatusCode::BAD_REQUEST, text),
        s => ApiError(s, text),
    }
}

pub(crate) fn internal(e: impl ToString) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Proof that the request carried the admin token. Compared as SHA-256 digests with a
/// constant-time fold, so neither the content nor the length leaks through timing.
pub(crate) struct Admin;

impl FromRequestParts<App> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let d = Sha256::digest(given.trim().as_bytes());
        let diff = d
            .iter()
            .zip(app.token.iter())
            .fold(0u8, |a, (x, y)| a | (x ^ y));
        if given.is_empty() || diff != 0 {
            eprintln!(
                "nanoclaw-fleet: admin: refused {} {} (no or wrong token)",
                parts.method,
                parts.uri.path()
            );
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token: send `Authorization: Bearer <DIR/admin.token>`"
                    .into(),
            ));
        }
        Ok(Admin)
    }
}

/// Binds the admin listener and prints `admin: listening on ADDR`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("admin API: cannot listen on {addr}: {e}"))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    println!("nanoclaw-fleet: admin: listening on {local}");
    Ok(l)
}

/// Serves the admin API on `listener` until the process stops; `token` is `admin.token`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    db: Db,
    dir: PathBuf,
    token: String,
    poll_s: u32,
) {
    let app = router(App {
        db,
        dir: Arc::new(dir),
        token: Arc::new(Sha256::digest(token.as_bytes()).into()),
        poll_s,
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("nanoclaw-fleet: admin: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE)
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .without_shutdown()
                .await;
            if let Ok(parts) = served {
                linger(parts.io.into_inner()).await;
            }
        });
    }
}

/// Closes a served connection gently: TLS close_notify and FIN first, then whatever the
/// client still sends (the rest of a body refused before it was read whole, such as a 413)
/// is read and dropped until it closes, for at most [`LINGER`] and [`LINGER_BYTES`].
/// Closing with unread input would make the kernel reset the connection, and a client
/// still sending its body could then lose the error response it was sent.
async fn linger(mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
    use tokio::io::AsyncReadExt;
    if tls.shutdown().await.is_err() {
        return;
    }
    let (mut tcp, _) = tls.into_inner();
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

fn router(app: App) -> Router {
    let v1 = Router::new()
        .route("/devices", get(devices).post(enrol))
        .route("/devices/{id}/audit", get(audit))
        .route("/devices/{id}/outbox", get(outbox))
        .route(
            "/policies",
            post(push_policy).layer(DefaultBodyLimit::max(
                nanoclaw::config::policy::MAX_POLICY_BYTES as usize,
            )),
        )
        .route(
            "/bundles",
            post(publish_bundle).layer(DefaultBodyLimit::max(
                (ops::MAX_BUNDLE + SIGNATURE_MAX + 64 * 1024) as usize,
            )),
        )
        .route("/grants", post(grant))
        .route("/rollout", get(rollout));
    Router::new()
        .route("/healthz", get(health))
        .nest("/v1", v1)
        .merge(crate::dashboard::routes())
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such endpoint (docs/FLEET.md lists them)".into(),
            )
        })
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .with_state(app)
}

/// `GET /healthz` (no token: for load balancers): the database answers.
async fn health(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let n = app
        .db
        .device_count()
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({ "ok": true, "devices": n })))
}

/// `GET /v1/devices`: what `devices --json` prints; with any of `offset`, `limit`, `q`,
/// `group` or `state`, one page as the dashboard lists it.
async fn devices(
    _: Admin,
    State(app): State<App>,
    q: Result<Query<crate::dashboard::ListQuery>, QueryRejection>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    if uri.query().is_some_and(|q| !q.is_empty()) {
        let Query(q) = q.map_err(|r| rejected(r.status(), r.body_text()))?;
        return crate::dashboard::list(&app, q).await;
    }
    Ok(Json(
        json!({ "devices": ops::devices(&app.db).await.map_err(internal)? }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enrol {
    id: String,
    #[serde(default = "default_group")]
    group: String,
    /// The device's own certificate (PEM); without it the fleet CA issues a new identity.
    certificate: Option<String>,
}

fn default_group() -> String {
    "default".into()
}

/// `POST /v1/devices {"id", "group"?, "certificate"?}`: `enrol`. Without a certificate the
/// answer carries the new key, certificate, CA and policy key (PEM).
async fn enrol(
    _: Admin,
    State(app): State<App>,
    body: Result<Json<Enrol>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(e) = body.map_err(|r| rejected(r.status(), r.body_text()))?;
    pki::check_id(&e.id).map_err(bad)?;
    if app.db.device(&e.id).await.map_err(internal)?.is_some() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("device `{}` is already enrolled", e.id),
        ));
    }
    let mut out = json!({ "id": e.id, "group": e.group });
    let fp = match &e.certificate {
        Some(pem) => pki::fingerprint_of_pem(pem, "certificate").map_err(bad)?,
        None => {
            let new = pki::issue(&app.dir, &e.id).map_err(internal)?;
            let read = |f: &str| std::fs::read_to_string(app.dir.join(f)).map_err(internal);
            out["key"] = json!(new.key_pem);
            out["certificate"] = json!(new.cert_pem);
            out["ca"] = json!(read(pki::CA_CERT)?);
            out["policy_key"] = json!(read(pki::SIGNING_PUB)?);
            new.fingerprint
        }
    };
    app.db
        .enrol(&e.id, &fp, &e.group, now_ms())
        .await
        .map_err(internal)?;
    eprintln!(
        "nanoclaw-fleet: admin: enrolled {} in group {}",
        e.id, e.group
    );
    out["fingerprint"] = json!(format!("sha256:{fp}"));
    Ok((StatusCode::CREATED, Json(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    after: Option<i64>,
    last: Option<i64>,
}

async fn known(app: &App, id: &str) -> Result<(), ApiError> {
    match app.db.device(id).await.map_err(internal)? {
        Some(_) => Ok(()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no device `{id}` is enrolled"),
        )),
    }
}

/// `GET /v1/devices/{id}/audit?after=SEQ&last=N`: `audit --device`.
async fn audit(
    _: Admin,
    State(app): State<App>,
    axum::extract::Path(id): axum::extract::Path<String>,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    records(&app, &id, q, Stream::Audit).await
}

/// `GET /v1/devices/{id}/outbox?after=SEQ&last=N`: `outbox --device`.
async fn outbox(
    _: Admin,
    State(app): State<App>,
    axum::extract::Path(id): axum::extract::Path<String>,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    records(&app, &id, q, Stream::Outbox).await
}

async fn records(
    app: &App,
    id: &str,
    q: Result<Query<Page>, QueryRejection>,
    stream: Stream,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = q.map_err(|r| rejected(r.status(), r.body_text()))?;
    let (after, last) = (
        p.after.unwrap_or(0).max(0),
        p.last.unwrap_or(1000).clamp(1, 10_000),
    );
    known(app, id).await?;
    let recs = match stream {
        Stream::Audit => ops::audit(&app.db, id, after, last).await,
        Stream::Outbox => ops::outbox(&app.db, id, after, last).await,
    }
    .map_err(internal)?;
    Ok(Json(json!({ "records": recs })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct For {
    group: Option<String>,
    device: Option<String>,
}

fn target(q: Result<Query<For>, QueryRejection>) -> Result<Target, ApiError> {
    let Query(f) = q.map_err(|r| rejected(r.status(), r.body_text()))?;
    Target::of(f.group, f.device).ok_or_else(|| bad("give exactly one of ?group=G or ?device=D"))
}

/// `POST /v1/policies?group=G|device=D` with the policy (JSON or YAML) as the body:
/// `policy push`.
async fn push_policy(
    _: Admin,
    State(app): State<App>,
    q: Result<Query<For>, QueryRejection>,
    body: Result<String, StringRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let t = target(q)?;
    let text = body.map_err(|r| rejected(r.status(), r.body_text()))?;
    let doc = ops::parse_policy(&text, "policy").map_err(bad)?;
    let v = ops::push_policy(&app.db, &app.dir, doc, &app.dir, &t)
        .await
        .map_err(bad)?;
    eprintln!(
        "nanoclaw-fleet: admin: policy version {v} signed and queued for {}",
        t.key()
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({ "version": v, "target": t.key() })),
    ))
}

/// Removes the upload's files however the request ends.
struct Upload(Vec<PathBuf>);

impl Drop for Upload {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `POST /v1/bundles?group=G|device=D`, multipart form with `bundle` (the archive) and
/// `signature` (its `.sigstore.json`): `bundle publish`. Both are streamed to disk.
async fn publish_bundle(
    _: Admin,
    State(app): State<App>,
    q: Result<Query<For>, QueryRejection>,
    mut form: Multipart,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let t = target(q)?;
    let dir = app.dir.join("uploads");
    std::fs::create_dir_all(&dir).map_err(internal)?;
    let stem = dir.join(format!(
        "{}.bundle",
        nanoclaw::bundle::hex(&pki::random_bytes::<8>())
    ));
    let sig = PathBuf::from(format!("{}.sigstore.json", stem.display()));
    let _cleanup = Upload(vec![stem.clone(), sig.clone()]);
    let (mut have_bundle, mut have_sig) = (false, false);
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| rejected(e.status(), e.body_text()))?
    {
        let (path, cap, seen) = match field.name() {
            Some("bundle") => (&stem, ops::MAX_BUNDLE, &mut have_bundle),
            Some("signature") => (&sig, SIGNATURE_MAX, &mut have_sig),
            other => {
                return Err(bad(format!(
                    "unknown form field {:?}: expected `bundle` and `signature`",
                    other.unwrap_or("")
                )));
            }
        };
        if *seen {
            return Err(bad("each form field may appear once"));
        }
        *seen = true;
        let mut f = tokio::fs::File::create(path).await.map_err(internal)?;
        let mut n = 0u64;
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| rejected(e.status(), e.body_text()))?
        {
            n += chunk.len() as u64;
            if n > cap {
                return Err(ApiError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("form field exceeds {cap} bytes"),
                ));
            }
            f.write_all(&chunk).await.map_err(internal)?;
        }
        f.sync_all().await.map_err(internal)?;
    }
    if !have_bundle || !have_sig {
        return Err(bad(
            "publishing needs two form fields: `bundle` (the archive) and `signature` \
             (its .sigstore.json from `nanoclaw bundle sign`)",
        ));
    }
    let what = ops::publish_bundle(&app.db, &stem, &t).await.map_err(bad)?;
    eprintln!("nanoclaw-fleet: admin: published {what} for {}", t.key());
    Ok((
        StatusCode::CREATED,
        Json(json!({ "published": what, "target": t.key() })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    agent: String,
    capability: String,
    ttl_s: u64,
    group: Option<String>,
    device: Option<String>,
}

/// `POST /v1/grants {"agent", "capability", "ttl_s", "group" | "device"}`: `grant`.
async fn grant(
    _: Admin,
    State(app): State<App>,
    body: Result<Json<GrantRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(g) = body.map_err(|r| rejected(r.status(), r.body_text()))?;
    let t = Target::of(g.group, g.device)
        .ok_or_else(|| bad("give exactly one of \"group\" or \"device\""))?;
    if let Target::Device(d) = &t {
        known(&app, d).await?;
    }
    let env = ops::grant(&app.db, &app.dir, &g.agent, &g.capability, g.ttl_s, &t)
        .await
        .map_err(bad)?;
    eprintln!(
        "nanoclaw-fleet: admin: grant {} for {} queued for {}",
        g.capability,
        g.agent,
        t.key()
    );
    Ok((StatusCode::CREATED, Json(json!({ "grant": env }))))
}

/// `GET /v1/rollout`: policy versions per group.
async fn rollout(_: Admin, State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let rows = app.db.rollout().await.map_err(internal)?;
    let groups: Vec<Value> = rows
        .into_iter()
        .map(|(g, v, n)| json!({ "group": g, "policy_version": v, "devices": n }))
        .collect();
    Ok(Json(json!({ "rollout": groups })))
}
