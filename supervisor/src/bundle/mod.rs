//! Agent bundles as single files: `NAME-VERSION.nclaw`, a ustar archive (optionally gzip'd)
//! of `manifest.json` and `rootfs/`, with a detached Sigstore bundle
//! `NAME-VERSION.nclaw.sigstore.json` over the archive's SHA-256 (docs/FORMATS.md).
//!
//! [`pack`] writes reproducible archives, [`unpack`] unpacks untrusted ones safely, [`cli`] is
//! `nanoclaw bundle …`.

pub mod cli;
pub mod derive;
pub mod init;
pub mod pack;
pub mod tar;
pub mod unpack;

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("malformed archive: {0}")]
    Archive(String),
    #[error(
        "the bundle does not fit: {needed} bytes of data, {free} bytes free, {reserve} must stay free"
    )]
    NoSpace {
        needed: u64,
        free: u64,
        reserve: u64,
    },
}

/// What a bundle archive holds: an agent, or a runtime layer for agents to share.
// One lives briefly per install or pack; boxing the manifest would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Contents {
    Agent(crate::config::manifest::Manifest),
    Runtime(crate::config::layer::Layer),
}

impl Contents {
    pub fn name(&self) -> &str {
        match self {
            Self::Agent(m) => &m.name,
            Self::Runtime(l) => &l.name,
        }
    }

    pub fn version(&self) -> &str {
        match self {
            Self::Agent(m) => &m.version,
            Self::Runtime(l) => &l.version,
        }
    }

    /// Parses a `manifest.json`: a layer when it has a `kind`, else an agent's manifest.
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Self, String> {
        if crate::config::layer::Layer::is_layer(bytes) {
            crate::config::layer::Layer::parse(bytes, origin)
                .map(Self::Runtime)
                .map_err(|e| e.to_string())
        } else {
            crate::config::manifest::Manifest::parse(bytes, origin)
                .map(Self::Agent)
                .map_err(|e| e.to_string())
        }
    }
}

/// The agent manifest inside an archive, parsed and checked (the archive is not verified).
pub fn manifest_of(file: &Path) -> Result<crate::config::manifest::Manifest, String> {
    match contents_of(file)? {
        Contents::Agent(m) => Ok(m),
        Contents::Runtime(l) => Err(format!(
            "{} is runtime layer {}, not an agent",
            file.display(),
            l.name
        )),
    }
}

/// The manifest inside an archive (agent or layer), read without unpacking anything.
pub fn contents_of(file: &Path) -> Result<Contents, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let stream = unpack::maybe_gunzip(f).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut r = tar::Reader::new(stream);
    while let Some(h) = r
        .next_header()
        .map_err(|e| format!("malformed archive: {e}"))?
    {
        if h.path == "manifest.json" && h.kind == tar::Kind::File {
            if h.size > crate::config::manifest::MAX_MANIFEST_BYTES {
                return Err("manifest.json is larger than 64 KiB".into());
            }
            let mut buf = Vec::new();
            r.copy_data(h.size, &mut buf)
                .map_err(|e| format!("malformed archive: {e}"))?;
            return Contents::parse(&buf, Path::new("manifest.json"));
        }
    }
    Err("the archive has no manifest.json".into())
}

/// SHA-256 and length of a file, read in 64 KiB chunks.
pub fn sha256_file(path: &Path) -> Result<([u8; 32], u64), BundleError> {
    let mut f = std::fs::File::open(path).map_err(|e| BundleError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| BundleError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finalize().into(), n))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits back into a SHA-256 digest.
pub fn unhex32(h: &str) -> Option<[u8; 32]> {
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
