//! What a sync session reads from and does to the daemon (`session::Host`): the Hello, audit
//! and outbox batches, and the server's policies, grants and bundles, which go through the
//! same paths as local ones (policy `replace`, grant `request`, the installer).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use nanoclaw_proto::session::Host;
use nanoclaw_proto::sync::{Digest, Hello, Offer, PROTOCOL, PROTOCOL_MIN, records};
use sha2::Digest as _;

use super::State;
use crate::daemon::CtxRef;

/// A bundle being downloaded in this session, its partial file open for appending.
struct Download {
    name: String,
    version: String,
    file: std::fs::File,
    len: u64,
}

pub struct DeviceHost {
    ctx: CtxRef,
    pub state: State,
    firmware: String,
    hello_policy: u64,
    audit_high: u64,
    outbox_high: u64,
    outbox_acked: u64,
    /// The server stored the outbox up to here; trimmed once, after the session.
    outbox_stored: u64,
    /// Where the next outbox batch starts in the file (and the seq expected there).
    outbox_cursor: Cell<(u64, u64)>,
    dropped: u64,
    dir: PathBuf,
    /// No downloads (the byte budget is spent, or the rest would overrun it).
    pub budget_left: Option<u64>,
    downloads: BTreeMap<Digest, Download>,
    /// Complete, digest-checked archives to install after the session.
    pub ready: Vec<(Digest, PathBuf)>,
    /// Every bundle offered this session (name, version, hex digest).
    pub offered: Vec<(String, String, String)>,
    /// Applied policy versions, for the caller's log.
    pub policies: Vec<u64>,
    reason: String,
    snapshot: super::status::Snapshot,
    /// The snapshot is due (changed, or the last one is old) and not yet handed out.
    status_due: bool,
    status_given: Cell<bool>,
}

/// SHA-256 of the sorted `name@version\n` lines: what a device reports as its fleet bundles.
pub fn bundles_digest<'a>(list: impl Iterator<Item = (&'a str, &'a str)>) -> Digest {
    let mut v: Vec<String> = list.map(|(n, ver)| format!("{n}@{ver}\n")).collect();
    v.sort();
    sha2::Sha256::digest(v.concat().as_bytes()).into()
}

impl DeviceHost {
    pub fn new(ctx: &CtxRef, state: State, dir: PathBuf, budget_left: Option<u64>) -> Self {
        let d = ctx.d.borrow();
        let audit_high = d.audit.next_seq().saturating_sub(1);
        let (outbox_high, outbox_acked) = d.outbox.as_ref().map_or((0, 0), |o| {
            let high = o.next_seq().saturating_sub(1);
            // Waiting records are the newest `count`; everything before them was acked.
            (high, high.saturating_sub(o.count()))
        });
        // Rotation removed records the server never acknowledged: say how many.
        let dropped = d
            .audit
            .first_seq()
            .saturating_sub(1)
            .saturating_sub(state.audit_acked);
        let snapshot = super::status::Snapshot::take(&d);
        let refresh_s = d.cfg.fleet.as_ref().map_or(900, |f| f.status_s);
        let status_due = snapshot.due(
            &state.status_sent,
            std::time::Instant::now(),
            std::time::Duration::from_secs(u64::from(refresh_s)),
        );
        DeviceHost {
            ctx: ctx.clone(),
            firmware: env!("CARGO_PKG_VERSION").into(),
            hello_policy: d.policy.version,
            audit_high,
            outbox_high,
            outbox_acked,
            outbox_stored: outbox_acked,
            outbox_cursor: Cell::new((0, 0)),
            dropped,
            dir,
            budget_left,
            downloads: BTreeMap::new(),
            ready: Vec::new(),
            offered: Vec::new(),
            policies: Vec::new(),
            reason: String::new(),
            snapshot,
            status_due,
            status_given: Cell::new(false),
            state,
        }
    }

    fn part(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}.part", crate::bundle::hex(digest)))
    }

    fn fail(&mut self, why: String) -> Result<(), &str> {
        self.reason = why;
        Err(&self.reason)
    }
}

/// Puts consecutive stored records into a batch; returns the first seq, the count and the
/// bytes used. Stops at a gap or when `buf` is full.
fn pack(recs: &[crate::audit::Stored], first: u64, buf: &mut [u8]) -> (u64, u16, usize) {
    let from = recs.first().map_or(first, |r| r.0);
    let (mut used, mut n) = (0, 0u16);
    for (seq, body) in recs {
        if *seq != from + u64::from(n) || n == u16::MAX || !records::push(buf, &mut used, body) {
            break;
        }
        n += 1;
    }
    (from, n, used)
}

impl Host for DeviceHost {
    fn status(&self) -> Option<nanoclaw_proto::sync::Status<'_>> {
        if !self.status_due {
            return None;
        }
        self.status_given.set(true);
        Some(self.snapshot.status())
    }

    fn hello(&self) -> Hello<'_> {
        Hello {
            protocol_min: PROTOCOL_MIN,
            protocol_max: PROTOCOL,
            firmware: &self.firmware,
            policy_version: self.hello_policy,
            bundles: self.state.bundles,
            audit_high: self.audit_high,
            audit_acked: self.state.audit_acked,
            outbox_high: self.outbox_high,
            outbox_acked: self.outbox_acked,
            dropped: self.dropped,
        }
    }

    fn audit(&self, first: u64, buf: &mut [u8]) -> (u64, u16, usize) {
        let d = self.ctx.d.borrow();
        // Each record costs 2 bytes of length on top of its body.
        let recs = match d.audit.since(first, buf.len() * 9 / 10) {
            Ok(r) => r,
            Err(e) => {
                crate::log!("nanoclaw: fleet sync: reading the audit log: {e}");
                return (first, 0, 0);
            }
        };
        pack(&recs, first, buf)
    }

    fn outbox(&self, first: u64, buf: &mut [u8]) -> (u64, u16, usize) {
        let d = self.ctx.d.borrow();
        let Some(o) = d.outbox.as_ref() else {
            return (first, 0, 0);
        };
        // Continue where the last batch ended unless the session asks for something else.
        let (offset, expected) = self.outbox_cursor.get();
        let offset = if expected == first { offset } else { 0 };
        let (recs, next) = match o.read_from(offset, first, buf.len() * 9 / 10) {
            Ok(r) => r,
            Err(e) => {
                crate::log!("nanoclaw: fleet sync: reading the outbox: {e}");
                return (first, 0, 0);
            }
        };
        let (from, n, used) = pack(&recs, first, buf);
        if usize::from(n) == recs.len() {
            self.outbox_cursor.set((next, from + u64::from(n)));
        }
        (from, n, used)
    }

    fn policy(&mut self, version: u64, envelope: &[u8]) -> Result<(), &str> {
        let r = crate::daemon::policy::replace(
            &self.ctx,
            envelope,
            "fleet",
            false,
            std::time::Instant::now(),
        );
        match r {
            Ok(_) => {
                self.policies.push(version);
                Ok(())
            }
            Err(e) => self.fail(e),
        }
    }

    fn grant(&mut self, token: &[u8]) -> Result<(), &str> {
        let v: serde_json::Value = match serde_json::from_slice(token) {
            Ok(v) => v,
            Err(e) => return self.fail(format!("grant token is not JSON: {e}")),
        };
        let agent = v["payload"]["agent"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match crate::daemon::grants::request(&self.ctx, &agent, &v) {
            Ok(_) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    fn want(&mut self, offer: &Offer<'_>) -> Option<u64> {
        let hex = crate::bundle::hex(&offer.digest);
        self.offered
            .push((offer.name.to_owned(), offer.version.to_owned(), hex.clone()));
        if self.state.refused.contains(&hex) {
            return None;
        }
        let installed = self
            .ctx
            .d
            .borrow()
            .agents
            .get(offer.name)
            .is_some_and(|a| a.manifest.version == offer.version);
        if installed || offer.size > crate::daemon::installer::MAX_ARCHIVE {
            return None;
        }
        let part = self.part(&offer.digest);
        let have = std::fs::metadata(&part).map_or(0, |m| m.len());
        if self
            .budget_left
            .is_some_and(|left| offer.size.saturating_sub(have) > left)
        {
            return None;
        }
        let file = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(part.with_extension("sigstore.json"), offer.signature))
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&part)
            })
            .ok()?;
        self.downloads.insert(
            offer.digest,
            Download {
                name: offer.name.to_owned(),
                version: offer.version.to_owned(),
                file,
                len: have,
            },
        );
        Some(have)
    }

    fn chunk(&mut self, digest: &Digest, offset: u64, data: &[u8]) -> bool {
        let Some(dl) = self.downloads.get_mut(digest) else {
            return false;
        };
        if dl.len != offset || dl.file.write_all(data).is_err() {
            return false;
        }
        dl.len += data.len() as u64;
        true
    }

    fn downloaded(&mut self, digest: &Digest) {
        let part = self.part(digest);
        let Some(dl) = self.downloads.remove(digest) else {
            return;
        };
        let hex = crate::bundle::hex(digest);
        match crate::bundle::sha256_file(&part) {
            Ok((got, _)) if &got == digest => {
                let file = self.dir.join(format!("{}-{}.nclaw", dl.name, dl.version));
                let sig = PathBuf::from(format!("{}.sigstore.json", file.display()));
                if std::fs::rename(part.with_extension("sigstore.json"), &sig).is_ok()
                    && std::fs::rename(&part, &file).is_ok()
                {
                    self.ready.push((*digest, file));
                }
            }
            _ => {
                // Corrupt on disk (a torn write before a power cut): start it over.
                let _ = std::fs::remove_file(&part);
                self.ctx.d.borrow_mut().audit(
                    &dl.name,
                    nanoclaw_proto::audit::AuditKind::InstallRefused,
                    &format!(
                        "fleet download sha256:{hex} did not match its digest; fetching it again"
                    ),
                    true,
                );
            }
        }
    }

    fn acked_audit(&mut self, upto: u64) {
        self.state.audit_acked = self.state.audit_acked.max(upto);
        if let Some(f) = self.ctx.d.borrow_mut().fleet.as_mut() {
            f.audit_acked = self.state.audit_acked;
        }
    }

    fn acked_outbox(&mut self, upto: u64) {
        self.outbox_stored = self.outbox_stored.max(upto);
    }
}

impl DeviceHost {
    /// The snapshot and the time, when this session sent it.
    pub fn status_sent(&mut self) -> super::status::Sent {
        self.status_given.get().then(|| {
            (
                std::mem::take(&mut self.snapshot),
                std::time::Instant::now(),
            )
        })
    }

    /// Drops what the server stored from the outbox: once per session, since every trim
    /// rewrites the file (a cut before it only means those records are sent again, and the
    /// server stores them once).
    pub fn trim_outbox(&mut self) {
        if self.outbox_stored <= self.outbox_acked {
            return;
        }
        let mut d = self.ctx.d.borrow_mut();
        if let Some(o) = d.outbox.as_mut() {
            match o.ack(self.outbox_stored) {
                Ok(()) => self.outbox_acked = self.outbox_stored,
                Err(e) => crate::log!("nanoclaw: fleet sync: trimming the outbox: {e}"),
            }
        }
    }
}
