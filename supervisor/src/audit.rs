//! The device's append-only audit log.
//!
//! Built to survive power loss and `kill -9` on small flash storage, with bounded size:
//!
//! - Records are small, self-checking frames `[u32 LE len][u32 LE crc32(payload)][postcard]`,
//!   only ever appended. A torn or garbled tail is detected on [`AuditLog::open`] and cut at the
//!   last good frame; nothing before it is rewritten, so a crash can lose at most the unsynced tail.
//! - Security decisions are appended with `durable = true` (fdatasync before returning); chatty
//!   events are not, so they cost a `write` and no flash wear.
//! - The log is a series of segment files named after their first seq. Size is bounded by deleting
//!   whole old segments (no compaction), and the seq survives an empty or cut newest segment
//!   because its name says where it starts.
//! - [`AuditLog::query`] streams the segments and keeps only the records it returns, so memory is
//!   bounded by `last_n`, not by the log size. Older segments are trusted but still checked: a bad
//!   frame in them is skipped, never a panic.
//!
//! The module does no logging and reads no clock: the caller passes the time and audits
//! [`AuditLog::recovered_bytes`] itself.

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nanoclaw_proto::audit::{AuditKind, AuditRecord};

/// Largest accepted payload, in bytes. A frame header claiming more is corruption. A record
/// encodes to at most ~350 bytes (agent and reason are capped in `nanoclaw_proto`).
pub const MAX_PAYLOAD: usize = 1024;
/// Frame header: payload length and CRC-32, both u32 little-endian.
const HEADER_LEN: usize = 8;
const SEGMENT_PREFIX: &str = "audit-";
const SEGMENT_SUFFIX: &str = ".log";
/// Digits in a segment name's seq (enough for `u64::MAX`, and sorts lexically).
const SEQ_DIGITS: usize = 20;
/// Seq of the first record of a brand-new log.
const FIRST_SEQ: u64 = 1;

/// A record as stored, for shipping: its seq and its bytes (audit: postcard, outbox: JSON).
pub type Stored = (u64, Vec<u8>);

/// How much disk the log may use: at most `max_segments` files of about `segment_bytes` each
/// (a segment holds at least one record, so it may exceed `segment_bytes` by one frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditLimits {
    pub segment_bytes: u64,
    pub max_segments: usize,
}

impl Default for AuditLimits {
    fn default() -> Self {
        Self {
            segment_bytes: 256 * 1024,
            max_segments: 8,
        }
    }
}

/// A failing audit log operation, with the file it was about.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "cannot create audit directory {path}: {source} (check that the state dir is writable)"
    )]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot list audit directory {path}: {source}")]
    ListDir { path: PathBuf, source: io::Error },
    #[error("cannot open audit segment {path}: {source}")]
    OpenSegment { path: PathBuf, source: io::Error },
    #[error("cannot create audit segment {path}: {source} (is the disk full or read-only?)")]
    CreateSegment { path: PathBuf, source: io::Error },
    #[error("cannot read audit segment {path}: {source}")]
    ReadSegment { path: PathBuf, source: io::Error },
    #[error("cannot truncate audit segment {path} to {offset} bytes: {source}")]
    Truncate {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("cannot write audit record {seq} to {path}: {source} (is the disk full?)")]
    Write {
        path: PathBuf,
        seq: u64,
        source: io::Error,
    },
    #[error("cannot sync audit segment {path} to disk: {source}; recent records may be lost")]
    SyncSegment { path: PathBuf, source: io::Error },
    #[error("cannot sync audit directory {path} to disk: {source}")]
    SyncDir { path: PathBuf, source: io::Error },
    #[error("cannot remove old audit segment {path}: {source}")]
    RemoveSegment { path: PathBuf, source: io::Error },
    #[error("cannot encode audit record {seq}: {source}")]
    Encode { seq: u64, source: postcard::Error },
    #[error("audit record {seq} encodes to {len} bytes, over the {MAX_PAYLOAD}-byte frame cap")]
    TooLarge { seq: u64, len: usize },
}

/// The append-only audit log in one directory. Single writer: the daemon owns it.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    limits: AuditLimits,
    /// First seq of every segment on disk, oldest first; the last one is being written.
    segments: VecDeque<u64>,
    /// The newest segment, opened for append.
    file: File,
    path: PathBuf,
    /// Bytes of whole frames in `file`.
    len: u64,
    next_seq: u64,
    /// Bytes cut from the newest segment's tail by `open`.
    recovered: u64,
    /// A failed write could not be rolled back: `file` may end in a partial frame past `len`.
    tail_dirty: bool,
    /// A new segment was created but the directory entry may not be on disk yet.
    dir_dirty: bool,
}

impl AuditLog {
    /// Opens (creating with mode 0700 if needed) the log in `dir`, cuts a torn tail off the newest
    /// segment and removes segments beyond `limits.max_segments`.
    pub fn open(dir: &Path, limits: AuditLimits) -> Result<Self, AuditError> {
        let limits = AuditLimits {
            segment_bytes: limits.segment_bytes,
            max_segments: limits.max_segments.max(1),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| AuditError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        let mut segments = list_segments(dir)?;
        let (first, file, len, next_seq, recovered) = match segments.back() {
            Some(&first) => {
                let path = segment_path(dir, first);
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| AuditError::OpenSegment {
                        path: path.clone(),
                        source,
                    })?;
                let (len, next_seq, recovered) = recover(dir, &path, &file, first)?;
                (first, file, len, next_seq, recovered)
            }
            None => {
                let file = create_segment(dir, FIRST_SEQ)?;
                sync_dir(dir)?;
                segments.push_back(FIRST_SEQ);
                (FIRST_SEQ, file, 0, FIRST_SEQ, 0)
            }
        };
        let mut log = Self {
            dir: dir.to_path_buf(),
            limits,
            segments,
            file,
            path: segment_path(dir, first),
            len,
            next_seq,
            recovered,
            tail_dirty: false,
            dir_dirty: false,
        };
        log.prune()?;
        Ok(log)
    }

    /// Appends one record, assigns the next seq, returns it. `durable` => fdatasync before
    /// returning (used for every security decision); otherwise the write is done but not synced.
    ///
    /// `agent` and `reason` are cut at a character boundary if longer than the record allows.
    /// On a sync error the record was written (its seq is used) but may not be on disk.
    pub fn append(
        &mut self,
        time_ms: u64,
        agent: &str,
        kind: AuditKind,
        reason: &str,
        durable: bool,
    ) -> Result<u64, AuditError> {
        let seq = self.next_seq;
        let frame = encode_frame(&AuditRecord::new(seq, time_ms, agent, kind, reason))?;
        let frame_len = frame.len() as u64;
        if self.tail_dirty {
            self.file
                .set_len(self.len)
                .map_err(|source| AuditError::Truncate {
                    path: self.path.clone(),
                    offset: self.len,
                    source,
                })?;
            self.tail_dirty = false;
        }
        if self.len > 0 && self.len.saturating_add(frame_len) > self.limits.segment_bytes {
            self.rotate()?;
        }
        if let Err(source) = self.file.write_all(&frame) {
            // Keep the segment a clean run of frames: a partial frame would hide every later one
            // from recovery. If even that fails, retry before the next write.
            self.tail_dirty = self.file.set_len(self.len).is_err();
            return Err(AuditError::Write {
                path: self.path.clone(),
                seq,
                source,
            });
        }
        self.len += frame_len;
        self.next_seq = seq + 1;
        if durable {
            self.sync()?;
        }
        Ok(seq)
    }

    /// Newest `last_n` records (oldest first), optionally only one agent's, across all segments.
    /// A corrupt frame in an older segment is skipped; a frame whose length is unreadable ends
    /// that segment.
    pub fn query(
        &self,
        agent: Option<&str>,
        last_n: usize,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let mut out: VecDeque<AuditRecord> = VecDeque::new();
        for &first in self.segments.iter().rev() {
            let want = last_n.saturating_sub(out.len());
            if want == 0 {
                break;
            }
            // The newest `want` matches of this segment, oldest first.
            let mut window: VecDeque<AuditRecord> = VecDeque::new();
            self.each_frame(first, |frame, _| {
                if let Frame::Record(record) = frame
                    && agent.is_none_or(|a| record.agent.as_str() == a)
                {
                    if window.len() == want {
                        window.pop_front();
                    }
                    window.push_back(record);
                }
                true
            })?;
            for record in window.into_iter().rev() {
                out.push_front(record);
            }
        }
        Ok(out.into())
    }

    /// Up to `max_bytes` of consecutive records from the first seq `>= first` still on disk,
    /// as their stored postcard bytes (what the fleet sync ships). Stops at a gap (a corrupt
    /// frame), so the run is always consecutive; the caller asks again from after it.
    pub fn since(&self, first: u64, max_bytes: usize) -> Result<Vec<Stored>, AuditError> {
        let mut out: Vec<Stored> = Vec::new();
        let mut used = 0;
        // The newest segment starting at or before `first`, and every one after it.
        let start = self.segments.iter().rposition(|&s| s <= first).unwrap_or(0);
        let mut more = true;
        for &seg in self.segments.iter().skip(start) {
            self.each_frame(seg, |frame, bytes| {
                more = match frame {
                    Frame::Record(r) if r.seq >= first => {
                        used += bytes.len();
                        let gap = out.last().is_some_and(|(s, _)| *s + 1 != r.seq);
                        let full = used > max_bytes && !out.is_empty();
                        if !gap && !full {
                            out.push((r.seq, bytes.to_vec()));
                        }
                        !gap && !full
                    }
                    Frame::Corrupt => out.is_empty(),
                    _ => true,
                };
                more
            })?;
            if !more {
                break;
            }
        }
        Ok(out)
    }

    /// Feeds the frames of segment `seg` (with their payload bytes) to `f` until it returns
    /// false or the segment ends. A segment removed under us (by an operator) has none.
    fn each_frame(
        &self,
        seg: u64,
        mut f: impl FnMut(Frame, &[u8]) -> bool,
    ) -> Result<(), AuditError> {
        let path = segment_path(&self.dir, seg);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(AuditError::OpenSegment { path, source }),
        };
        let mut reader = FrameReader::new(BufReader::new(file));
        loop {
            let frame = reader
                .next_frame()
                .map_err(|source| AuditError::ReadSegment {
                    path: path.clone(),
                    source,
                })?;
            if matches!(frame, Frame::End | Frame::Torn) || !f(frame, &reader.buf) {
                return Ok(());
            }
        }
    }

    /// The oldest seq still on disk (records before it were rotated away).
    pub fn first_seq(&self) -> u64 {
        self.segments.front().copied().unwrap_or(self.next_seq)
    }

    /// The seq the next appended record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes cut from the newest segment's tail by [`AuditLog::open`] (0 after a clean shutdown).
    pub fn recovered_bytes(&self) -> u64 {
        self.recovered
    }

    /// Makes every appended record durable (fdatasync, and the directory after a rotation).
    pub fn sync(&mut self) -> Result<(), AuditError> {
        self.file
            .sync_data()
            .map_err(|source| AuditError::SyncSegment {
                path: self.path.clone(),
                source,
            })?;
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Number of segment files, the newest included.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Syncs the full segment, starts a new one named after the next seq, then removes the oldest.
    fn rotate(&mut self) -> Result<(), AuditError> {
        self.file
            .sync_data()
            .map_err(|source| AuditError::SyncSegment {
                path: self.path.clone(),
                source,
            })?;
        let first = self.next_seq;
        self.file = create_segment(&self.dir, first)?;
        self.path = segment_path(&self.dir, first);
        self.len = 0;
        self.segments.push_back(first);
        // Records may be fdatasync'ed into the new file only once its name is on disk; if this
        // fails, `sync` retries it.
        self.dir_dirty = true;
        sync_dir(&self.dir)?;
        self.dir_dirty = false;
        self.prune()
    }

    /// Removes the oldest segments until at most `max_segments` remain. A removal that does not
    /// reach the disk before a crash is simply redone by the next `open`.
    fn prune(&mut self) -> Result<(), AuditError> {
        while self.segments.len() > self.limits.max_segments {
            let Some(&oldest) = self.segments.front() else {
                break;
            };
            let path = segment_path(&self.dir, oldest);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(AuditError::RemoveSegment { path, source }),
            }
            self.segments.pop_front();
        }
        Ok(())
    }
}

/// Scans the newest segment and cuts it after its last good frame. Returns (length kept,
/// next seq, bytes cut).
fn recover(
    dir: &Path,
    path: &Path,
    file: &File,
    first: u64,
) -> Result<(u64, u64, u64), AuditError> {
    let read_err = |source| AuditError::ReadSegment {
        path: path.to_path_buf(),
        source,
    };
    let file_len = file.metadata().map_err(read_err)?.len();
    let mut reader = FrameReader::new(BufReader::new(file));
    let mut good = 0;
    let mut last_seq = None;
    loop {
        match reader.next_frame().map_err(read_err)? {
            // A checksummed frame with an out-of-order seq was not written by this log as it is.
            Frame::Record(record)
                if record.seq >= first && last_seq.is_none_or(|last| record.seq > last) =>
            {
                last_seq = Some(record.seq);
                good = reader.offset;
            }
            _ => break,
        }
    }
    if good < file_len {
        file.set_len(good).map_err(|source| AuditError::Truncate {
            path: path.to_path_buf(),
            offset: good,
            source,
        })?;
        file.sync_all().map_err(|source| AuditError::SyncSegment {
            path: path.to_path_buf(),
            source,
        })?;
        sync_dir(dir)?;
    }
    let next_seq = last_seq.map_or(first, |last| last + 1);
    Ok((good, next_seq, file_len.saturating_sub(good)))
}

/// Frames one record.
fn encode_frame(record: &AuditRecord) -> Result<Vec<u8>, AuditError> {
    let seq = record.seq;
    let payload =
        postcard::to_stdvec(record).map_err(|source| AuditError::Encode { seq, source })?;
    let len = payload.len();
    let len32 = u32::try_from(len)
        .ok()
        .filter(|&l| l as usize <= MAX_PAYLOAD)
        .ok_or(AuditError::TooLarge { seq, len })?;
    let mut frame = Vec::with_capacity(HEADER_LEN + len);
    frame.extend_from_slice(&len32.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// What one read of a frame found.
#[expect(
    clippy::large_enum_variant,
    reason = "a short-lived return value; boxing would allocate per record"
)]
enum Frame {
    Record(AuditRecord),
    /// End of file exactly at a frame boundary.
    End,
    /// The length was plausible but the CRC or the payload was bad; the reader is past it.
    Corrupt,
    /// Short header, impossible length or short payload: nothing after this can be framed.
    Torn,
}

/// Reads frames one by one; its buffer never exceeds [`MAX_PAYLOAD`].
struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Offset just past the last whole frame read (good or corrupt).
    offset: u64,
}

impl<R: Read> FrameReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            offset: 0,
        }
    }

    fn next_frame(&mut self) -> io::Result<Frame> {
        let mut header = [0u8; HEADER_LEN];
        match read_full(&mut self.inner, &mut header)? {
            0 => return Ok(Frame::End),
            HEADER_LEN => {}
            _ => return Ok(Frame::Torn),
        }
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        // Zero is impossible too: every record encodes to several bytes (and it is what a
        // zero-filled tail after power loss looks like).
        if len == 0 || len > MAX_PAYLOAD {
            return Ok(Frame::Torn);
        }
        self.buf.resize(len, 0);
        if read_full(&mut self.inner, &mut self.buf)? < len {
            return Ok(Frame::Torn);
        }
        self.offset += (HEADER_LEN + len) as u64;
        if crc32fast::hash(&self.buf) != crc {
            return Ok(Frame::Corrupt);
        }
        match postcard::take_from_bytes::<AuditRecord>(&self.buf) {
            Ok((record, [])) => Ok(Frame::Record(record)),
            _ => Ok(Frame::Corrupt),
        }
    }
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!(
        "{SEGMENT_PREFIX}{first:0SEQ_DIGITS$}{SEGMENT_SUFFIX}"
    ))
}

/// The first seq named by a segment file name, or `None` for any other file.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// First seqs of the segments in `dir`, oldest first. Other files are ignored.
fn list_segments(dir: &Path) -> Result<VecDeque<u64>, AuditError> {
    let list_err = |source| AuditError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts.into())
}

fn create_segment(dir: &Path, first: u64) -> Result<File, AuditError> {
    let path = segment_path(dir, first);
    OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| AuditError::CreateSegment { path, source })
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| AuditError::SyncDir {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: AuditLimits = AuditLimits {
        segment_bytes: 200,
        max_segments: 3,
    };

    fn append_n(log: &mut AuditLog, n: u64) {
        for i in 0..n {
            let agent = if i % 2 == 0 { "even" } else { "odd" };
            log.append(
                1000 + i,
                agent,
                AuditKind::Start,
                &format!("r{i}"),
                i % 3 == 0,
            )
            .unwrap();
        }
    }

    #[test]
    fn since_returns_consecutive_stored_bytes_for_the_fleet() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), SMALL).unwrap();
        append_n(&mut log, 40);
        // Rotation dropped the oldest: asking from 1 starts at the oldest still there.
        let first = log.first_seq();
        assert!(first > 1);
        let all = log.since(1, usize::MAX).unwrap();
        assert_eq!(all[0].0, first);
        assert_eq!(all.last().unwrap().0, 40);
        assert!(all.windows(2).all(|w| w[0].0 + 1 == w[1].0));
        let rec: AuditRecord = postcard::from_bytes(&all[1].1).unwrap();
        assert_eq!(rec.seq, first + 1);
        // A byte cap bounds the batch but always returns at least one record.
        let few = log.since(35, 1).unwrap();
        assert_eq!(few.iter().map(|r| r.0).collect::<Vec<_>>(), [35]);
        assert!(log.since(41, usize::MAX).unwrap().is_empty());
    }

    fn seqs(records: &[AuditRecord]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
    }

    fn newest_segment(dir: &Path) -> PathBuf {
        segment_files(dir).pop().unwrap()
    }

    /// Writes 5 records, damages the newest segment with `damage`, reopens and checks that the
    /// tear is cut, earlier records survive and appending continues.
    fn check_torn_tail(damage: impl FnOnce(&Path, u64), keep: u64) {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), AuditLimits::default()).unwrap();
        append_n(&mut log, 5);
        let before = log.query(None, 100).unwrap();
        drop(log);
        let path = newest_segment(tmp.path());
        let clean_len = fs::metadata(&path).unwrap().len();
        damage(&path, clean_len);
        let damaged_len = fs::metadata(&path).unwrap().len();

        let mut log = AuditLog::open(tmp.path(), AuditLimits::default()).unwrap();
        let kept = log.query(None, 100).unwrap();
        assert_eq!(kept[..], before[..keep as usize]);
        assert_eq!(log.next_seq(), FIRST_SEQ + keep);
        let cut_len = fs::metadata(&path).unwrap().len();
        assert_eq!(log.recovered_bytes(), damaged_len - cut_len);
        assert!(log.recovered_bytes() > 0);

        let seq = log.append(9, "x", AuditKind::Exit, "after", true).unwrap();
        assert_eq!(seq, FIRST_SEQ + keep);
        drop(log);
        let log = AuditLog::open(tmp.path(), AuditLimits::default()).unwrap();
        assert_eq!(log.recovered_bytes(), 0);
        let all = log.query(None, 100).unwrap();
        assert_eq!(all.len() as u64, keep + 1);
        assert_eq!(all[..keep as usize], before[..keep as usize]);
        assert_eq!(all[keep as usize].reason.as_str(), "after");
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), AuditLimits::default()).unwrap();
        assert_eq!(log.next_seq(), FIRST_SEQ);
        let s1 = log
            .append(
                5,
                "sensor",
                AuditKind::DeniedConnect,
                "10.0.0.9:80/tcp",
                true,
            )
            .unwrap();
        let s2 = log.append(6, "", AuditKind::DaemonStop, "", false).unwrap();
        assert_eq!((s1, s2), (FIRST_SEQ, FIRST_SEQ + 1));
        let got = log.query(None, 10).unwrap();
        assert_eq!(
            got,
            vec![
                AuditRecord::new(s1, 5, "sensor", AuditKind::DeniedConnect, "10.0.0.9:80/tcp"),
                AuditRecord::new(s2, 6, "", AuditKind::DaemonStop, ""),
            ]
        );
        assert!(log.query(None, 0).unwrap().is_empty());
        assert_eq!(seqs(&log.query(None, 1).unwrap()), vec![s2]);
    }

    #[test]
    fn long_fields_are_cut_not_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), AuditLimits::default()).unwrap();
        let long = "é".repeat(1000);
        log.append(1, &long, AuditKind::Exit, &long, true).unwrap();
        let got = log.query(None, 1).unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].reason.len() <= nanoclaw_proto::audit::REASON_MAX);
    }

    #[test]
    fn seq_is_monotonic_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut last = 0;
        for _ in 0..3 {
            let mut log = AuditLog::open(tmp.path(), SMALL).unwrap();
            assert_eq!(log.recovered_bytes(), 0);
            for _ in 0..4 {
                let seq = log.append(1, "a", AuditKind::Start, "", false).unwrap();
                assert!(seq > last);
                last = seq;
            }
            log.sync().unwrap();
        }
        let log = AuditLog::open(tmp.path(), SMALL).unwrap();
        assert_eq!(log.next_seq(), last + 1);
        let got = seqs(&log.query(None, 3).unwrap());
        assert_eq!(got, vec![last - 2, last - 1, last]);
    }

    #[test]
    fn torn_tail_mid_record_is_cut() {
        // Cut 3 bytes into the last frame's payload: records 1..=4 survive.
        check_torn_tail(
            |path, len| {
                let last_frame = frame_len_of_last(path);
                let f = OpenOptions::new().write(true).open(path).unwrap();
                f.set_len(len - last_frame + HEADER_LEN as u64 + 3).unwrap();
            },
            4,
        );
    }

    #[test]
    fn torn_tail_mid_header_is_cut() {
        check_torn_tail(
            |path, len| {
                let last_frame = frame_len_of_last(path);
                let f = OpenOptions::new().write(true).open(path).unwrap();
                f.set_len(len - last_frame + 5).unwrap();
            },
            4,
        );
    }

    #[test]
    fn garbage_tail_is_cut() {
        check_torn_tail(
            |path, _| {
                let mut f = OpenOptions::new().append(true).open(path).unwrap();
                f.write_all(&[0xAB; 37]).unwrap();
            },
            5,
        );
    }

    #[test]
    fn zero_filled_tail_is_cut() {
        check_torn_tail(
            |path, len| {
                let f = OpenOptions::new().write(true).open(path).unwrap();
                f.set_len(len + 4096).unwrap();
            },
            5,
        );
    }

    #[test]
    fn flipped_byte_in_last_record_is_cut() {
        check_torn_tail(
            |path, len| {
                let mut bytes = fs::read(path).unwrap();
                let i = (len - 2) as usize;
                bytes[i] ^= 0x40;
                fs::write(path, bytes).unwrap();
            },
            4,
        );
    }

    #[test]
    fn flipped_byte_in_middle_record_cuts_from_there() {
        // Recovery cannot tell a flipped bit from a tear, so the newest segment is cut at the first
        // bad frame: records 1 and 2 survive.
        check_torn_tail(
            |path, _| {
                let mut bytes = fs::read(path).unwrap();
                let first = frame_len(&bytes, 0);
                let second = frame_len(&bytes, first);
                bytes[first + second + HEADER_LEN + 1] ^= 0x01;
                fs::write(path, bytes).unwrap();
            },
            2,
        );
    }

    #[test]
    fn empty_newest_segment_keeps_seq() {
        // A crash right after a rotation leaves an empty newest segment: its name says the seq.
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), AuditLimits::default()).unwrap();
        append_n(&mut log, 3);
        drop(log);
        File::create(segment_path(tmp.path(), 4)).unwrap();
        let mut log = AuditLog::open(tmp.path(), AuditLimits::default()).unwrap();
        assert_eq!(log.next_seq(), 4);
        assert_eq!(log.append(1, "a", AuditKind::Stop, "", true).unwrap(), 4);
        assert_eq!(seqs(&log.query(None, 10).unwrap()), vec![1, 2, 3, 4]);
    }

    #[test]
    fn rotation_bounds_segments_and_query_spans_them() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), SMALL).unwrap();
        append_n(&mut log, 100);
        let files = segment_files(tmp.path());
        assert!(files.len() <= SMALL.max_segments, "{files:?}");
        assert!(files.len() > 1);
        assert_eq!(log.segment_count(), files.len());
        let frame_max = (HEADER_LEN + MAX_PAYLOAD) as u64;
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= SMALL.segment_bytes + frame_max);
        }
        // Each segment is named after its first record.
        for f in &files {
            let name = f.file_name().unwrap().to_str().unwrap();
            let first = parse_segment_name(name).unwrap();
            let bytes = fs::read(f).unwrap();
            let rec: AuditRecord = postcard::from_bytes(&bytes[HEADER_LEN..]).unwrap();
            assert_eq!(rec.seq, first);
        }

        assert_eq!(
            seqs(&log.query(None, 5).unwrap()),
            vec![96, 97, 98, 99, 100]
        );
        // Everything still on disk: contiguous, oldest first, ending at the newest.
        let all = seqs(&log.query(None, usize::MAX).unwrap());
        assert!(all.len() > 5 && all.len() < 100);
        assert!(all.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(all.last(), Some(&100));

        // Reopen with fewer segments allowed: the oldest go.
        drop(log);
        let limits = AuditLimits {
            max_segments: 1,
            ..SMALL
        };
        let mut log = AuditLog::open(tmp.path(), limits).unwrap();
        assert_eq!(segment_files(tmp.path()).len(), 1);
        assert_eq!(log.query(None, 1000).unwrap().last().unwrap().seq, 100);
        assert_eq!(log.append(1, "a", AuditKind::Stop, "", true).unwrap(), 101);
    }

    #[test]
    fn agent_filter() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), SMALL).unwrap();
        append_n(&mut log, 40);
        let odd = log.query(Some("odd"), 3).unwrap();
        assert!(odd.iter().all(|r| r.agent.as_str() == "odd"));
        // append_n gives odd indexes (even seqs, as seqs start at 1) to "odd".
        assert_eq!(seqs(&odd), vec![36, 38, 40]);
        assert!(log.query(Some("nobody"), 10).unwrap().is_empty());
    }

    #[test]
    fn corrupt_record_in_old_segment_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), SMALL).unwrap();
        append_n(&mut log, 12);
        drop(log);
        let files = segment_files(tmp.path());
        assert!(files.len() >= 2);
        let oldest = &files[0];
        let mut bytes = fs::read(oldest).unwrap();
        let first_seq = parse_segment_name(oldest.file_name().unwrap().to_str().unwrap()).unwrap();
        // Flip a payload byte of the second record (CRC mismatch, length intact).
        let first = frame_len(&bytes, 0);
        bytes[first + HEADER_LEN + 2] ^= 0xFF;
        // And make the segment end in a torn frame.
        bytes.extend_from_slice(&[0xFF; 6]);
        fs::write(oldest, bytes).unwrap();

        let log = AuditLog::open(tmp.path(), SMALL).unwrap();
        assert_eq!(log.recovered_bytes(), 0, "older segments are not rewritten");
        let all = seqs(&log.query(None, 1000).unwrap());
        assert!(!all.contains(&(first_seq + 1)));
        assert!(all.contains(&first_seq));
        assert!(all.contains(&(first_seq + 2)));
        assert_eq!(all.last(), Some(&12));
    }

    #[test]
    fn other_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("audit-1.log"), b"junk").unwrap();
        fs::write(tmp.path().join("notes.txt"), b"junk").unwrap();
        let mut log = AuditLog::open(tmp.path(), AuditLimits::default()).unwrap();
        assert_eq!(
            log.append(1, "a", AuditKind::Start, "", true).unwrap(),
            FIRST_SEQ
        );
        assert!(tmp.path().join("audit-1.log").exists());
    }

    #[test]
    fn creates_private_dir() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/audit");
        AuditLog::open(&dir, AuditLimits::default()).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    fn frame_len(bytes: &[u8], at: usize) -> usize {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        HEADER_LEN + len
    }

    fn frame_len_of_last(path: &Path) -> u64 {
        let bytes = fs::read(path).unwrap();
        let mut at = 0;
        let mut last = 0;
        while at < bytes.len() {
            last = frame_len(&bytes, at);
            at += last;
        }
        last as u64
    }
}
