//! Installing a signed bundle archive (`nanoclaw install FILE`), and rolling an agent back.
//!
//! One path, in this order, each step refusing with a reason and an audit record: size, the
//! detached Sigstore bundle verified offline against the policy `signers` for the agent's name
//! (and the device's trusted root), manifest admission, anti-rollback (the version must not be
//! below the agent's persisted minimum), a safe unpack into a staging directory while the
//! archive is hashed again (it must be the bytes that were verified), then an atomic switch:
//! `<agents_dir>/<name>` is a symlink to `<state_dir>/bundles/<name>/<version>`, replaced by
//! `rename(2)`. A power cut leaves the old or the new version, never a mix. The minimum version
//! moves up only after a new version has run `probation_s` without failing.

use std::path::{Path, PathBuf};

use nanoclaw_proto::audit::AuditKind;
use serde::{Deserialize, Serialize};

use super::{CtxRef, Daemon};
use crate::bundle::{self, unpack};
use crate::sigstore::{self as sg, Signer};

/// Largest archive accepted.
pub const MAX_ARCHIVE: u64 = 1 << 30;

/// Per-agent install history (`<state_dir>/versions/<agent>.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    /// Installed versions, oldest first (each unpacked under `bundles/<agent>/<version>`).
    pub installed: Vec<String>,
    /// The version `<agents_dir>/<agent>` points at.
    pub current: Option<String>,
    /// Anti-rollback floor: no install below it.
    pub min_version: Option<String>,
}

/// A version as (major, minor, patch, pre-release present): semver order without build data.
pub fn semver(v: &str) -> Option<(u64, u64, u64, bool)> {
    let core = v.split('+').next()?;
    let (nums, pre) = match core.split_once('-') {
        Some((n, _)) => (n, true),
        None => (core, false),
    };
    let mut it = nums.split('.').map(|p| p.parse::<u64>().ok());
    let t = (it.next()??, it.next()??, it.next()??, pre);
    it.next().is_none().then_some(t)
}

/// `a < b` in semver order (a pre-release sorts before its release).
pub fn older(a: &str, b: &str) -> Option<bool> {
    let (x, y) = (semver(a)?, semver(b)?);
    Some((x.0, x.1, x.2, !x.3) < (y.0, y.1, y.2, !y.3))
}

fn versions_path(d: &Daemon, agent: &str) -> PathBuf {
    d.cfg
        .state_dir
        .join("versions")
        .join(format!("{agent}.json"))
}

pub fn load_versions(d: &Daemon, agent: &str) -> Versions {
    load_versions_at(&versions_path(d, agent))
}

pub(super) fn load_versions_at(p: &Path) -> Versions {
    sg::read_capped(p, 64 * 1024, "versions")
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn save_versions(d: &Daemon, agent: &str, v: &Versions) -> Result<(), String> {
    save_versions_at(&versions_path(d, agent), v)
}

pub(super) fn save_versions_at(p: &Path, v: &Versions) -> Result<(), String> {
    crate::agents::persist::write_json_atomic(p, v, true)
        .map_err(|e| format!("saving the version history: {e}"))
}

/// The manifest inside an archive, read without unpacking anything.
/// The signers entries (`agents` pattern, trust) that apply to one agent.
type Signers = Vec<(String, crate::config::policy::SignerTrust)>;

/// The first policy signer for `agent` whose signature verifies, described. Plain data in,
/// so it runs off the event loop.
fn verify_signature(
    signers: &Signers,
    trusted_root: Option<&Path>,
    allow_unsigned: bool,
    agent: &str,
    file: &Path,
    digest: [u8; 32],
) -> Result<String, String> {
    let sig = PathBuf::from(format!("{}.sigstore.json", file.display()));
    let json = match sg::read_capped(&sig, sg::MAX_BUNDLE_JSON, "signature") {
        Ok(j) => j,
        Err(_) if allow_unsigned => {
            return Ok("UNSIGNED (allowed by allow_unsigned)".into());
        }
        Err(e) => return Err(format!("no signature: {e}")),
    };
    let root = match trusted_root {
        Some(p) => Some(sg::read_capped(p, sg::MAX_TRUSTED_ROOT, "trusted root")?),
        None => None,
    };
    if signers.is_empty() {
        return Err(format!("the policy lists no signer for agent {agent}"));
    }
    let mut errors = Vec::new();
    for (pattern, trust) in signers {
        let signer = match trust {
            crate::config::policy::SignerTrust::Key(p) => {
                match sg::read_capped(p, sg::MAX_KEY, "key").and_then(|k| sg::parse_key(&k)) {
                    Ok(k) => Signer::Key(k),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                }
            }
            crate::config::policy::SignerTrust::Identity { identity, issuer } => Signer::Identity {
                identity: identity.clone(),
                issuer: issuer.clone(),
            },
        };
        // The digest suffices for ECDSA and certificates; Ed25519 needs the file.
        let target = match &signer {
            Signer::Key(k) if sg::key_needs_bytes(k) => sg::Target::File(file),
            _ => sg::Target::Digest(digest),
        };
        match sg::verify(&json, root.as_deref(), &signer, target) {
            Ok(v) => return Ok(format!("{v} (signers entry `{pattern}`)")),
            Err(e) => errors.push(e),
        }
    }
    Err(format!(
        "the signature does not verify against the policy's signers for {agent}: {}",
        errors.join("; ")
    ))
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: sha2::Sha256,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hash, &buf[..n]);
        Ok(n)
    }
}

/// Installs `file`; returns what happened. Every refusal is audited. Hashing, verifying and
/// unpacking run on a blocking thread, so the daemon keeps serving meanwhile; one install at
/// a time.
pub async fn install(ctx: &CtxRef, file: &Path) -> Result<String, String> {
    let busy = {
        let mut d = ctx.d.borrow_mut();
        std::mem::replace(&mut d.installing, true)
    };
    if busy {
        return Err("another install is in progress; try again when it is done".into());
    }
    let result = install_steps(ctx, file.to_path_buf()).await;
    ctx.d.borrow_mut().installing = false;
    if let Err((agent, e)) = &result {
        ctx.d.borrow_mut().audit(
            agent,
            AuditKind::InstallRefused,
            &format!("{}: {e}", file.display()),
            true,
        );
    }
    result.map_err(|(_, e)| e)
}

/// Reads the archive once: its SHA-256 and the manifest inside.
fn hash_and_manifest(file: &Path) -> Result<([u8; 32], bundle::Contents), String> {
    let len = std::fs::metadata(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    if len > MAX_ARCHIVE {
        return Err(format!("{len} bytes; at most {MAX_ARCHIVE}"));
    }
    let (digest, _) = bundle::sha256_file(file).map_err(|e| e.to_string())?;
    Ok((digest, bundle::contents_of(file)?))
}

/// Unpacks `file` into `staging` while hashing it again (only the verified bytes may be
/// installed), checks the result with `check`, and renames it to `final_dir`.
pub(super) fn unpack_verified(
    file: &Path,
    staging: &Path,
    final_dir: &Path,
    digest: [u8; 32],
    check: impl FnOnce(&Path) -> Result<(), String>,
    reserve_bytes: u64,
) -> Result<unpack::Unpacked, String> {
    if let Some(parent) = staging.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let _ = std::fs::remove_dir_all(staging);
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut hashing = Hashing {
        inner: f,
        hash: <sha2::Sha256 as sha2::Digest>::new(),
    };
    let unpacked = unpack::maybe_gunzip(&mut hashing)
        .map_err(|e| e.to_string())
        .and_then(|s| {
            let limits = unpack::Limits {
                reserve_bytes,
                ..unpack::Limits::default()
            };
            unpack::unpack(s, staging, limits).map_err(|e| e.to_string())
        })?;
    // Drain what the tar reader did not need (padding), so the hash covers the whole file.
    let _ = std::io::copy(&mut hashing, &mut std::io::sink());
    let again: [u8; 32] = sha2::Digest::finalize(hashing.hash).into();
    let fail = |e: String| {
        let _ = std::fs::remove_dir_all(staging);
        e
    };
    if again != digest {
        return Err(fail(
            "the archive changed while it was being installed".into(),
        ));
    }
    check(staging).map_err(fail)?;
    std::fs::rename(staging, final_dir)
        .map_err(|e| fail(format!("{}: {e}", final_dir.display())))?;
    sync_dir(final_dir.parent());
    Ok(unpacked)
}

async fn install_steps(ctx: &CtxRef, file: PathBuf) -> Result<String, (String, String)> {
    let none = |e: String| (String::new(), e);
    let f = file.clone();
    let (digest, contents) = smol::unblock(move || hash_and_manifest(&f))
        .await
        .map_err(none)?;
    let name = contents.name().to_owned();
    let version = contents.version().to_owned();
    let named = |e: String| (name.clone(), e);
    let (signers, root, allow) = {
        let d = ctx.d.borrow();
        let signers: Signers = d
            .policy
            .signers
            .iter()
            .filter(|s| s.matches(&name))
            .map(|s| (s.agents.clone(), s.trust.clone()))
            .collect();
        (signers, d.cfg.trusted_root.clone(), d.cfg.allow_unsigned)
    };
    let (f, n) = (file.clone(), name.clone());
    let signed_by =
        smol::unblock(move || verify_signature(&signers, root.as_deref(), allow, &n, &f, digest))
            .await
            .map_err(named)?;
    let manifest = match contents {
        bundle::Contents::Agent(m) => m,
        bundle::Contents::Runtime(layer) => {
            return super::runtimes::install(ctx, &file, digest, &layer, &signed_by)
                .await
                .map_err(|e| (super::runtimes::audit_name(&layer.name), e));
        }
    };
    let (staging, final_dir, reserve, pin_note) = {
        let d = ctx.d.borrow();
        crate::admission::admit(&manifest, &d.policy).map_err(|e| named(e.to_string()))?;
        if semver(&version).is_none() {
            return Err(named(format!(
                "version `{version}` is not MAJOR.MINOR.PATCH: signed installs need semantic versions for anti-rollback"
            )));
        }
        let v = load_versions(&d, &name);
        let mut pin_note = String::new();
        if let Some(min) = &v.min_version
            && older(&version, min) == Some(true)
        {
            let pinned = d.policy.pinned_versions.get(&name) == Some(&version);
            match (&d.in_force.origin, pinned) {
                (crate::policy::Origin::Signed(_), true) => {
                    pin_note = format!(
                        "; below the anti-rollback minimum {min}, pinned by fleet-signed policy version {}",
                        d.policy.version
                    );
                }
                (crate::policy::Origin::Local, true) => {
                    return Err(named(format!(
                        "version {version} is below the minimum {min}; pinned_versions allows it only in a fleet-signed policy, and the policy in force is an unsigned local file"
                    )));
                }
                _ => {
                    return Err(named(format!(
                        "version {version} is below the minimum {min} (anti-rollback: an older signed version is not installed again unless a fleet-signed policy pins it in pinned_versions)"
                    )));
                }
            }
        }
        let dir = d.cfg.state_dir.join("bundles").join(&name);
        (
            dir.join(format!(".staging-{version}")),
            dir.join(&version),
            d.cfg.install_reserve.bytes(),
            pin_note,
        )
    };
    if final_dir.exists() {
        return Err(named(format!("version {version} is already installed")));
    }
    let (f, s, fd, m) = (file.clone(), staging, final_dir.clone(), manifest.clone());
    let check = move |dir: &Path| {
        let checked = crate::agents::install::check(dir).map_err(|e| e.to_string())?;
        if checked.manifest != m {
            return Err("the unpacked manifest differs from the verified one".into());
        }
        Ok(())
    };
    let unpacked = smol::unblock(move || unpack_verified(&f, &s, &fd, digest, check, reserve))
        .await
        .map_err(named)?;
    let d = ctx.d.borrow();
    switch(&d, &name, &final_dir).map_err(named)?;
    let home = d.cfg.state_dir.join("bundles").join(&name);
    let pruned = record_current(&d, &versions_path(&d, &name), &home, &version).map_err(named)?;
    drop(d);
    for p in pruned {
        let _ = std::fs::remove_dir_all(p);
    }
    let what = format!("{version}{pin_note}");
    let text = installed_text(&what, &file, &digest, &unpacked, &signed_by);
    ctx.d
        .borrow_mut()
        .audit(&name, AuditKind::Install, &text, true);
    super::lifecycle::activate(ctx, &name);
    Ok(text)
}

/// Makes `version` the current one in the history at `path` (versions unpacked under `dir`),
/// pruning the oldest; returns the directories to remove now that the history is saved.
pub(super) fn record_current(
    d: &Daemon,
    path: &Path,
    dir: &Path,
    version: &str,
) -> Result<Vec<PathBuf>, String> {
    let mut v = load_versions_at(path);
    v.installed.retain(|x| x != version);
    v.installed.push(version.to_owned());
    v.current = Some(version.to_owned());
    let pruned = prune_in(d, dir, &mut v);
    save_versions_at(path, &v)?;
    Ok(pruned)
}

/// The audit text of an install.
pub(super) fn installed_text(
    what: &str,
    file: &Path,
    digest: &[u8; 32],
    unpacked: &unpack::Unpacked,
    signed_by: &str,
) -> String {
    format!(
        "installed {what} from {} (sha256:{}, {} entries, {} bytes), signed: {signed_by}",
        file.display(),
        bundle::hex(digest),
        unpacked.entries,
        unpacked.data_bytes
    )
}

/// Drops the oldest installed versions beyond `keep_versions` from `v` (never the current one
/// or the minimum); returns their directories, to be removed once `v` is saved.
fn prune_in(d: &Daemon, dir: &Path, v: &mut Versions) -> Vec<PathBuf> {
    let keep = d.cfg.keep_versions.max(1) as usize;
    let mut gone = Vec::new();
    while v.installed.len() > keep {
        let Some(i) = v
            .installed
            .iter()
            .position(|x| Some(x) != v.current.as_ref() && Some(x) != v.min_version.as_ref())
        else {
            break;
        };
        let old = v.installed.remove(i);
        gone.push(dir.join(old));
    }
    gone
}

/// At start-up: what an install interrupted by a power cut or `kill -9` left behind (staging
/// directories, a half-made switch link) goes; the versions themselves are complete or absent.
pub fn cleanup(d: &Daemon) {
    let kinds = [
        d.cfg.state_dir.join("bundles"),
        d.cfg.state_dir.join(super::runtimes::DIR),
    ];
    let dirs = kinds
        .iter()
        .flat_map(|k| std::fs::read_dir(k).into_iter().flatten().flatten());
    for agent in dirs {
        for e in std::fs::read_dir(agent.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') && n.ends_with(".switch") {
                let _ = std::fs::remove_file(e.path()); // a runtime's half-made switch link
            } else if n.starts_with(".staging-") {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => crate::log!(
                        "nanoclaw: removed {} (an interrupted install)",
                        e.path().display()
                    ),
                    Err(err) => crate::log!("nanoclaw: removing {}: {err}", e.path().display()),
                }
            }
        }
    }
    for e in std::fs::read_dir(&d.cfg.agents_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && n.ends_with(".switch") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

pub(super) fn sync_dir(dir: Option<&Path>) {
    if let Some(d) = dir
        && let Ok(f) = std::fs::File::open(d)
    {
        let _ = f.sync_all();
    }
}

/// Points `<agents_dir>/<name>` at `target` atomically (a new symlink renamed over the old).
fn switch(d: &Daemon, name: &str, target: &Path) -> Result<(), String> {
    let link = d.cfg.agents_dir.join(name);
    if let Ok(m) = std::fs::symlink_metadata(&link)
        && !m.file_type().is_symlink()
    {
        return Err(format!(
            "{} is a bundle directory installed by hand; remove it to install signed versions",
            link.display()
        ));
    }
    switch_link(&link, target)
}

/// Replaces the symlink `link` (in a directory of its own kind) with one to `target`, atomically.
pub(super) fn switch_link(link: &Path, target: &Path) -> Result<(), String> {
    let parent = link.parent().unwrap_or(Path::new("."));
    let file = link
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{file}.switch"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, link).map_err(|e| format!("{}: {e}", link.display()))?;
    sync_dir(Some(parent));
    Ok(())
}

/// `nanoclaw rollback AGENT`: back to the version installed before the current one, if it is
/// not below the anti-rollback minimum.
pub fn rollback(ctx: &CtxRef, agent: &str, why: &str) -> Result<String, String> {
    let (prev, current) = {
        let d = ctx.d.borrow();
        let v = load_versions(&d, agent);
        let current = v
            .current
            .clone()
            .ok_or_else(|| format!("{agent} has no signed install to roll back"))?;
        let prev = previous(&v, &d.cfg.state_dir.join("bundles").join(agent))
            .ok_or_else(|| format!("{agent} has no earlier version to roll back to"))?;
        if let Some(min) = &v.min_version
            && older(&prev, min) == Some(true)
        {
            return Err(format!(
                "{prev} is below the minimum version {min} (anti-rollback)"
            ));
        }
        let target = d.cfg.state_dir.join("bundles").join(agent).join(&prev);
        switch(&d, agent, &target)?;
        let mut v = v;
        v.current = Some(prev.clone());
        save_versions(&d, agent, &v)?;
        (prev, current)
    };
    let text = format!("rolled back from {current} to {prev}: {why}");
    ctx.d
        .borrow_mut()
        .audit(agent, AuditKind::Rollback, &text, true);
    super::lifecycle::activate(ctx, agent);
    Ok(text)
}

/// The version installed before the current one whose directory under `home` still exists.
pub(super) fn previous(v: &Versions, home: &Path) -> Option<String> {
    let current = v.current.as_ref()?;
    let pos = v.installed.iter().position(|x| x == current).unwrap_or(0);
    v.installed[..pos]
        .iter()
        .rev()
        .find(|x| home.join(x).is_dir())
        .cloned()
}

/// After a crash loop: if the agent's current version has not passed probation yet and an
/// earlier version is installed, switch back to it (audited as `rollback`).
pub fn rollback_if_in_probation(ctx: &CtxRef, agent: &str, failure: &str) -> bool {
    let v = load_versions(&ctx.d.borrow(), agent);
    let Some(current) = v.current.clone() else {
        return false;
    };
    if v.min_version.as_deref() == Some(current.as_str()) {
        return false;
    }
    let why = format!("{current} {failure} during its probation");
    match rollback(ctx, agent, &why) {
        Ok(_) => true,
        Err(e) => {
            ctx.d.borrow_mut().audit(
                agent,
                AuditKind::Rollback,
                &format!("automatic rollback not possible: {e}"),
                true,
            );
            false
        }
    }
}

/// Whether `dir` (an agents_dir entry) is a version that `nanoclaw install` verified: a symlink
/// to `<state_dir>/bundles/<agent>/<current version>`.
pub fn is_signed_install(d: &Daemon, agent: &str, dir: &Path) -> bool {
    let Some(current) = load_versions(d, agent).current else {
        return false;
    };
    let want = d.cfg.state_dir.join("bundles").join(agent).join(current);
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink())
        && std::fs::read_link(dir).is_ok_and(|t| t == want)
}

/// Starts the probation clock of a freshly started instance whose version is above the
/// agent's minimum: if the same instance is still running `probation_s` later, its version
/// becomes the minimum.
pub fn watch_probation(ctx: &CtxRef, agent: &str, generation: u64) {
    let (version, secs) = {
        let d = ctx.d.borrow();
        let Some(a) = d.agents.get(agent) else { return };
        let v = load_versions(&d, agent);
        if v.current.as_deref() != Some(a.manifest.version.as_str()) {
            return;
        }
        if v.min_version.as_deref() == Some(a.manifest.version.as_str()) {
            return;
        }
        (a.manifest.version.clone(), d.cfg.probation_s)
    };
    let c = ctx.clone();
    let n = agent.to_owned();
    ctx.ex
        .spawn(async move {
            smol::Timer::after(std::time::Duration::from_secs(u64::from(secs))).await;
            let mut d = c.d.borrow_mut();
            let still = d
                .agents
                .get(&n)
                .is_some_and(|a| a.generation == generation && a.instance.is_some());
            if still {
                on_probation_passed(&mut d, &n, &version);
            }
        })
        .detach();
}

/// After `probation_s` of running a version without failing, it becomes the minimum.
pub fn on_probation_passed(d: &mut Daemon, agent: &str, version: &str) {
    let mut v = load_versions(d, agent);
    if v.current.as_deref() != Some(version) {
        return;
    }
    let raises = match &v.min_version {
        None => true,
        Some(min) => older(min, version) == Some(true),
    };
    if !raises {
        return;
    }
    v.min_version = Some(version.to_owned());
    if save_versions(d, agent, &v).is_ok() {
        d.audit(
            agent,
            AuditKind::Posture,
            &format!(
                "version {version} passed probation: it is the minimum version now (anti-rollback)"
            ),
            true,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_order() {
        assert_eq!(older("1.2.3", "1.10.0"), Some(true));
        assert_eq!(older("1.10.0", "1.2.3"), Some(false));
        assert_eq!(older("2.0.0-rc1", "2.0.0"), Some(true));
        assert_eq!(older("2.0.0", "2.0.0"), Some(false));
        assert_eq!(older("1.0.0+build5", "1.0.0"), Some(false));
        assert_eq!(semver("1.2"), None);
        assert_eq!(semver("1.2.3.4"), None);
        assert_eq!(semver("v1.2.3"), None);
    }
}
