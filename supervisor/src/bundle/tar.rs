//! The subset of POSIX ustar that bundles use, read and written here rather than by a general
//! tar library: every field that reaches the filesystem is validated by the caller
//! ([`super::unpack`]), and nothing here touches the filesystem.
//!
//! Supported: regular files, directories, symlinks and hard links, names up to 255 bytes
//! (ustar `prefix` + `name`), GNU tar's `ustar  ` magic on input. Refused with a reason: pax
//! and GNU long-name extensions, device nodes, FIFOs and anything else.

use std::io::{self, Read, Write};

pub const BLOCK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
}

/// One parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub path: String,
    pub kind: Kind,
    /// Permission and special bits (`0o7777` at most).
    pub mode: u32,
    pub size: u64,
    /// Symlink or hard-link target.
    pub link: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TarError {
    #[error("entry {index}: {reason}")]
    Bad { index: u64, reason: String },
    #[error("the archive ends inside entry {index} (truncated)")]
    Truncated { index: u64 },
    #[error("reading the archive: {0}")]
    Io(String),
}

fn field_str(b: &[u8]) -> Result<&str, String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).map_err(|_| "a name is not UTF-8".to_owned())
}

fn octal(b: &[u8], what: &str) -> Result<u64, String> {
    // Base-256 (GNU binary) sizes have the high bit set: not produced for bundles.
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        return Err(format!("{what} uses the GNU base-256 encoding"));
    }
    let s = field_str(b).map_err(|_| format!("{what} is not octal"))?;
    let s = s.trim_matches([' ', '\0']);
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| format!("{what} `{}` is not octal", s.escape_default()))
}

/// Parses one 512-byte header; `Ok(None)` for an all-zero block (end of archive).
pub fn parse(block: &[u8; BLOCK], index: u64) -> Result<Option<Header>, TarError> {
    if block.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let bad = |reason: String| TarError::Bad { index, reason };
    let stored = octal(&block[148..156], "the checksum").map_err(bad)?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    if stored != sum {
        return Err(bad(format!(
            "header checksum {stored} does not match {sum} (corrupt or not a tar archive)"
        )));
    }
    let magic = &block[257..265];
    if magic != b"ustar\x0000" && magic != b"ustar  \0" {
        return Err(bad(
            "not a ustar header (pre-POSIX tar is not supported)".into()
        ));
    }
    let name = field_str(&block[0..100]).map_err(bad)?;
    let prefix = field_str(&block[345..500]).map_err(bad)?;
    let path = if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    };
    let kind = match block[156] {
        b'0' | 0 | b'7' => Kind::File,
        b'5' => Kind::Dir,
        b'2' => Kind::Symlink,
        b'1' => Kind::HardLink,
        b'x' | b'g' => {
            return Err(bad(format!(
                "`{path}`: pax extended headers are not supported"
            )));
        }
        b'L' | b'K' => return Err(bad(format!("`{path}`: GNU long names are not supported"))),
        b'3' | b'4' => {
            return Err(bad(format!(
                "`{path}`: device nodes are not allowed in a bundle"
            )));
        }
        b'6' => return Err(bad(format!("`{path}`: FIFOs are not allowed in a bundle"))),
        t => {
            return Err(bad(format!(
                "`{path}`: entry type {:?} is not supported",
                char::from(t)
            )));
        }
    };
    let mode = octal(&block[100..108], "the mode").map_err(bad)?;
    if mode > 0o7777 {
        return Err(bad(format!(
            "`{path}`: mode {mode:o} has bits beyond 07777"
        )));
    }
    let size = octal(&block[124..136], "the size").map_err(bad)?;
    let link = field_str(&block[157..257]).map_err(bad)?.to_owned();
    let size = match kind {
        Kind::File => size,
        // Only regular files carry data.
        _ if size != 0 => {
            return Err(bad(format!(
                "`{path}`: a {kind:?} with {size} bytes of data"
            )));
        }
        _ => 0,
    };
    Ok(Some(Header {
        path,
        kind,
        mode: mode as u32,
        size,
        link,
    }))
}

/// Reads headers and data in order, never more than asked.
pub struct Reader<R> {
    inner: R,
    index: u64,
    /// Data bytes (plus padding) of the current entry not yet consumed.
    pending: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            index: 0,
            pending: 0,
            done: false,
        }
    }

    /// The next entry's header, `None` at the end of the archive. Skips what the caller did
    /// not read of the previous entry's data.
    pub fn next_header(&mut self) -> Result<Option<Header>, TarError> {
        if self.done {
            return Ok(None);
        }
        if self.pending > 0 {
            let n = self.pending;
            let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())
                .map_err(|e| TarError::Io(e.to_string()))?;
            if copied != n {
                return Err(TarError::Truncated { index: self.index });
            }
            self.pending = 0;
        }
        let mut block = [0u8; BLOCK];
        let got =
            read_full(&mut self.inner, &mut block).map_err(|e| TarError::Io(e.to_string()))?;
        if got == 0 {
            // No end-of-archive blocks at all: accepted, like GNU tar does.
            self.done = true;
            return Ok(None);
        }
        if got < BLOCK {
            return Err(TarError::Truncated { index: self.index });
        }
        self.index += 1;
        match parse(&block, self.index)? {
            None => {
                self.done = true;
                Ok(None)
            }
            Some(h) => {
                self.pending = padded(h.size);
                Ok(Some(h))
            }
        }
    }

    /// Copies the current entry's data (exactly `size` bytes) into `out`.
    pub fn copy_data(&mut self, size: u64, out: &mut impl Write) -> Result<(), TarError> {
        let copied =
            io::copy(&mut (&mut self.inner).take(size), out).map_err(|e| TarError::Bad {
                index: self.index,
                reason: format!("writing its data: {e}"),
            })?;
        if copied != size {
            return Err(TarError::Truncated { index: self.index });
        }
        self.pending -= size.min(self.pending);
        Ok(())
    }

    pub fn index(&self) -> u64 {
        self.index
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `size` rounded up to whole blocks.
pub fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// A header block for `h`: mtime 0, owner 0:0, no user or group names (reproducible).
pub fn encode(h: &Header) -> Result<[u8; BLOCK], String> {
    encode_at(h, 0)
}

/// [`encode`] with a modification time (Unix seconds; a support bundle shows when it was
/// made).
pub fn encode_at(h: &Header, mtime: u64) -> Result<[u8; BLOCK], String> {
    let mut b = [0u8; BLOCK];
    let (prefix, name) = split_path(&h.path)?;
    b[0..name.len()].copy_from_slice(name.as_bytes());
    b[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    put_octal(&mut b[100..108], u64::from(h.mode));
    put_octal(&mut b[108..116], 0);
    put_octal(&mut b[116..124], 0);
    put_octal(&mut b[124..136], h.size);
    if mtime >= 1 << 33 {
        return Err(format!("`{}`: mtime {mtime} does not fit ustar", h.path));
    }
    put_octal(&mut b[136..148], mtime);
    b[156] = match h.kind {
        Kind::File => b'0',
        Kind::Dir => b'5',
        Kind::Symlink => b'2',
        Kind::HardLink => b'1',
    };
    if h.link.len() > 100 {
        return Err(format!("`{}`: link target longer than 100 bytes", h.path));
    }
    b[157..157 + h.link.len()].copy_from_slice(h.link.as_bytes());
    b[257..265].copy_from_slice(b"ustar\x0000");
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    put_octal(&mut b[148..155], sum);
    b[155] = b' ';
    Ok(b)
}

/// Writes `value` as zero-padded octal with a terminating NUL, filling `field`.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

/// Splits a path into ustar `prefix` (≤ 155) and `name` (≤ 100) at a `/`.
fn split_path(path: &str) -> Result<(&str, &str), String> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    if path.len() > 256 {
        return Err(format!("`{path}`: longer than 256 bytes"));
    }
    for (i, _) in path.match_indices('/') {
        let (p, n) = (&path[..i], &path[i + 1..]);
        if p.len() <= 155 && n.len() <= 100 && !n.is_empty() {
            return Ok((p, n));
        }
    }
    Err(format!(
        "`{path}`: cannot be split into a ustar prefix and name"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(path: &str, kind: Kind, size: u64) -> Header {
        Header {
            path: path.into(),
            kind,
            mode: 0o644,
            size,
            link: String::new(),
        }
    }

    #[test]
    fn headers_round_trip() {
        for h in [
            hdr("manifest.json", Kind::File, 123),
            hdr("rootfs/bin", Kind::Dir, 0),
            Header {
                link: "demo-agent".into(),
                ..hdr("rootfs/bin/sh", Kind::Symlink, 0)
            },
            hdr(
                &format!("rootfs/{}/{}", "d".repeat(120), "f".repeat(90)),
                Kind::File,
                1,
            ),
        ] {
            let b = encode(&h).unwrap();
            assert_eq!(parse(&b, 1).unwrap().unwrap(), h);
        }
        assert!(encode(&hdr(&"x".repeat(300), Kind::File, 0)).is_err());
    }

    #[test]
    fn bad_headers_are_named() {
        let mut b = encode(&hdr("rootfs/x", Kind::File, 5)).unwrap();
        b[0] = b'y';
        let e = parse(&b, 3).unwrap_err().to_string();
        assert!(e.contains("entry 3") && e.contains("checksum"), "{e}");
        for (t, want) in [
            (b'3', "device nodes"),
            (b'6', "FIFOs"),
            (b'x', "pax"),
            (b'L', "GNU long names"),
        ] {
            let mut h = encode(&hdr("rootfs/x", Kind::File, 0)).unwrap();
            h[156] = t;
            h[148..156].fill(b' ');
            let sum: u64 = h.iter().map(|&x| u64::from(x)).sum();
            put_octal(&mut h[148..155], sum);
            let e = parse(&h, 1).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(parse(&[0u8; BLOCK], 1).unwrap(), None);
    }

    #[test]
    fn reader_reads_data_and_detects_truncation() {
        let mut a = Vec::new();
        a.extend_from_slice(&encode(&hdr("a", Kind::File, 3)).unwrap());
        a.extend_from_slice(b"abc");
        a.resize(a.len() + BLOCK - 3, 0);
        a.extend_from_slice(&encode(&hdr("b", Kind::File, 0)).unwrap());
        a.extend_from_slice(&[0u8; 2 * BLOCK]);
        let mut r = Reader::new(&a[..]);
        let h = r.next_header().unwrap().unwrap();
        let mut out = Vec::new();
        r.copy_data(h.size, &mut out).unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(r.next_header().unwrap().unwrap().path, "b");
        assert_eq!(r.next_header().unwrap(), None);
        // Cut inside the data of "a".
        let mut r = Reader::new(&a[..BLOCK + 2]);
        let h = r.next_header().unwrap().unwrap();
        assert!(matches!(
            r.copy_data(h.size, &mut Vec::new()),
            Err(TarError::Truncated { .. })
        ));
        // Cut inside a header.
        let mut r = Reader::new(&a[..100]);
        assert!(matches!(r.next_header(), Err(TarError::Truncated { .. })));
    }
}
