//! The fleet database: SQLite (one machine) or PostgreSQL (several stateless replicas), one
//! schema and one set of queries through sqlx's `Any` driver.
//!
//! Why the queries look the way they do:
//! - Only types both backends share (`BIGINT`, `TEXT`, a blob type) and `$n` parameters,
//!   which SQLite accepts too; the two DDL differences are substituted by `Db::dialect`.
//! - Exactly-once ingestion: records are keyed `(device, seq)` and inserted with
//!   `ON CONFLICT DO NOTHING` inside the transaction that moves the device's acked mark, so a
//!   batch repeated after a cut, or raced by a second replica, is stored once.
//! - Bundles are stored as fixed-size chunks, so a `Pull` at any offset reads one or two rows
//!   and every replica can serve any download.

use std::io::Read as _;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

/// Bundle chunk size in the store (the protocol's largest chunk).
pub const CHUNK: u64 = nanoclaw_proto::sync::CHUNK_MAX as u64;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// One schema step. `{blob}` and `{serial}` become the backend's spelling; a statement
/// starting with `{postgres}` runs on PostgreSQL only.
const MIGRATIONS: &[&str] = &[
    // 1: the whole first schema.
    "CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL UNIQUE,
        grp TEXT NOT NULL,
        enrolled_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL DEFAULT 0,
        firmware TEXT NOT NULL DEFAULT '',
        policy_version BIGINT NOT NULL DEFAULT 0,
        bundles TEXT NOT NULL DEFAULT '',
        audit_acked BIGINT NOT NULL DEFAULT 0,
        outbox_acked BIGINT NOT NULL DEFAULT 0,
        audit_high BIGINT NOT NULL DEFAULT 0,
        outbox_high BIGINT NOT NULL DEFAULT 0,
        dropped BIGINT NOT NULL DEFAULT 0,
        gaps BIGINT NOT NULL DEFAULT 0,
        sessions BIGINT NOT NULL DEFAULT 0);
     CREATE INDEX devices_grp ON devices (grp);
     CREATE TABLE policies (
        id {serial},
        target TEXT NOT NULL,
        version BIGINT NOT NULL,
        envelope {blob} NOT NULL,
        created_ms BIGINT NOT NULL);
     CREATE INDEX policies_target ON policies (target, version);
     CREATE TABLE bundles (
        digest TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        size BIGINT NOT NULL,
        signature {blob} NOT NULL,
        created_ms BIGINT NOT NULL);
     CREATE TABLE bundle_chunks (
        digest TEXT NOT NULL,
        idx BIGINT NOT NULL,
        data {blob} NOT NULL,
        PRIMARY KEY (digest, idx));
     CREATE TABLE assignments (
        target TEXT NOT NULL,
        name TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (target, name));
     CREATE TABLE grants (
        id {serial},
        target TEXT NOT NULL,
        agent TEXT NOT NULL,
        capability TEXT NOT NULL,
        token {blob} NOT NULL,
        not_after_ms BIGINT NOT NULL,
        created_ms BIGINT NOT NULL);
     CREATE TABLE grant_acks (
        grant_id BIGINT NOT NULL,
        device TEXT NOT NULL,
        ok BIGINT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (grant_id, device));
     CREATE TABLE audit (
        device TEXT NOT NULL,
        seq BIGINT NOT NULL,
        record {blob} NOT NULL,
        received_ms BIGINT NOT NULL,
        PRIMARY KEY (device, seq));
     CREATE TABLE outbox (
        device TEXT NOT NULL,
        seq BIGINT NOT NULL,
        record {blob} NOT NULL,
        received_ms BIGINT NOT NULL,
        PRIMARY KEY (device, seq));
     CREATE TABLE applied (
        device TEXT NOT NULL,
        what TEXT NOT NULL,
        version BIGINT NOT NULL,
        ok BIGINT NOT NULL,
        reason TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (device, what, version))",
    // 2: every check-in rewrites its device's row; with room left on each page PostgreSQL
    // updates it in place (HOT: none of those columns is indexed) instead of adding index
    // entries and dead tuples for vacuum. SQLite updates in place anyway.
    "{postgres} ALTER TABLE devices SET (fillfactor = 70)",
    // 3: what devices report about themselves (protocol 2 `Status`): the newest per device
    // for the dashboard, a bounded history for its plots, and audit by arrival for search.
    "CREATE TABLE device_status (
        device TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        battery_pct BIGINT,
        external_power BIGINT NOT NULL,
        posture TEXT NOT NULL,
        degraded BIGINT NOT NULL,
        agents_total BIGINT NOT NULL,
        agents_running BIGINT NOT NULL,
        agents_failed BIGINT NOT NULL,
        trust_min BIGINT,
        denials BIGINT NOT NULL,
        agents TEXT NOT NULL);
     CREATE TABLE telemetry (
        device TEXT NOT NULL,
        agent TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        memory_bytes BIGINT NOT NULL,
        energy_mwh BIGINT NOT NULL,
        PRIMARY KEY (device, agent, at_ms));
     CREATE INDEX telemetry_at ON telemetry (at_ms);
     CREATE INDEX audit_received ON audit (received_ms)",
];

impl Db {
    /// Connects (`sqlite:PATH` creates the file) and runs pending migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::Invalid(format!(
                "--db {url}: expected sqlite:PATH or postgres://USER@HOST/DB"
            )));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        let opts: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never block the writer. FULL: a commit is on disk
                        // before it returns, so an ack sent after it survives power loss.
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                             PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        let db = Db { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    /// Applies the migrations this database lacks, in one transaction each. Replicas starting
    /// together on PostgreSQL serialize on an advisory lock.
    async fn migrate(&self) -> Result<(), DbError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_lock(7411)").await?;
        }
        let result = async {
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
                .await?;
            let have: Option<i64> = sqlx::query("SELECT MAX(version) FROM schema_version")
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
            let have = usize::try_from(have.unwrap_or(0)).unwrap_or(0);
            if have > MIGRATIONS.len() {
                return Err(DbError::Invalid(format!(
                    "the database has schema version {have}, newer than this server's {}; \
                     run a newer nanoclaw-fleet",
                    MIGRATIONS.len()
                )));
            }
            for (i, step) in MIGRATIONS.iter().enumerate().skip(have) {
                let sql = self.dialect(step);
                let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
                for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    let stmt = match stmt.strip_prefix("{postgres}") {
                        Some(s) if self.backend == Backend::Postgres => s.trim(),
                        Some(_) => continue,
                        None => stmt,
                    };
                    tx.execute(stmt).await?;
                }
                sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                    .bind(i as i64 + 1)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok(())
        }
        .await;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_unlock(7411)").await?;
        }
        result
    }

    /// A transaction that will write. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred one that reads first cannot upgrade once another connection
    /// has written meanwhile (`SQLITE_BUSY_SNAPSHOT`, which no busy timeout waits out).
    pub(crate) async fn write_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    fn dialect(&self, sql: &str) -> String {
        let (blob, serial) = match self.backend {
            Backend::Sqlite => ("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"),
            Backend::Postgres => ("BYTEA", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
        };
        sql.replace("{blob}", blob).replace("{serial}", serial)
    }
}

/// A device as the registry knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Device {
    pub id: String,
    pub group: String,
    pub enrolled_ms: i64,
    pub last_seen_ms: i64,
    pub firmware: String,
    pub policy_version: i64,
    pub bundles: String,
    pub audit_acked: i64,
    pub outbox_acked: i64,
    pub audit_high: i64,
    pub outbox_high: i64,
    pub dropped: i64,
    pub gaps: i64,
    pub sessions: i64,
}

pub(crate) const DEVICE_COLS: &str = "id, grp, enrolled_ms, last_seen_ms, firmware, policy_version, bundles, \
     audit_acked, outbox_acked, audit_high, outbox_high, dropped, gaps, sessions";

pub(crate) fn device_of(r: &sqlx::any::AnyRow) -> Result<Device, sqlx::Error> {
    Ok(Device {
        id: r.try_get(0)?,
        group: r.try_get(1)?,
        enrolled_ms: r.try_get(2)?,
        last_seen_ms: r.try_get(3)?,
        firmware: r.try_get(4)?,
        policy_version: r.try_get(5)?,
        bundles: r.try_get(6)?,
        audit_acked: r.try_get(7)?,
        outbox_acked: r.try_get(8)?,
        audit_high: r.try_get(9)?,
        outbox_high: r.try_get(10)?,
        dropped: r.try_get(11)?,
        gaps: r.try_get(12)?,
        sessions: r.try_get(13)?,
    })
}

/// A signed policy waiting for a device.
#[derive(Debug, Clone)]
pub struct PolicyRow {
    pub version: i64,
    pub envelope: Vec<u8>,
}

/// A bundle assigned to a device (its signature is fetched only when it is offered).
#[derive(Debug, Clone)]
pub struct Assigned {
    pub name: String,
    pub version: String,
    pub size: i64,
    pub digest: String,
}

/// A bundle as published.
#[derive(Debug, Clone)]
pub struct BundleRow {
    pub name: String,
    pub version: String,
    pub size: i64,
    pub digest: String,
    pub signature: Vec<u8>,
}

/// A grant not yet acknowledged by a device.
#[derive(Debug, Clone)]
pub struct GrantRow {
    pub id: i64,
    pub token: Vec<u8>,
}

/// Which stream a batch belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Audit,
    Outbox,
}

impl Stream {
    fn table(self) -> &'static str {
        match self {
            Stream::Audit => "audit",
            Stream::Outbox => "outbox",
        }
    }
    fn acked(self) -> &'static str {
        match self {
            Stream::Audit => "audit_acked",
            Stream::Outbox => "outbox_acked",
        }
    }
}

/// What a device reported in its Hello, recorded at the end of a session.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub at_ms: i64,
    pub firmware: String,
    pub policy_version: i64,
    pub bundles: String,
    pub audit_high: i64,
    pub outbox_high: i64,
    pub dropped: i64,
}

/// `($1, $2), ($3, $4)` for a multi-row insert of `rows` rows of `cols` values.
pub(crate) fn placeholders(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let v: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", v.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn group_target(g: &str) -> String {
    format!("group:{g}")
}

pub fn device_target(d: &str) -> String {
    format!("device:{d}")
}

impl Db {
    pub async fn enrol(
        &self,
        id: &str,
        fingerprint: &str,
        group: &str,
        now_ms: i64,
    ) -> Result<(), DbError> {
        let r = sqlx::query(
            "INSERT INTO devices (id, fingerprint, grp, enrolled_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(fingerprint)
        .bind(group)
        .bind(now_ms)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(DbError::Invalid(
                format!("device `{id}` or its certificate is already enrolled"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Registers many devices in one transaction (simulated fleets for `loadgen`).
    pub async fn enrol_many(
        &self,
        devices: &[(String, String)],
        group: &str,
        now_ms: i64,
    ) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        for part in devices.chunks(200) {
            let sql = format!(
                "INSERT INTO devices (id, fingerprint, grp, enrolled_ms) VALUES {}",
                placeholders(part.len(), 4)
            );
            let mut q = sqlx::query(&sql);
            for (id, fp) in part {
                q = q.bind(id).bind(fp).bind(group).bind(now_ms);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn device_count(&self) -> Result<i64, DbError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM devices")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    /// The device a client certificate belongs to.
    pub async fn device_by_fingerprint(&self, fp: &str) -> Result<Option<Device>, DbError> {
        let q = format!("SELECT {DEVICE_COLS} FROM devices WHERE fingerprint = $1");
        let row = sqlx::query(&q).bind(fp).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(device_of).transpose()?)
    }

    pub async fn device(&self, id: &str) -> Result<Option<Device>, DbError> {
        let q = format!("SELECT {DEVICE_COLS} FROM devices WHERE id = $1");
        let row = sqlx::query(&q).bind(id).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(device_of).transpose()?)
    }

    pub async fn devices(&self, limit: i64) -> Result<Vec<Device>, DbError> {
        let q = format!("SELECT {DEVICE_COLS} FROM devices ORDER BY id LIMIT $1");
        let rows = sqlx::query(&q).bind(limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(device_of).collect::<Result<_, _>>()?)
    }

    /// The newest policy version across all targets (versions are global so that a device
    /// moving between a group policy and its own never sees one go down).
    pub async fn max_policy_version(&self) -> Result<i64, DbError> {
        let v: Option<i64> = sqlx::query("SELECT MAX(version) FROM policies")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(v.unwrap_or(0))
    }

    pub async fn store_policy(
        &self,
        target: &str,
        version: i64,
        envelope: &[u8],
        now_ms: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO policies (target, version, envelope, created_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(target)
        .bind(version)
        .bind(envelope)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest policy of every target that has one.
    pub async fn newest_policies(&self) -> Result<Vec<(String, PolicyRow)>, DbError> {
        let rows = sqlx::query(
            "SELECT p.target, p.version, p.envelope FROM policies p WHERE p.version = \
             (SELECT MAX(q.version) FROM policies q WHERE q.target = p.target)",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    PolicyRow {
                        version: r.try_get(1)?,
                        envelope: r.try_get(2)?,
                    },
                ))
            })
            .collect()
    }

    /// Stores a bundle's bytes, read from `data` chunk by chunk (never whole in memory), and
    /// its metadata; publishing the same digest twice is a no-op.
    pub async fn store_bundle(
        &self,
        b: &BundleRow,
        data: &mut impl std::io::Read,
        now_ms: i64,
    ) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let have = sqlx::query("SELECT digest FROM bundles WHERE digest = $1")
            .bind(&b.digest)
            .fetch_optional(&mut *tx)
            .await?;
        if have.is_none() {
            let mut chunk = Vec::with_capacity(CHUNK as usize);
            let mut stored = 0u64;
            for i in 0.. {
                chunk.clear();
                std::io::Read::take(&mut *data, CHUNK)
                    .read_to_end(&mut chunk)
                    .map_err(|e| DbError::Invalid(format!("reading the bundle: {e}")))?;
                if chunk.is_empty() {
                    break;
                }
                stored += chunk.len() as u64;
                sqlx::query("INSERT INTO bundle_chunks (digest, idx, data) VALUES ($1, $2, $3)")
                    .bind(&b.digest)
                    .bind(i as i64)
                    .bind(&chunk)
                    .execute(&mut *tx)
                    .await?;
            }
            if stored != b.size as u64 {
                return Err(DbError::Invalid(format!(
                    "the bundle changed while it was stored ({stored} of {} bytes)",
                    b.size
                )));
            }
            sqlx::query(
                "INSERT INTO bundles (digest, name, version, size, signature, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&b.digest)
            .bind(&b.name)
            .bind(&b.version)
            .bind(b.size)
            .bind(&b.signature)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes `digest` the bundle `name` that `target` should run.
    pub async fn assign(&self, target: &str, name: &str, digest: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO assignments (target, name, digest) VALUES ($1, $2, $3) \
             ON CONFLICT (target, name) DO UPDATE SET digest = excluded.digest",
        )
        .bind(target)
        .bind(name)
        .bind(digest)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every assignment with its bundle, by target.
    pub async fn assignments(&self) -> Result<Vec<(String, Assigned)>, DbError> {
        let rows = sqlx::query(
            "SELECT a.target, b.name, b.version, b.size, b.digest \
             FROM assignments a JOIN bundles b ON a.digest = b.digest ORDER BY b.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Assigned {
                        name: r.try_get(1)?,
                        version: r.try_get(2)?,
                        size: r.try_get(3)?,
                        digest: r.try_get(4)?,
                    },
                ))
            })
            .collect()
    }

    /// Targets with unexpired grants.
    pub async fn grant_targets(&self, now_ms: i64) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query("SELECT DISTINCT target FROM grants WHERE not_after_ms > $1")
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// A published bundle's signature (the Sigstore bundle JSON).
    pub async fn signature(&self, digest: &str) -> Result<Vec<u8>, DbError> {
        Ok(
            sqlx::query("SELECT signature FROM bundles WHERE digest = $1")
                .bind(digest)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    /// Up to `len` bytes of a bundle from `offset` (may be shorter at a chunk boundary).
    pub async fn chunk(&self, digest: &str, offset: u64, len: u32) -> Result<Vec<u8>, DbError> {
        let idx = offset / CHUNK;
        let row = sqlx::query("SELECT data FROM bundle_chunks WHERE digest = $1 AND idx = $2")
            .bind(digest)
            .bind(idx as i64)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(Vec::new());
        };
        let data: Vec<u8> = row.try_get(0)?;
        let from = (offset % CHUNK) as usize;
        let to = (from + len as usize).min(data.len());
        Ok(data.get(from..to).map(<[u8]>::to_vec).unwrap_or_default())
    }

    pub async fn store_grant(
        &self,
        target: &str,
        agent: &str,
        capability: &str,
        token: &[u8],
        not_after_ms: i64,
        now_ms: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO grants (target, agent, capability, token, not_after_ms, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(target)
        .bind(agent)
        .bind(capability)
        .bind(token)
        .bind(not_after_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Unexpired grants for the device (or its group) that it has not acknowledged.
    pub async fn grants_for(&self, d: &Device, now_ms: i64) -> Result<Vec<GrantRow>, DbError> {
        let rows = sqlx::query(
            "SELECT g.id, g.token FROM grants g WHERE (g.target = $1 OR g.target = $2) \
             AND g.not_after_ms > $3 AND NOT EXISTS \
             (SELECT 1 FROM grant_acks k WHERE k.grant_id = g.id AND k.device = $4) \
             ORDER BY g.id LIMIT 16",
        )
        .bind(device_target(&d.id))
        .bind(group_target(&d.group))
        .bind(now_ms)
        .bind(&d.id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GrantRow {
                    id: r.try_get(0)?,
                    token: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// Stores a batch of records numbered `first..`; returns the device's new acked mark.
    /// Records at or below the mark are already stored and skipped; a batch starting beyond
    /// mark + 1 means the device dropped records (its bound forced them out), counted as a gap.
    pub async fn ingest(
        &self,
        stream: Stream,
        device: &str,
        first: u64,
        records: &[&[u8]],
        now_ms: i64,
    ) -> Result<i64, DbError> {
        let mut tx = self.write_tx().await?;
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let acked: i64 = sqlx::query(&format!(
            "SELECT {} FROM devices WHERE id = $1{lock}",
            stream.acked()
        ))
        .bind(device)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let first = i64::try_from(first).map_err(|_| DbError::Invalid("seq overflow".into()))?;
        let last = first + records.len() as i64 - 1;
        if last <= acked {
            tx.rollback().await?;
            return Ok(acked);
        }
        let gap = (first - acked - 1).max(0);
        // Multi-row inserts: one statement per 200 records.
        let fresh: Vec<(i64, &[u8])> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (first + i as i64, *r))
            .filter(|(s, _)| *s > acked)
            .collect();
        for part in fresh.chunks(200) {
            let sql = format!(
                "INSERT INTO {} (device, seq, record, received_ms) VALUES {} ON CONFLICT DO NOTHING",
                stream.table(),
                placeholders(part.len(), 4)
            );
            let mut q = sqlx::query(&sql);
            for (seq, rec) in part {
                q = q.bind(device).bind(*seq).bind(*rec).bind(now_ms);
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query(&format!(
            "UPDATE devices SET {a} = $1, gaps = gaps + $2 WHERE id = $3",
            a = stream.acked()
        ))
        .bind(last)
        .bind(gap)
        .bind(device)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(last)
    }

    /// A device's report of what it did with a policy, grant or bundle.
    pub async fn applied(
        &self,
        device: &str,
        what: &str,
        version: i64,
        ok: bool,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO applied (device, what, version, ok, reason, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device, what, version) \
             DO UPDATE SET ok = excluded.ok, reason = excluded.reason, at_ms = excluded.at_ms",
        )
        .bind(device)
        .bind(what)
        .bind(version)
        .bind(i64::from(ok))
        .bind(reason)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if what == "grant" {
            sqlx::query(
                "INSERT INTO grant_acks (grant_id, device, ok, reason) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(version)
            .bind(device)
            .bind(i64::from(ok))
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records what devices said in their Hellos, many in one transaction, then the policy
    /// versions they reported applied since (`(device, version)`, so the rollout shows them
    /// before the device's next Hello). Both come through one queue in arrival order, so a
    /// Hello's older version never overwrites an `Applied` that followed it.
    pub async fn seen(&self, batch: &[Seen], policies: &[(String, i64)]) -> Result<(), DbError> {
        // One statement per 100 devices (UPDATE … FROM VALUES works on both backends); a
        // device seen twice in the batch keeps its latest report and counts both sessions.
        let mut latest: Vec<(&Seen, i64)> = Vec::with_capacity(batch.len());
        let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for s in batch {
            match at.get(s.id.as_str()) {
                Some(&i) => latest[i] = (s, latest[i].1 + 1),
                None => {
                    at.insert(&s.id, latest.len());
                    latest.push((s, 1));
                }
            }
        }
        let mut tx = self.write_tx().await?;
        for part in latest.chunks(100) {
            let sql = format!(
                "UPDATE devices SET last_seen_ms = v.column2, firmware = v.column3, \
                 policy_version = v.column4, bundles = v.column5, audit_high = v.column6, \
                 outbox_high = v.column7, dropped = v.column8, \
                 sessions = devices.sessions + v.column9 \
                 FROM (VALUES {}) AS v WHERE devices.id = v.column1",
                placeholders(part.len(), 9)
            );
            let mut q = sqlx::query(&sql);
            for (s, n) in part {
                q = q
                    .bind(&s.id)
                    .bind(s.at_ms)
                    .bind(&s.firmware)
                    .bind(s.policy_version)
                    .bind(&s.bundles)
                    .bind(s.audit_high)
                    .bind(s.outbox_high)
                    .bind(s.dropped)
                    .bind(*n);
            }
            q.execute(&mut *tx).await?;
        }
        for (id, version) in policies {
            sqlx::query(
                "UPDATE devices SET policy_version = $1 WHERE id = $2 AND policy_version < $1",
            )
            .bind(*version)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A device's stored records of one stream from `after` (exclusive), oldest first.
    pub async fn records(
        &self,
        stream: Stream,
        device: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT seq, record FROM {} WHERE device = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            stream.table()
        ))
        .bind(device)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// How many devices of each policy version (rollout status).
    pub async fn rollout(&self) -> Result<Vec<(String, i64, i64)>, DbError> {
        let rows = sqlx::query(
            "SELECT grp, policy_version, COUNT(*) FROM devices GROUP BY grp, policy_version \
             ORDER BY grp, policy_version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }
}
