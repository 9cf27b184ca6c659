//! `nanoclaw bundle pack|inspect|unpack`: the publisher's and field engineer's tools. They work
//! on files only (no daemon) and exit 0, 1 (the bundle is bad or an operation failed) or 2
//! (usage).

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{BundleError, hex, tar, unpack};
use crate::config::manifest::MAX_MANIFEST_BYTES;

pub const USAGE: &str = "usage: nanoclaw bundle pack DIR -o FILE [--gzip]
       nanoclaw bundle inspect FILE [--json]
       nanoclaw bundle unpack FILE DIR";

const OK: u8 = 0;
const FAILED: u8 = 1;
const USAGE_ERR: u8 = 2;

/// Runs `nanoclaw bundle ARGS`; returns the exit code.
pub fn main(args: &[String]) -> u8 {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match a.as_slice() {
        ["pack", dir, "-o", out] | ["pack", "-o", out, dir] => pack(dir, out, false),
        ["pack", dir, "-o", out, "--gzip"] | ["pack", "--gzip", dir, "-o", out] => {
            pack(dir, out, true)
        }
        ["inspect", file] => inspect(file, false),
        ["inspect", file, "--json"] | ["inspect", "--json", file] => inspect(file, true),
        ["unpack", file, dir] => unpack_cmd(file, dir),
        _ => {
            eprintln!("{USAGE}");
            return USAGE_ERR;
        }
    };
    match result {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("nanoclaw bundle: {e}");
            FAILED
        }
    }
}

fn pack(dir: &str, out: &str, gzip: bool) -> Result<(), BundleError> {
    let p = super::pack::pack(Path::new(dir), Path::new(out), gzip)?;
    println!(
        "{out}: {} entries, {} bytes of data, {} bytes, sha256:{}",
        p.entries,
        p.data_bytes,
        p.archive_bytes,
        hex(&p.sha256)
    );
    Ok(())
}

/// The archive's entries and manifest, read in one pass (nothing is written anywhere).
fn inspect(file: &str, as_json: bool) -> Result<(), BundleError> {
    let path = Path::new(file);
    let (digest, size) = super::sha256_file(path)?;
    let f = std::fs::File::open(path).map_err(|e| BundleError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let stream = unpack::maybe_gunzip(f).map_err(|e| BundleError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut r = tar::Reader::new(stream);
    let (mut entries, mut data) = (0u64, 0u64);
    let mut manifest: Option<serde_json::Value> = None;
    while let Some(h) = r
        .next_header()
        .map_err(|e| BundleError::Archive(e.to_string()))?
    {
        entries += 1;
        data += h.size;
        if h.path == "manifest.json" && h.kind == tar::Kind::File {
            if h.size > MAX_MANIFEST_BYTES {
                return Err(BundleError::Invalid {
                    what: "manifest.json".into(),
                    reason: format!("{} bytes; at most {MAX_MANIFEST_BYTES}", h.size),
                });
            }
            let mut buf = Vec::new();
            r.copy_data(h.size, &mut buf)
                .map_err(|e| BundleError::Archive(e.to_string()))?;
            let m =
                crate::config::Manifest::parse(&buf, Path::new("manifest.json")).map_err(|e| {
                    BundleError::Invalid {
                        what: "manifest.json".into(),
                        reason: e.to_string(),
                    }
                })?;
            manifest = Some(json!({
                "name": m.name, "version": m.version, "mode": m.mode, "exec": m.exec,
                "memory": m.requests.memory.to_string(), "network": m.requests.network,
            }));
        }
    }
    let sig = PathBuf::from(format!("{file}.sigstore.json"));
    let out = json!({
        "file": file,
        "bytes": size,
        "sha256": hex(&digest),
        "entries": entries,
        "data_bytes": data,
        "manifest": manifest,
        "signature": sig.exists().then(|| sig.display().to_string()),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!("{file}: {size} bytes, sha256:{}", hex(&digest));
        println!("  {entries} entries, {data} bytes of data");
        match &manifest {
            Some(m) => println!(
                "  agent {} {} ({}), exec {}",
                m["name"].as_str().unwrap_or("?"),
                m["version"].as_str().unwrap_or("?"),
                m["mode"].as_str().unwrap_or("?"),
                m["exec"]
            ),
            None => println!("  NO manifest.json"),
        }
        match sig.exists() {
            true => println!("  signature: {}", sig.display()),
            false => println!("  signature: none ({} is missing)", sig.display()),
        }
    }
    Ok(())
}

fn unpack_cmd(file: &str, dir: &str) -> Result<(), BundleError> {
    let path = Path::new(file);
    let f = std::fs::File::open(path).map_err(|e| BundleError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let stream = unpack::maybe_gunzip(f).map_err(|e| BundleError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let u = unpack::unpack(stream, Path::new(dir), unpack::Limits::default())?;
    println!(
        "{dir}: {} entries, {} bytes of data",
        u.entries, u.data_bytes
    );
    Ok(())
}
