//! The audit log survives a torn or garbled tail: the daemon starts, the earlier records come
//! back intact, and the recovery itself is audited.
//!
//! Segment format (supervisor/src/audit.rs): frames `[u32 LE len][u32 LE crc32][payload]` in
//! `<state_dir>/audit/audit-<first seq, 20 digits>.log`.

// Integration tests: helpers outside #[test] functions fail the test by panicking, like the
// tests themselves (clippy only exempts #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::PathBuf;

use serde_json::Value;

use nanoclaw_tests::{Device, append, manifest};

/// The newest audit segment.
fn newest_segment(dev: &Device) -> PathBuf {
    let dir = dev.state_dir().join("audit");
    let mut segs: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".log"))
        })
        .collect();
    segs.sort();
    segs.pop().expect("an audit segment")
}

/// (offset, total length) of every frame in a segment.
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
        assert!(off + 8 + len <= bytes.len(), "segment is not whole frames");
        out.push((off, 8 + len));
        off += 8 + len;
    }
    assert_eq!(off, bytes.len(), "segment is not whole frames");
    out
}

/// A device that ran once (one task agent) and was stopped cleanly; returns its records.
fn ran_once() -> (Device, Vec<Value>) {
    let mut dev = Device::new();
    dev.add_agent(
        "oneshot",
        manifest("oneshot", "task", &["exit", "0"], "16MiB"),
        Some(nanoclaw_tests::grant("16MiB")),
    );
    dev.start();
    dev.wait_state("oneshot", "exited");
    let before = dev.audit_json();
    let status = dev.sigterm();
    assert_eq!(status.code(), Some(0), "{status}");
    (dev, before)
}

/// Restarts the daemon and checks what recovery must guarantee; returns the new records.
fn restart_and_check(dev: &mut Device, before: &[Value], cut: usize) -> Vec<Value> {
    dev.start();
    let after = dev.audit_json();
    let seqs: Vec<u64> = after.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), after.len(), "a record without seq: {after:#?}");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq not increasing: {seqs:?}"
    );
    // Everything the first daemon had audited before it was stopped comes back unchanged.
    assert!(after.len() > before.len());
    assert_eq!(&after[..before.len()], before, "earlier records changed");
    let recovered: Vec<&Value> = after
        .iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("torn tail of {cut} bytes"))
        })
        .collect();
    assert_eq!(recovered.len(), 1, "no record of the recovery: {after:#?}");
    assert_eq!(recovered[0]["kind"], "daemon_start");
    after
}

#[test]
fn truncated_record_is_cut_and_reported() {
    let (mut dev, before) = ran_once();
    let seg = newest_segment(&dev);
    let bytes = fs::read(&seg).expect("reading the segment");
    let f = frames(&bytes);
    let &(last_off, last_len) = f.last().expect("frames");
    // Cut the last record (daemon_stop) in the middle of its payload.
    let keep = last_off + 8 + (last_len - 8) / 2;
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|file| file.set_len(keep as u64))
        .expect("truncating the segment");
    let after = restart_and_check(&mut dev, &before, keep - last_off);
    // The torn daemon_stop is gone; its seq is reused by the next record.
    // A fresh log in one segment: frame i holds seq i + 1.
    let stop_seq = f.len() as u64;
    assert!(
        after
            .iter()
            .all(|r| r["kind"] != "daemon_stop" || r["seq"].as_u64() != Some(stop_seq)),
        "{after:#?}"
    );
    assert_eq!(after[before.len()]["seq"].as_u64(), Some(stop_seq));
}

#[test]
fn garbage_after_the_last_record_is_cut_and_reported() {
    let (mut dev, before) = ran_once();
    let seg = newest_segment(&dev);
    let orig = fs::read(&seg).expect("reading the segment");
    // A plausible header (length 20) with a wrong CRC, its payload, and some junk.
    let mut garbage = Vec::new();
    garbage.extend_from_slice(&20u32.to_le_bytes());
    garbage.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    garbage.extend_from_slice(&[0x5a; 20]);
    garbage.extend_from_slice(b"junk!");
    append(&seg, &garbage);
    let after = restart_and_check(&mut dev, &before, garbage.len());
    // The clean shutdown's daemon_stop survived: only the garbage was cut.
    assert!(
        after[before.len()..]
            .iter()
            .any(|r| r["kind"] == "daemon_stop"),
        "{after:#?}"
    );
    // Nothing before the garbage was rewritten, and the segment is whole frames again.
    let now = fs::read(&seg).expect("reading the segment");
    assert!(now.len() >= orig.len());
    assert_eq!(now[..orig.len()], orig[..]);
    frames(&now);
}

#[test]
fn rotation_keeps_seq_increasing_and_bounded_across_restarts() {
    let mut dev = Device::new();
    dev.device["audit_segment_bytes"] = serde_json::json!("4KiB");
    dev.device["audit_segments"] = serde_json::json!(2);
    dev.start();
    // Every reload appends a record of ~75 bytes: 200 of them fill more than two 4 KiB
    // segments.
    for _ in 0..200 {
        assert_eq!(dev.cli(&["reload"]).code, 0);
    }
    let seqs = |dev: &Device| -> Vec<u64> {
        dev.audit_json()
            .iter()
            .filter_map(|r| r["seq"].as_u64())
            .collect()
    };
    let first = seqs(&dev);
    assert!(
        first.windows(2).all(|w| w[1] == w[0] + 1),
        "gaps or disorder in the retained window: {first:?}"
    );
    assert!(first[0] > 1, "nothing was rotated out: {first:?}");
    let segments = |dev: &Device| {
        fs::read_dir(dev.state_dir().join("audit"))
            .expect("audit dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("audit-"))
            .count()
    };
    assert!(segments(&dev) <= 2, "{} segments", segments(&dev));
    let last = *first.last().expect("records");
    // A kill -9 and a restart continue the numbering.
    dev.kill9();
    dev.start();
    let after = seqs(&dev);
    assert!(
        after.windows(2).all(|w| w[0] < w[1]),
        "seq not increasing: {after:?}"
    );
    assert!(after.contains(&last), "{last} lost: {after:?}");
    assert!(*after.last().expect("records") > last);
    assert!(segments(&dev) <= 2, "{} segments", segments(&dev));
}
