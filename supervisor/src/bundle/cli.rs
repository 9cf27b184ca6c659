//! `nanoclaw bundle pack|inspect|unpack`: the publisher's and field engineer's tools. They work
//! on files only (no daemon) and exit 0, 1 (the bundle is bad or an operation failed) or 2
//! (usage).

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{BundleError, hex, tar, unpack};
use crate::config::manifest::MAX_MANIFEST_BYTES;

pub const USAGE: &str = "usage: nanoclaw bundle init --lang python|node|go|rust NAME [--sdk DIR] [--runtime LAYER]
       nanoclaw bundle pack DIR -o FILE [--gzip] [--requests-from PATH]...
       nanoclaw bundle sign FILE --key KEY.pem [-o FILE.sigstore.json]
       nanoclaw bundle verify --bundle B (--key K | --certificate-identity I --certificate-oidc-issuer U) [--trusted-root T] FILE|sha256:HEX
       nanoclaw bundle inspect FILE [--json]
       nanoclaw bundle unpack FILE DIR";

const OK: u8 = 0;
const FAILED: u8 = 1;
const USAGE_ERR: u8 = 2;

/// Runs `nanoclaw bundle ARGS`; returns the exit code.
pub fn main(args: &[String]) -> u8 {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.first() {
        Some(&"verify") => return verify(&a[1..]),
        Some(&"init") => return super::init::main(&a[1..]),
        Some(&"pack") => return pack_cmd(&a[1..]),
        _ => {}
    }
    let result = match a.as_slice() {
        ["sign", file, "--key", key] => sign(file, key, None),
        ["sign", file, "--key", key, "-o", out] => sign(file, key, Some(out)),
        ["inspect", file] => inspect(file, false),
        ["inspect", file, "--json"] | ["inspect", "--json", file] => inspect(file, true),
        ["unpack", file, dir] => unpack_cmd(file, dir),
        _ => {
            crate::log!("{USAGE}");
            return USAGE_ERR;
        }
    };
    match result {
        Ok(()) => OK,
        Err(e) => {
            crate::log!("nanoclaw bundle: {e}");
            FAILED
        }
    }
}

fn sign(file: &str, key: &str, out: Option<&str>) -> Result<(), BundleError> {
    let invalid = |what: &str| {
        let what = what.to_owned();
        move |reason: String| BundleError::Invalid { what, reason }
    };
    let pem = crate::sigstore::read_capped(Path::new(key), crate::sigstore::MAX_KEY, "key")
        .map_err(invalid(key))?;
    let k = crate::sigstore::SigningKey::from_pkcs8_pem(&pem).map_err(invalid(key))?;
    let json = crate::sigstore::sign(&k, Path::new(file)).map_err(invalid(file))?;
    let out = out.map_or_else(|| format!("{file}.sigstore.json"), str::to_owned);
    crate::agents::persist::write_file_atomic(Path::new(&out), json.as_bytes(), true).map_err(
        |e| BundleError::Io {
            path: PathBuf::from(&out),
            source: e,
        },
    )?;
    println!("{out}");
    Ok(())
}

/// `bundle verify`, the Sigstore conformance CLI protocol: exit 0 only when verified; else
/// one line on stderr and exit 1 (2 for usage errors). Never touches the network.
fn verify(args: &[&str]) -> u8 {
    use crate::sigstore::{self as sg, Signer, Target};
    let (mut bundle, mut key, mut ident, mut issuer, mut root, mut target) =
        (None, None, None, None, None, None);
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        let mut val = || it.next().copied();
        let slot = match a {
            "--bundle" => &mut bundle,
            "--key" => &mut key,
            "--certificate-identity" => &mut ident,
            "--certificate-oidc-issuer" => &mut issuer,
            "--trusted-root" => &mut root,
            t if !t.starts_with("--") && target.is_none() => {
                target = Some(t);
                continue;
            }
            _ => {
                crate::log!("nanoclaw bundle verify: unexpected argument {a}\n{USAGE}");
                return USAGE_ERR;
            }
        };
        match val() {
            Some(v) => *slot = Some(v),
            None => {
                crate::log!("nanoclaw bundle verify: {a} needs a value");
                return USAGE_ERR;
            }
        }
    }
    let (Some(bundle), Some(target)) = (bundle, target) else {
        crate::log!("nanoclaw bundle verify: --bundle and the artifact are required\n{USAGE}");
        return USAGE_ERR;
    };
    let run = || -> Result<sg::Verified, String> {
        let signer = match (key, ident, issuer) {
            (Some(k), None, None) => Signer::Key(sg::parse_key(&sg::read_capped(
                Path::new(k),
                sg::MAX_KEY,
                "key",
            )?)?),
            (None, Some(i), Some(u)) => Signer::Identity {
                identity: i.to_owned(),
                issuer: u.to_owned(),
            },
            _ => {
                return Err(
                    "give --key, or --certificate-identity and --certificate-oidc-issuer".into(),
                );
            }
        };
        let json = sg::read_capped(Path::new(bundle), sg::MAX_BUNDLE_JSON, "bundle")?;
        let root = root
            .map(|r| sg::read_capped(Path::new(r), sg::MAX_TRUSTED_ROOT, "trusted root"))
            .transpose()?;
        let t = match target.strip_prefix("sha256:") {
            Some(h) => Target::Digest(parse_sha256(h)?),
            None => Target::File(Path::new(target)),
        };
        sg::verify(&json, root.as_deref(), &signer, t)
    };
    match run() {
        Ok(v) => {
            println!("verified: {v}");
            OK
        }
        Err(e) => {
            crate::log!("nanoclaw bundle verify: {}", e.replace('\n', " "));
            FAILED
        }
    }
}

fn parse_sha256(h: &str) -> Result<[u8; 32], String> {
    super::unhex32(h).ok_or_else(|| format!("sha256:{h} is not 64 hex digits"))
}

/// `bundle pack DIR -o FILE [--gzip] [--requests-from PATH]...`
fn pack_cmd(args: &[&str]) -> u8 {
    let (mut dir, mut out, mut gzip, mut from) = (None, None, false, Vec::new());
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        match a {
            "--gzip" => gzip = true,
            "-o" | "--requests-from" => {
                let Some(v) = it.next() else {
                    crate::log!("nanoclaw bundle pack: {a} needs a value\n{USAGE}");
                    return USAGE_ERR;
                };
                match a {
                    "-o" => out = Some(*v),
                    _ => from.push(PathBuf::from(v)),
                }
            }
            d if !d.starts_with('-') && dir.is_none() => dir = Some(d),
            _ => {
                crate::log!("nanoclaw bundle pack: unexpected argument {a}\n{USAGE}");
                return USAGE_ERR;
            }
        }
    }
    let (Some(dir), Some(out)) = (dir, out) else {
        crate::log!("nanoclaw bundle pack: DIR and -o FILE are required\n{USAGE}");
        return USAGE_ERR;
    };
    match pack(dir, out, gzip, &from) {
        Ok(()) => OK,
        Err(e) => {
            crate::log!("nanoclaw bundle: {e}");
            FAILED
        }
    }
}

fn pack(dir: &str, out: &str, gzip: bool, from: &[PathBuf]) -> Result<(), BundleError> {
    let p = super::pack::pack_with(Path::new(dir), Path::new(out), gzip, from)?;
    if !p.derived.is_empty() {
        println!("requests derived from the agent's declarations:");
        for d in &p.derived {
            println!("  {d}");
        }
    }
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
    let stream = unpack::open_archive(path)?;
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
            let invalid = |reason| BundleError::Invalid {
                what: "manifest.json".into(),
                reason,
            };
            manifest = Some(
                match super::Contents::parse(&buf, Path::new("manifest.json")) {
                    Ok(super::Contents::Agent(m)) => json!({
                        "name": m.name, "version": m.version, "mode": m.mode, "exec": m.exec,
                        "memory": m.requests.memory.to_string(), "network": m.requests.network,
                        "runtime": m.runtime,
                    }),
                    Ok(super::Contents::Runtime(l)) => json!({
                        "name": l.name, "version": l.version, "mode": "runtime layer",
                        "exec": l.description,
                    }),
                    Err(e) => return Err(invalid(e)),
                },
            );
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
            Some(m) if m["mode"] == "runtime layer" => println!(
                "  runtime layer {} {}: {}",
                m["name"].as_str().unwrap_or("?"),
                m["version"].as_str().unwrap_or("?"),
                m["exec"].as_str().unwrap_or("")
            ),
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
    let stream = unpack::open_archive(path)?;
    let u = unpack::unpack(stream, Path::new(dir), unpack::Limits::default())?;
    println!(
        "{dir}: {} entries, {} bytes of data",
        u.entries, u.data_bytes
    );
    Ok(())
}
