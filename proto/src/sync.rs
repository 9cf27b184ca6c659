//! The device ↔ fleet sync protocol: messages (this module) and framing ([`frame`]).
//!
//! A session is device-initiated: the device sends [`Hello`] with everything the server needs
//! to know what the device lacks (versions, digests, high-water marks), the server answers
//! with [`Welcome`] and then only what is missing; the device pulls bundle chunks by offset and
//! pushes audit and outbox batches by sequence number, each acknowledged; either side ends
//! with `Bye`. Every request is idempotent and names exact offsets and sequences, so a session
//! cut at any byte is resumed by the next one without repeating or losing anything.
//!
//! Wire rules (docs/PROTOCOL.md): postcard encoding, so field order is the contract — new
//! fields only at the end of a struct and new variants only at the end of an enum, and a
//! change that breaks an existing encoding needs a new protocol version. `Hello` carries the
//! device's version range; the server answers in the highest version both speak or refuses
//! with [`ErrorCode::Version`]. Payload slices borrow from the frame (no copies, no allocation).

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. 2 added [`DeviceMsg::Status`].
pub const PROTOCOL: u16 = 2;
/// The first version with [`DeviceMsg::Status`].
pub const PROTOCOL_STATUS: u16 = 2;
/// The oldest version this build still speaks.
pub const PROTOCOL_MIN: u16 = 1;
/// Largest frame either side accepts (a bundle chunk of `CHUNK_MAX` plus headers).
pub const FRAME_MAX: usize = 64 * 1024;
/// Largest bundle chunk a device asks for.
pub const CHUNK_MAX: u32 = 48 * 1024;

/// SHA-256 digest.
pub type Digest = [u8; 32];

/// What the device says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// Protocol versions the device speaks, inclusive.
    pub protocol_min: u16,
    pub protocol_max: u16,
    /// `nanoclaw` version.
    pub firmware: &'a str,
    /// The policy version in force (0: none).
    pub policy_version: u64,
    /// Digest of the sorted list of installed `name@version` (the server compares it with what
    /// it assigned and offers only on a mismatch).
    pub bundles: Digest,
    /// Highest audit sequence the device holds, and the highest the server acknowledged.
    pub audit_high: u64,
    pub audit_acked: u64,
    /// The same for the outbox.
    pub outbox_high: u64,
    pub outbox_acked: u64,
    /// Records the device had to drop because a bound forced it (reported, never hidden).
    pub dropped: u64,
}

/// The server's answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version this session speaks.
    pub protocol: u16,
    /// Seconds until the device should check in again.
    pub poll_s: u32,
    /// What the server already has (the device resends from here; duplicates are dropped by
    /// sequence on the server).
    pub audit_acked: u64,
    pub outbox_acked: u64,
    /// How many of the following messages carry something for the device.
    pub pending: u16,
}

/// A bundle the device should install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub size: u64,
    /// SHA-256 of the archive (also its name in the server's store).
    pub digest: Digest,
    /// The detached Sigstore bundle (JSON), small enough to send whole.
    pub signature: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceMsg<'a> {
    Hello(Hello<'a>),
    /// `len` bytes of the archive `digest` from `offset`.
    Pull {
        digest: Digest,
        offset: u64,
        len: u32,
    },
    /// Audit records `first..first + n`, each a postcard `AuditRecord`, concatenated in
    /// `records` with a `u16` length prefix each.
    Audit {
        first: u64,
        n: u16,
        records: &'a [u8],
    },
    /// Outbox records the same way (JSON each).
    Outbox {
        first: u64,
        n: u16,
        records: &'a [u8],
    },
    /// The policy or grant version the device applied (or refused, with the reason).
    Applied {
        what: Applied,
        version: u64,
        ok: bool,
        reason: &'a str,
    },
    Bye,
    /// What the device is doing now (protocol 2): sent right after `Welcome` when something
    /// changed since the last one or it is due again (`fleet.status_s`), never answered, so
    /// an idle check-in stays idle. The fleet keeps the newest for its dashboard and a
    /// bounded history for plots; a lost one is replaced by a later one.
    Status(Status<'a>),
}

/// A device's snapshot for the fleet (see [`DeviceMsg::Status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status<'a> {
    /// Battery charge in percent, or [`NO_BATTERY`].
    pub battery_pct: u8,
    /// On external power (mains, USB); true on boards without a battery.
    pub external_power: bool,
    /// The enforcement in force, `mechanism=level` pairs separated by spaces.
    pub posture: &'a str,
    /// Enforcement is weakened: a mechanism unavailable, a cgroup controller missing, or
    /// unsigned bundles allowed.
    pub degraded: bool,
    /// `n` postcard [`AgentStatus`] records, each with a `u16` length prefix ([`records`]).
    pub n: u16,
    pub agents: &'a [u8],
}

/// `battery_pct` of a device without a battery gauge.
pub const NO_BATTERY: u8 = u8::MAX;

/// One agent in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus<'a> {
    pub name: &'a str,
    /// `running`, `waiting`, `failed`, `stopped`, `done`, … as `nanoclaw status` says.
    pub state: &'a str,
    pub restarts: u32,
    pub memory_bytes: u64,
    /// 0: not admitted (no budget in force).
    pub memory_limit_bytes: u64,
    /// Energy used in the current budget window.
    pub energy_mwh: u64,
    /// 0: no energy budget.
    pub energy_budget_mwh: u64,
    /// Trust score 0–100.
    pub trust: u8,
    /// Denied operations since the supervisor started (connect, exec, other).
    pub denials: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Policy,
    Bundle,
    Grant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg<'a> {
    Welcome(Welcome),
    /// A signed policy envelope (JSON bytes), newer than the device's.
    Policy {
        version: u64,
        envelope: &'a [u8],
    },
    Offer(Offer<'a>),
    /// A signed grant token (JSON bytes); the device answers `Applied {what: Grant, version:
    /// id}` so the server stops sending it.
    Grant {
        id: u64,
        token: &'a [u8],
    },
    Chunk {
        digest: Digest,
        offset: u64,
        data: &'a [u8],
    },
    /// Everything up to and including `upto` is stored.
    AuditAck {
        upto: u64,
    },
    OutboxAck {
        upto: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
    },
    Bye {
        poll_s: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No protocol version in common.
    Version,
    /// The device is not enrolled (or its certificate is not trusted).
    Unknown,
    /// A request the server cannot serve (no such bundle, offset past the end).
    BadRequest,
    /// Try again later.
    Busy,
}

/// The version both sides speak: the highest in both ranges.
pub fn negotiate(
    device_min: u16,
    device_max: u16,
    server_min: u16,
    server_max: u16,
) -> Option<u16> {
    let hi = device_max.min(server_max);
    (hi >= device_min.max(server_min)).then_some(hi)
}

/// Length-prefixed frames: a `u32` little-endian length, then that many bytes of postcard.
/// A length above [`FRAME_MAX`] is an error, not an allocation.
/// Audit and outbox batches: records concatenated, each with a `u16` LE length prefix.
pub mod records {
    /// Appends `rec` to `buf[used..]`; false when it does not fit (or is over 65,535 bytes).
    pub fn push(buf: &mut [u8], used: &mut usize, rec: &[u8]) -> bool {
        let Ok(len) = u16::try_from(rec.len()) else {
            return false;
        };
        let end = *used + 2 + rec.len();
        if end > buf.len() {
            return false;
        }
        buf[*used..*used + 2].copy_from_slice(&len.to_le_bytes());
        buf[*used + 2..end].copy_from_slice(rec);
        *used = end;
        true
    }

    /// Splits a batch into exactly `n` records, or `None` when the bytes do not say so.
    pub fn split<'a>(mut bytes: &'a [u8], n: u16, mut each: impl FnMut(&'a [u8])) -> Option<()> {
        for _ in 0..n {
            let (len, rest) = bytes.split_first_chunk::<2>()?;
            let len = usize::from(u16::from_le_bytes(*len));
            let (rec, rest) = (rest.get(..len)?, rest.get(len..)?);
            each(rec);
            bytes = rest;
        }
        bytes.is_empty().then_some(())
    }
}

pub mod frame {
    use super::FRAME_MAX;

    /// What a buffer holds at its start.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Next {
        /// A whole frame: its body is `buf[4..4 + len]`, and it uses `4 + len` bytes.
        Frame { len: usize },
        /// Not enough bytes yet.
        Partial,
        /// The length field is beyond the limit: the stream is broken.
        TooLong(usize),
    }

    pub fn next(buf: &[u8]) -> Next {
        let Some(h) = buf.get(..4) else {
            return Next::Partial;
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > FRAME_MAX {
            Next::TooLong(len)
        } else if buf.len() < 4 + len {
            Next::Partial
        } else {
            Next::Frame { len }
        }
    }

    /// Writes the header for a body of `len` bytes.
    pub fn header(len: usize) -> [u8; 4] {
        (len as u32).to_le_bytes()
    }

    /// The body length a header announces, `Err(len)` when it is over [`FRAME_MAX`].
    pub fn body_len(header: [u8; 4]) -> Result<usize, usize> {
        let len = u32::from_le_bytes(header) as usize;
        if len > FRAME_MAX { Err(len) } else { Ok(len) }
    }

    /// Appends `m` to `out` as one frame. Encoding fails only for types postcard cannot
    /// encode (none here); `out` is then left empty.
    #[cfg(feature = "alloc")]
    pub fn push<T: serde::Serialize>(
        out: &mut alloc::vec::Vec<u8>,
        m: &T,
    ) -> Result<(), postcard::Error> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut v = postcard::to_extend(m, core::mem::take(out))?;
        let len = v.len() - start - 4;
        v[start..start + 4].copy_from_slice(&header(len));
        *out = v;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use super::*;
    use alloc::vec;

    fn hello() -> Hello<'static> {
        Hello {
            protocol_min: 1,
            protocol_max: 1,
            firmware: "0.1.0",
            policy_version: 7,
            bundles: [0xab; 32],
            audit_high: 1234,
            audit_acked: 1200,
            outbox_high: 5,
            outbox_acked: 5,
            dropped: 0,
        }
    }

    /// The wire format is a contract: these bytes must not change by accident. A deliberate
    /// change updates them together with docs/PROTOCOL.md and, if old peers cannot read it, a
    /// new protocol version.
    #[test]
    fn golden_bytes() {
        let bytes = postcard::to_allocvec(&DeviceMsg::Hello(hello())).unwrap();
        let mut expected = vec![0x00, 0x01, 0x01, 0x05];
        expected.extend_from_slice(b"0.1.0");
        expected.push(0x07);
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&[0xd2, 0x09, 0xb0, 0x09, 0x05, 0x05, 0x00]);
        assert_eq!(bytes, expected);
        let idle = postcard::to_allocvec(&ServerMsg::Welcome(Welcome {
            protocol: 1,
            poll_s: 300,
            audit_acked: 1234,
            outbox_acked: 5,
            pending: 0,
        }))
        .unwrap();
        assert_eq!(idle, [0x00, 0x01, 0xac, 0x02, 0xd2, 0x09, 0x05, 0x00]);
        assert_eq!(postcard::to_allocvec(&DeviceMsg::Bye).unwrap(), [0x05]);
        // An idle sync: Hello + Bye up, Welcome + Bye down, with frame headers.
        let up = 4 + bytes.len() + 4 + 1;
        let down = 4 + idle.len() + 4 + 3;
        assert!(up <= 64 && down <= 64, "idle sync {up} B up, {down} B down");
    }

    /// Protocol 2's status report: the variant index after `Bye`, then its fields in order.
    #[test]
    fn status_golden_bytes() {
        let agent = AgentStatus {
            name: "a",
            state: "running",
            restarts: 1,
            memory_bytes: 300,
            memory_limit_bytes: 0,
            energy_mwh: 2,
            energy_budget_mwh: 0,
            trust: 100,
            denials: 3,
        };
        let rec = postcard::to_allocvec(&agent).unwrap();
        let mut expected = vec![0x01, b'a', 0x07];
        expected.extend_from_slice(b"running");
        expected.extend_from_slice(&[0x01, 0xac, 0x02, 0x00, 0x02, 0x00, 0x64, 0x03]);
        assert_eq!(rec, expected);
        let msg = DeviceMsg::Status(Status {
            battery_pct: NO_BATTERY,
            external_power: true,
            posture: "x=y",
            degraded: false,
            n: 0,
            agents: &[],
        });
        let bytes = postcard::to_allocvec(&msg).unwrap();
        assert_eq!(
            bytes,
            [0x06, 0xff, 0x01, 0x03, b'x', b'=', b'y', 0x00, 0x00, 0x00]
        );
        assert_eq!(postcard::from_bytes::<DeviceMsg<'_>>(&bytes).unwrap(), msg);
    }

    #[test]
    fn round_trips_borrow_from_the_frame() {
        let data = [1u8, 2, 3, 4];
        let msg = ServerMsg::Chunk {
            digest: [9; 32],
            offset: 1 << 40,
            data: &data,
        };
        let bytes = postcard::to_allocvec(&msg).unwrap();
        let back: ServerMsg = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, msg);
        let msg = DeviceMsg::Applied {
            what: Applied::Policy,
            version: 8,
            ok: false,
            reason: "older than 9",
        };
        let bytes = postcard::to_allocvec(&msg).unwrap();
        assert_eq!(postcard::from_bytes::<DeviceMsg>(&bytes).unwrap(), msg);
        // Truncated input is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(postcard::from_bytes::<DeviceMsg>(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn record_batches_split_exactly() {
        let mut buf = [0u8; 16];
        let mut used = 0;
        assert!(records::push(&mut buf, &mut used, b"abc"));
        assert!(records::push(&mut buf, &mut used, b""));
        assert!(records::push(&mut buf, &mut used, b"defgh"));
        assert!(
            !records::push(&mut buf, &mut used, b"x"),
            "16 bytes are full"
        );
        let mut got: heapless::Vec<heapless::Vec<u8, 8>, 4> = heapless::Vec::new();
        let ok = records::split(&buf[..used], 3, |r| {
            let _ = got.push(heapless::Vec::from_slice(r).unwrap_or_default());
        });
        assert_eq!(ok, Some(()));
        assert_eq!(got.len(), 3);
        assert_eq!(&got[2][..], b"defgh");
        // Wrong count, truncated body, trailing bytes: all refused.
        assert_eq!(records::split(&buf[..used], 2, |_| ()), None);
        assert_eq!(records::split(&buf[..used], 4, |_| ()), None);
        assert_eq!(records::split(&buf[..used - 1], 3, |_| ()), None);
    }

    #[test]
    fn versions_and_frames() {
        assert_eq!(negotiate(1, 3, 2, 5), Some(3));
        assert_eq!(negotiate(1, 1, 2, 5), None);
        assert_eq!(
            negotiate(PROTOCOL_MIN, PROTOCOL, PROTOCOL_MIN, PROTOCOL),
            Some(PROTOCOL)
        );
        let mut buf = frame::header(3).to_vec();
        assert_eq!(frame::next(&buf), frame::Next::Partial);
        buf.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(frame::next(&buf), frame::Next::Frame { len: 3 });
        assert_eq!(frame::next(&[0, 0, 0]), frame::Next::Partial);
        assert_eq!(
            frame::next(&((FRAME_MAX as u32) + 1).to_le_bytes()),
            frame::Next::TooLong(FRAME_MAX + 1)
        );
    }
}
