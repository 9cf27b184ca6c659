//! The store-and-forward outbox: records agents hand to the supervisor (`outbox_put` on their
//! socket) for the fleet sync to deliver whenever the link is up.
//!
//! One append-only file of frames `len: u32 LE | crc32: u32 LE | JSON`, fsynced before a put
//! is acknowledged, so an acknowledged record survives power loss. Opening the file cuts a
//! torn tail (a frame whose length or checksum does not match) and keeps everything before it.
//! The file is capped: a full outbox refuses new records rather than dropping old ones. The
//! sync acknowledges a prefix with [`Outbox::ack`], which rewrites the rest atomically.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest `data` of one record, in bytes of JSON.
pub const MAX_DATA: usize = 16 * 1024;
const HEADER: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    pub time_ms: u64,
    pub agent: String,
    pub topic: String,
    pub data: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox is full ({bytes} of {max} bytes waiting for the fleet link); record refused")]
    Full { bytes: u64, max: u64 },
    #[error("record data is {0} bytes; at most {MAX_DATA}")]
    TooLarge(usize),
}

pub struct Outbox {
    path: PathBuf,
    file: File,
    bytes: u64,
    count: u64,
    next_seq: u64,
    max_bytes: u64,
    /// Bytes cut from a torn tail when the file was opened.
    pub recovered: u64,
}

impl Outbox {
    /// Opens (creating) the outbox at `path`, cutting a torn tail.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Outbox, OutboxError> {
        let io = |source| OutboxError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io)?;
        let (records, good) = parse(&buf);
        let recovered = buf.len() as u64 - good;
        if recovered > 0 {
            file.set_len(good).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        // After a full drain the file is empty; the sidecar keeps numbering going up.
        let floor = std::fs::read_to_string(seq_path(path))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1);
        Ok(Outbox {
            path: path.to_path_buf(),
            file,
            bytes: good,
            count: records.len() as u64,
            next_seq: records.last().map_or(1, |r| r.seq + 1).max(floor),
            max_bytes,
            recovered,
        })
    }

    /// Appends a record durably; returns its sequence number.
    pub fn put(
        &mut self,
        now_ms: u64,
        agent: &str,
        topic: &str,
        data: Value,
    ) -> Result<u64, OutboxError> {
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len());
        if size > MAX_DATA {
            return Err(OutboxError::TooLarge(size));
        }
        let rec = Record {
            seq: self.next_seq,
            time_ms: now_ms,
            agent: agent.into(),
            topic: topic.into(),
            data,
        };
        let frame = frame(&rec);
        if self.bytes + frame.len() as u64 > self.max_bytes {
            return Err(OutboxError::Full {
                bytes: self.bytes,
                max: self.max_bytes,
            });
        }
        let io = |source| OutboxError::Io {
            path: self.path.clone(),
            source,
        };
        if let Err(e) = self
            .file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data())
        {
            // Do not leave a partial frame behind a later good one.
            let _ = self.file.set_len(self.bytes);
            return Err(io(e));
        }
        self.bytes += frame.len() as u64;
        self.count += 1;
        self.next_seq += 1;
        Ok(rec.seq)
    }

    /// Every waiting record, oldest first.
    pub fn records(&self) -> Result<Vec<Record>, OutboxError> {
        let buf = std::fs::read(&self.path).map_err(|source| OutboxError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(parse(&buf).0)
    }

    /// Records with `seq >= first` as stored (their JSON), reading from byte `offset` of the
    /// file, until about `max_bytes` (at least one record); returns them and the offset after
    /// the last one, where the next call continues. Offsets hold until the next [`Outbox::ack`]
    /// (puts only append), so a sync session reads the file once however many batches it
    /// sends.
    pub fn read_from(
        &self,
        offset: u64,
        first: u64,
        max_bytes: usize,
    ) -> Result<(Vec<crate::audit::Stored>, u64), OutboxError> {
        #[derive(Deserialize)]
        struct Seq {
            seq: u64,
        }
        let io = |source| OutboxError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut r = std::io::BufReader::new(f.take(self.bytes.saturating_sub(offset)));
        let (mut out, mut at, mut used) = (Vec::new(), offset, 0usize);
        let mut header = [0u8; HEADER];
        while r.read_exact(&mut header).is_ok() {
            let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
            let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
            let mut body = vec![0u8; len.min(2 * MAX_DATA)];
            if len > 2 * MAX_DATA
                || r.read_exact(&mut body).is_err()
                || crc32fast::hash(&body) != u32::from_le_bytes([c0, c1, c2, c3])
            {
                break;
            }
            let Ok(Seq { seq }) = serde_json::from_slice(&body) else {
                break;
            };
            if seq >= first {
                if used + len > max_bytes && !out.is_empty() {
                    break;
                }
                used += len;
                out.push((seq, body));
            }
            at += (HEADER + len) as u64;
        }
        Ok((out, at))
    }

    /// Drops every record with `seq <= upto` (delivered), keeping the rest.
    pub fn ack(&mut self, upto: u64) -> Result<(), OutboxError> {
        let keep: Vec<Record> = self
            .records()?
            .into_iter()
            .filter(|r| r.seq > upto)
            .collect();
        let bytes: Vec<u8> = keep.iter().flat_map(frame).collect();
        let io = |source| OutboxError::Io {
            path: self.path.clone(),
            source,
        };
        crate::agents::persist::write_file_atomic(
            &seq_path(&self.path),
            self.next_seq.to_string().as_bytes(),
            true,
        )
        .map_err(io)?;
        crate::agents::persist::write_file_atomic(&self.path, &bytes, true).map_err(io)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.bytes = bytes.len() as u64;
        self.count = keep.len() as u64;
        Ok(())
    }

    /// The seq the next record will get (everything below it was put at some point).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

fn seq_path(path: &Path) -> PathBuf {
    path.with_extension("seq")
}

fn frame(r: &Record) -> Vec<u8> {
    let body = serde_json::to_vec(r).unwrap_or_default();
    let mut f = Vec::with_capacity(HEADER + body.len());
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    f.extend_from_slice(&body);
    f
}

/// The records of `buf` and the length of its good prefix.
fn parse(buf: &[u8]) -> (Vec<Record>, u64) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while buf.len() - at >= HEADER {
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let crc = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        let Some(body) = buf.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Ok(r) = serde_json::from_slice::<Record>(body) else {
            break;
        };
        out.push(r);
        at += HEADER + len;
    }
    (out, at as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn read_from_continues_at_the_returned_offset() {
        let t = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(&t.path().join("outbox.log"), 1 << 20).unwrap();
        for i in 1..=5 {
            o.put(i, "a", "t", json!({ "n": i })).unwrap();
        }
        let (all, end) = o.read_from(0, 1, usize::MAX).unwrap();
        assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(end, o.bytes());
        // The stored JSON is shipped as it is.
        let rec: Record = serde_json::from_slice(&all[2].1).unwrap();
        assert_eq!(rec.data["n"], 3);
        // One record per call with a tiny cap, each call continuing where the last ended.
        let (mut at, mut seen) = (0, Vec::new());
        loop {
            let (batch, next) = o.read_from(at, 2, 1).unwrap();
            if batch.is_empty() {
                break;
            }
            assert_eq!(batch.len(), 1);
            seen.push(batch[0].0);
            at = next;
        }
        assert_eq!(seen, [2, 3, 4, 5], "records below `first` are skipped");
        o.ack(3).unwrap();
        let (rest, _) = o.read_from(0, 4, usize::MAX).unwrap();
        assert_eq!(rest.iter().map(|r| r.0).collect::<Vec<_>>(), [4, 5]);
    }

    #[test]
    fn durable_append_torn_tail_cap_and_ack() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("outbox/outbox.log");
        let mut o = Outbox::open(&p, 400).unwrap();
        assert_eq!(o.put(1, "a", "t", json!({"v": 1})).unwrap(), 1);
        assert_eq!(o.put(2, "a", "t", json!("two")).unwrap(), 2);
        assert!(matches!(
            o.put(3, "a", "t", json!("x".repeat(MAX_DATA))),
            Err(OutboxError::TooLarge(_))
        ));
        // A torn frame after the good ones (power cut mid-write) is cut on open.
        drop(o);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        let mut o = Outbox::open(&p, 400).unwrap();
        assert_eq!(o.recovered, 6);
        assert_eq!(o.count(), 2);
        assert_eq!(o.put(4, "b", "t", json!(3)).unwrap(), 3);
        let mut n = 0;
        while o.put(5, "b", "t", json!("filler")).is_ok() {
            n += 1;
        }
        assert!(n > 0);
        assert!(matches!(
            o.put(6, "b", "t", json!("filler")),
            Err(OutboxError::Full { .. })
        ));
        o.ack(2).unwrap();
        let left = o.records().unwrap();
        assert_eq!(left[0].seq, 3);
        assert_eq!(left[0].agent, "b");
        assert!(o.put(7, "b", "t", json!(1)).is_ok());
        let mut o = Outbox::open(&p, 400).unwrap();
        assert_eq!(o.recovered, 0);
        let last = o.records().unwrap().last().unwrap().seq;
        // Drained completely: numbering still goes up after a reopen.
        o.ack(last).unwrap();
        let mut o = Outbox::open(&p, 400).unwrap();
        assert_eq!(o.count(), 0);
        assert_eq!(o.put(8, "c", "t", json!(1)).unwrap(), last + 1);
    }
}
