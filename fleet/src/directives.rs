//! What the fleet wants each device to have — the newest policy, the bundle set, whether
//! grants wait — read from the database for all targets at once and kept for [`TTL`], so an
//! idle check-in costs one database round trip (the device row) instead of four.
//!
//! Operators change targets rarely and from any machine (the CLI writes the database), so a
//! replica notices a push within `TTL`; nothing about a device's own progress (acked marks,
//! acknowledged grants) is cached.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use crate::db::{Assigned, Db, DbError, Device, PolicyRow, device_target, group_target};

/// How long a snapshot serves sessions before it is read again.
pub const TTL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Target {
    policy: Option<Arc<PolicyRow>>,
    bundles: Vec<Assigned>,
    grants: bool,
}

#[derive(Default)]
struct Snapshot {
    at: Option<Instant>,
    targets: HashMap<String, Target>,
}

/// What one device should have.
pub struct Wanted {
    pub policy: Option<Arc<PolicyRow>>,
    /// By name, the device's own assignment over its group's.
    pub bundles: Vec<Assigned>,
    /// Grants wait for the device or its group (which of them it has not acknowledged is
    /// asked of the database).
    pub grants: bool,
}

pub struct Directives {
    db: Db,
    snap: RwLock<Snapshot>,
}

impl Directives {
    pub fn new(db: Db) -> Directives {
        Directives {
            db,
            snap: RwLock::new(Snapshot::default()),
        }
    }

    async fn load(&self) -> Result<Snapshot, DbError> {
        let mut targets: HashMap<String, Target> = HashMap::new();
        for (t, p) in self.db.newest_policies().await? {
            targets.entry(t).or_default().policy = Some(Arc::new(p));
        }
        for (t, a) in self.db.assignments().await? {
            targets.entry(t).or_default().bundles.push(a);
        }
        for t in self.db.grant_targets(crate::serve::now_ms()).await? {
            targets.entry(t).or_default().grants = true;
        }
        Ok(Snapshot {
            at: Some(Instant::now()),
            targets,
        })
    }

    pub async fn for_device(&self, d: &Device) -> Result<Wanted, DbError> {
        let fresh = |s: &Snapshot| s.at.is_some_and(|t| t.elapsed() < TTL);
        let mut snap = self.snap.read().await;
        if !fresh(&snap) {
            drop(snap);
            let mut w = self.snap.write().await;
            // Another session may have reloaded while this one waited.
            if !fresh(&w) {
                *w = self.load().await?;
            }
            drop(w);
            snap = self.snap.read().await;
        }
        let empty = Target::default();
        let group = snap.targets.get(&group_target(&d.group)).unwrap_or(&empty);
        let own = snap.targets.get(&device_target(&d.id)).unwrap_or(&empty);
        let policy = match (&own.policy, &group.policy) {
            (Some(a), Some(b)) => Some(if a.version >= b.version { a } else { b }.clone()),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let mut bundles: Vec<Assigned> = own.bundles.clone();
        for b in &group.bundles {
            if !bundles.iter().any(|x| x.name == b.name) {
                bundles.push(b.clone());
            }
        }
        bundles.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Wanted {
            policy,
            bundles,
            grants: own.grants || group.grants,
        })
    }
}
