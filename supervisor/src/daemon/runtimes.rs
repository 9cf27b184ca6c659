//! Runtime layers: signed bundles holding an interpreter and its libraries under `usr/`
//! (`python3.11`, `node20`), installed once per device and bound read-only at `/usr` for each
//! agent whose manifest names the layer and whose policy grant lists it in `runtimes`, so an
//! interpreted agent's bundle carries only its own code.
//!
//! A layer goes through the agents' install path (size, offline signature by a policy
//! `signers` entry matching the layer's name, hash while unpacking, atomic switch) and lives
//! in `<state_dir>/runtimes/<name>/<version>`, with the symlink `current` naming the version
//! agents get. Installing a newer version restarts the agents on it; an older one is refused
//! (anti-rollback) and `nanoclaw rollback NAME` goes back to the previously installed one.
//! A running agent keeps the layer it started with until it restarts. docs/RUNTIMES.md.

use std::path::{Path, PathBuf};

use nanoclaw_proto::audit::AuditKind;
use serde_json::{Value, json};

use super::installer::{
    installed_text, load_versions_at, older, previous, record_current, save_versions_at,
    switch_link, unpack_verified,
};
use super::{CtxRef, Daemon};
use crate::bundle::Contents;
use crate::config::Manifest;
use crate::config::layer::Layer;

/// Under the state directory.
pub const DIR: &str = "runtimes";

/// The audit key of a layer (agent names have no `:`).
pub fn audit_name(name: &str) -> String {
    format!("runtime:{name}")
}

fn dir(d: &Daemon, name: &str) -> PathBuf {
    d.cfg.state_dir.join(DIR).join(name)
}

fn versions_file(d: &Daemon, name: &str) -> PathBuf {
    dir(d, name).join("versions.json")
}

/// The start of the reason of an agent that waits for layer `name`, which its install
/// recognizes to start the agent.
fn not_installed(name: &str) -> String {
    format!("runtime layer {name} is not installed on this device")
}

/// Whether a layer of that name is installed.
pub fn exists(d: &Daemon, name: &str) -> bool {
    crate::config::manifest::check_runtime_name(name).is_ok()
        && std::fs::symlink_metadata(dir(d, name).join("current")).is_ok()
}

/// The host directory to bind at `/usr` for an agent (`None`: it names no runtime), after
/// checking that its layer is installed and holds the program it runs.
pub fn usr_for(d: &Daemon, m: &Manifest) -> Result<Option<PathBuf>, String> {
    let Some(name) = &m.runtime else {
        return Ok(None);
    };
    let current = dir(d, name).join("current");
    let version = std::fs::read_link(&current).map_err(|_| {
        format!(
            "{}; install its bundle with `nanoclaw install {name}-VERSION.nclaw` \
             (docs/RUNTIMES.md)",
            not_installed(name)
        )
    })?;
    // Resolved now, so a later switch does not move the layer under a starting agent.
    let usr = dir(d, name).join(version).join("rootfs/usr");
    if !usr.is_dir() {
        return Err(format!(
            "runtime layer {name}: {} is missing",
            usr.display()
        ));
    }
    if let Some(rest) = m.exec.first().and_then(|p| p.strip_prefix("/usr/")) {
        let ok = std::fs::metadata(usr.join(rest)).is_ok_and(|f| {
            use std::os::unix::fs::PermissionsExt;
            f.is_file() && f.permissions().mode() & 0o111 != 0
        });
        if !ok {
            return Err(format!(
                "exec {}: not an executable file in runtime layer {name}",
                m.exec[0]
            ));
        }
    }
    Ok(Some(usr))
}

/// What an unpacked layer must look like: its verified manifest, and `rootfs/` holding
/// `usr/` and nothing else (only `usr` is mounted, so anything else would be dead weight
/// that looks like it matters).
fn check_layer(dir: &Path, layer: &Layer) -> Result<(), String> {
    let bytes = crate::sigstore::read_capped(
        &dir.join("manifest.json"),
        crate::config::manifest::MAX_MANIFEST_BYTES,
        "manifest",
    )?;
    if Contents::parse(bytes.as_bytes(), Path::new("manifest.json"))?
        != Contents::Runtime(layer.clone())
    {
        return Err("the unpacked manifest differs from the verified one".into());
    }
    let rootfs = dir.join("rootfs");
    if !std::fs::symlink_metadata(rootfs.join("usr")).is_ok_and(|m| m.is_dir()) {
        return Err("a runtime layer holds its files in rootfs/usr/, which is missing".into());
    }
    for e in std::fs::read_dir(&rootfs).map_err(|e| format!("rootfs: {e}"))? {
        let n = e.map_err(|e| format!("rootfs: {e}"))?.file_name();
        if n != "usr" {
            return Err(format!(
                "rootfs/{} is not used: a runtime layer holds only rootfs/usr/ (mounted at /usr)",
                n.to_string_lossy()
            ));
        }
    }
    Ok(())
}

/// Installs a verified layer archive (the installer checked size and signature).
pub async fn install(
    ctx: &CtxRef,
    file: &Path,
    digest: [u8; 32],
    layer: &Layer,
    signed_by: &str,
) -> Result<String, String> {
    let (name, version) = (layer.name.clone(), layer.version.clone());
    let (home, staging, final_dir, reserve) = {
        let d = ctx.d.borrow();
        let v = load_versions_at(&versions_file(&d, &name));
        if let Some(cur) = &v.current
            && older(&version, cur) == Some(true)
        {
            return Err(format!(
                "version {version} is older than the current {cur}; a layer only moves forward \
                 (anti-rollback), use `nanoclaw rollback {name}` to go back to the previous one"
            ));
        }
        let home = dir(&d, &name);
        (
            home.clone(),
            home.join(format!(".staging-{version}")),
            home.join(&version),
            d.cfg.install_reserve.bytes(),
        )
    };
    if final_dir.exists() {
        return Err(format!("version {version} is already installed"));
    }
    let (f, s, fd, l) = (
        file.to_path_buf(),
        staging,
        final_dir.clone(),
        layer.clone(),
    );
    let check = move |dir: &Path| check_layer(dir, &l);
    let unpacked =
        smol::unblock(move || unpack_verified(&f, &s, &fd, digest, check, reserve)).await?;
    let pruned = {
        let d = ctx.d.borrow();
        switch_link(&home.join("current"), &final_dir)?;
        record_current(&d, &versions_file(&d, &name), &home, &version)?
    };
    for p in pruned {
        let _ = std::fs::remove_dir_all(p);
    }
    let what = format!("runtime layer {name} {version}");
    let text = installed_text(&what, file, &digest, &unpacked, signed_by);
    ctx.d
        .borrow_mut()
        .audit(&audit_name(&name), AuditKind::Install, &text, true);
    restart_users(ctx, &name);
    Ok(text)
}

/// `nanoclaw rollback NAME` for a layer: back to the version installed before the current one.
pub fn rollback(ctx: &CtxRef, name: &str, why: &str) -> Result<String, String> {
    let text = {
        let d = ctx.d.borrow();
        let home = dir(&d, name);
        let mut v = load_versions_at(&versions_file(&d, name));
        let current = v
            .current
            .clone()
            .ok_or_else(|| format!("runtime layer {name} has no install history"))?;
        let prev = previous(&v, &home).ok_or_else(|| {
            format!("runtime layer {name} has no earlier version to roll back to")
        })?;
        switch_link(&home.join("current"), &home.join(&prev))?;
        v.current = Some(prev.clone());
        save_versions_at(&versions_file(&d, name), &v)?;
        format!("rolled back runtime layer {name} from {current} to {prev}: {why}")
    };
    ctx.d
        .borrow_mut()
        .audit(&audit_name(name), AuditKind::Rollback, &text, true);
    restart_users(ctx, name);
    Ok(text)
}

/// Restarts the running agents on layer `name`, so they get the version now current, and
/// starts those that failed because it was not installed.
fn restart_users(ctx: &CtxRef, name: &str) {
    let missing = not_installed(name);
    let users: Vec<String> = ctx
        .d
        .borrow()
        .agents
        .iter()
        .filter(|(_, a)| a.manifest.runtime.as_deref() == Some(name))
        .filter(|(_, a)| a.instance.is_some() || a.reason.starts_with(&missing))
        .map(|(n, _)| n.clone())
        .collect();
    for agent in users {
        super::lifecycle::activate(ctx, &agent);
    }
}

/// Installed layers for `status`: name → current version, installed versions, users.
pub fn summary(d: &Daemon) -> Value {
    let mut out = serde_json::Map::new();
    let root = d.cfg.state_dir.join(DIR);
    let mut names: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for n in names {
        let v = load_versions_at(&versions_file(d, &n));
        let users: Vec<&String> = d
            .agents
            .iter()
            .filter(|(_, a)| a.manifest.runtime.as_deref() == Some(n.as_str()))
            .map(|(a, _)| a)
            .collect();
        out.insert(
            n,
            json!({"current": v.current, "installed": v.installed, "agents": users}),
        );
    }
    Value::Object(out)
}
