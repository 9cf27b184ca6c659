//! `nanoclaw bundle pack DIR -o FILE`: a reproducible archive of a bundle directory — the same
//! tree gives the same bytes on any machine: `manifest.json` first, then `rootfs/` depth-first
//! in byte order, mtime 0, owner 0:0 without names, modes normalized to 0755/0644 (0777 for
//! symlinks), and for `--gzip` a gzip header without name or time.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::BundleError;
use super::tar::{self, Header, Kind};

/// What was packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub entries: u64,
    pub data_bytes: u64,
    pub archive_bytes: u64,
    pub sha256: [u8; 32],
    /// Requests derived from declarations (`bundle::derive`), with where each came from.
    pub derived: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |e| BundleError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// One entry to write: its archive path, header kind/mode/link, and the source file (or,
/// for a derived manifest, its bytes).
struct Item {
    header: Header,
    source: Option<PathBuf>,
    bytes: Option<Vec<u8>>,
}

/// The manifest to pack: the file as it is, or with `requests` derived from declarations
/// when it has none (agents only; a runtime layer requests nothing).
fn manifest_bytes(
    dir: &Path,
    requests_from: &[PathBuf],
) -> Result<(Vec<u8>, Vec<String>), BundleError> {
    let path = dir.join("manifest.json");
    let invalid = |reason: String| BundleError::Invalid {
        what: "manifest.json".into(),
        reason,
    };
    let bytes = crate::config::read_capped(&path, crate::config::manifest::MAX_MANIFEST_BYTES)
        .map_err(|e| invalid(e.to_string()))?;
    let mut derived = Vec::new();
    let mut out = bytes.clone();
    if !crate::config::layer::Layer::is_layer(&bytes)
        && let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(&bytes)
        && !m.contains_key("requests")
    {
        let roots = match requests_from {
            [] => vec![dir.join("rootfs")],
            r => r.to_vec(),
        };
        let (req, notes) = super::derive::requests(&roots).map_err(invalid)?;
        m.insert("requests".into(), serde_json::Value::Object(req));
        out = serde_json::to_vec_pretty(&m).map_err(|e| invalid(e.to_string()))?;
        out.push(b'\n');
        derived = notes;
    }
    super::Contents::parse(&out, &path).map_err(invalid)?;
    Ok((out, derived))
}

/// The entries of `dir` in archive order, checked.
fn collect(dir: &Path, requests_from: &[PathBuf]) -> Result<(Vec<Item>, Vec<String>), BundleError> {
    let (manifest, derived) = manifest_bytes(dir, requests_from)?;
    let rootfs = dir.join("rootfs");
    let meta = std::fs::symlink_metadata(&rootfs).map_err(io_err(&rootfs))?;
    if !meta.is_dir() {
        return Err(BundleError::Invalid {
            what: "rootfs".into(),
            reason: "must be a directory".into(),
        });
    }
    let mut items = vec![Item {
        header: Header {
            path: "manifest.json".into(),
            kind: Kind::File,
            mode: 0o644,
            size: manifest.len() as u64,
            link: String::new(),
        },
        source: None,
        bytes: Some(manifest),
    }];
    walk(&rootfs, "rootfs", &mut items)?;
    Ok((items, derived))
}

fn walk(path: &Path, name: &str, items: &mut Vec<Item>) -> Result<(), BundleError> {
    let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    let ft = meta.file_type();
    let mode = meta.permissions().mode();
    if mode & 0o7000 != 0 {
        return Err(BundleError::Invalid {
            what: name.into(),
            reason: format!("mode {:o} has setuid, setgid or sticky bits", mode & 0o7777),
        });
    }
    let mut header = Header {
        path: name.to_owned(),
        kind: Kind::File,
        mode: if mode & 0o111 != 0 { 0o755 } else { 0o644 },
        size: 0,
        link: String::new(),
    };
    if ft.is_dir() {
        header.kind = Kind::Dir;
        header.mode = 0o755;
        items.push(Item {
            header,
            source: None,
            bytes: None,
        });
        let mut children: Vec<(Vec<u8>, PathBuf)> = std::fs::read_dir(path)
            .map_err(io_err(path))?
            .map(|e| {
                e.map(|e| {
                    (
                        std::os::unix::ffi::OsStrExt::as_bytes(e.file_name().as_os_str()).to_vec(),
                        e.path(),
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map_err(io_err(path))?;
        children.sort();
        for (child, p) in children {
            let child = String::from_utf8(child).map_err(|_| BundleError::Invalid {
                what: format!("{name}/…"),
                reason: "a file name is not UTF-8".into(),
            })?;
            walk(&p, &format!("{name}/{child}"), items)?;
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(io_err(path))?;
        header.kind = Kind::Symlink;
        header.mode = 0o777;
        header.link = target
            .to_str()
            .ok_or_else(|| BundleError::Invalid {
                what: name.into(),
                reason: "symlink target is not UTF-8".into(),
            })?
            .to_owned();
        items.push(Item {
            header,
            source: None,
            bytes: None,
        });
    } else if ft.is_file() {
        header.size = meta.size();
        items.push(Item {
            header,
            source: Some(path.to_path_buf()),
            bytes: None,
        });
    } else {
        let what = if ft.is_block_device() || ft.is_char_device() {
            "a device node"
        } else if ft.is_fifo() {
            "a FIFO"
        } else {
            "a socket"
        };
        return Err(BundleError::Invalid {
            what: name.into(),
            reason: format!("is {what}; bundles hold files, directories and symlinks only"),
        });
    }
    Ok(())
}

/// Packs `dir` into `out` (written to a temporary name, then renamed).
pub fn pack(dir: &Path, out: &Path, gzip: bool) -> Result<Packed, BundleError> {
    pack_with(dir, out, gzip, &[])
}

/// [`pack`], deriving missing `requests` from declarations in `requests_from` (default: the
/// bundle's `rootfs/`).
pub fn pack_with(
    dir: &Path,
    out: &Path,
    gzip: bool,
    requests_from: &[PathBuf],
) -> Result<Packed, BundleError> {
    let (items, derived) = collect(dir, requests_from)?;
    let tmp = out.with_extension("nclaw.partial");
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let write_items = |w: &mut dyn Write| -> Result<u64, BundleError> {
        let mut data = 0u64;
        for item in &items {
            let block = tar::encode(&item.header).map_err(|reason| BundleError::Invalid {
                what: item.header.path.clone(),
                reason,
            })?;
            w.write_all(&block).map_err(io_err(&tmp))?;
            if let Some(b) = &item.bytes {
                w.write_all(b).map_err(io_err(&tmp))?;
                let pad = (tar::padded(b.len() as u64) - b.len() as u64) as usize;
                w.write_all(&vec![0u8; pad]).map_err(io_err(&tmp))?;
                data += b.len() as u64;
            }
            if let Some(src) = &item.source {
                let mut f = File::open(src).map_err(io_err(src))?;
                let n = io::copy(&mut f, w).map_err(io_err(src))?;
                if n != item.header.size {
                    return Err(BundleError::Invalid {
                        what: item.header.path.clone(),
                        reason: "changed size while being packed".into(),
                    });
                }
                let pad = (tar::padded(n) - n) as usize;
                w.write_all(&vec![0u8; pad]).map_err(io_err(&tmp))?;
                data += n;
            }
        }
        w.write_all(&[0u8; 2 * tar::BLOCK]).map_err(io_err(&tmp))?;
        Ok(data)
    };
    let result = (|| {
        let data = if gzip {
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(BufWriter::new(&file), flate2::Compression::best());
            let data = write_items(&mut gz)?;
            gz.finish()
                .and_then(|mut w| w.flush())
                .map_err(io_err(&tmp))?;
            data
        } else {
            let mut w = BufWriter::new(&file);
            let data = write_items(&mut w)?;
            w.flush().map_err(io_err(&tmp))?;
            data
        };
        file.sync_all().map_err(io_err(&tmp))?;
        Ok(data)
    })();
    let data = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    let (sha256, archive_bytes) = super::sha256_file(out)?;
    Ok(Packed {
        entries: items.len() as u64,
        data_bytes: data,
        archive_bytes,
        sha256,
        derived,
    })
}
