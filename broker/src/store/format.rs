//! The bytes on disk: segment header and record framing. docs/storage.md is the reference;
//! change both together.

use super::{Lsn, QueueId};

pub(super) const MAGIC: [u8; 8] = *b"WHARFSEG";
pub(super) const VERSION: u32 = 1;
pub(super) const HEADER_LEN: u64 = 44;
/// Length and checksum in front of every record body.
pub(super) const PREFIX_LEN: usize = 8;
/// Kind byte and Lsn: the smallest body any record kind has.
const MIN_BODY: usize = 9;

const KIND_ENQUEUE: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_DROP_QUEUE: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub segment: u64,
    /// The highest Lsn handed out before this segment was created; no record in it is lower.
    pub lsn_floor: Lsn,
    /// The highest msg_id seen before this segment was created, so that msg_ids are never
    /// reused even when every segment that held the highest one has been deleted.
    pub max_msg_id: u64,
}

#[derive(Debug)]
pub(super) enum HeaderError {
    Invalid(&'static str),
    Version(u32),
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        // 12..16: flags, none defined yet.
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.lsn_floor.to_le_bytes());
        b[32..40].copy_from_slice(&self.max_msg_id.to_le_bytes());
        let crc = crc32fast::hash(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Header, HeaderError> {
        if b.len() < HEADER_LEN as usize {
            return Err(HeaderError::Invalid("shorter than a segment header"));
        }
        if b[0..8] != MAGIC {
            return Err(HeaderError::Invalid("bad magic"));
        }
        // Version before checksum: a later format may lay out the rest of the header differently,
        // and must be refused as "newer", not mistaken for corruption.
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        if crc32fast::hash(&b[0..40]) != u32_at(b, 40) {
            return Err(HeaderError::Invalid("bad header checksum"));
        }
        if u32_at(b, 12) != 0 {
            return Err(HeaderError::Invalid("unknown header flags"));
        }
        Ok(Header {
            segment: u64_at(b, 16),
            lsn_floor: u64_at(b, 24),
            max_msg_id: u64_at(b, 32),
        })
    }
}

pub(super) fn enqueue_len(queues: usize, payload: usize) -> usize {
    PREFIX_LEN + MIN_BODY + 8 + 4 + 8 * queues + payload
}

pub(super) fn ack_len(msg_ids: usize) -> usize {
    PREFIX_LEN + MIN_BODY + 8 + 4 + 8 * msg_ids
}

pub(super) const DROP_QUEUE_LEN: usize = PREFIX_LEN + MIN_BODY + 8;

/// Largest payload an enqueue record can carry with `queues` queue ids (the body length is a u32).
pub(super) fn max_payload(queues: usize) -> usize {
    (u32::MAX as usize + PREFIX_LEN).saturating_sub(enqueue_len(queues, 0))
}

pub(super) fn put_enqueue(
    buf: &mut Vec<u8>,
    lsn: Lsn,
    msg_id: u64,
    queues: &[QueueId],
    payload: &[u8],
) {
    let start = begin(buf, KIND_ENQUEUE, lsn);
    buf.extend_from_slice(&msg_id.to_le_bytes());
    buf.extend_from_slice(&(queues.len() as u32).to_le_bytes());
    for q in queues {
        buf.extend_from_slice(&q.to_le_bytes());
    }
    buf.extend_from_slice(payload);
    finish(buf, start);
}

pub(super) fn put_ack(buf: &mut Vec<u8>, lsn: Lsn, queue: QueueId, msg_ids: &[u64]) {
    let start = begin(buf, KIND_ACK, lsn);
    buf.extend_from_slice(&queue.to_le_bytes());
    buf.extend_from_slice(&(msg_ids.len() as u32).to_le_bytes());
    for id in msg_ids {
        buf.extend_from_slice(&id.to_le_bytes());
    }
    finish(buf, start);
}

pub(super) fn put_drop_queue(buf: &mut Vec<u8>, lsn: Lsn, queue: QueueId) {
    let start = begin(buf, KIND_DROP_QUEUE, lsn);
    buf.extend_from_slice(&queue.to_le_bytes());
    finish(buf, start);
}

fn begin(buf: &mut Vec<u8>, kind: u8, lsn: Lsn) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; PREFIX_LEN]);
    buf.push(kind);
    buf.extend_from_slice(&lsn.to_le_bytes());
    start
}

fn finish(buf: &mut [u8], start: usize) {
    let body = &buf[start + PREFIX_LEN..];
    let len = u32::try_from(body.len()).expect("record body over 4 GiB; callers bound it");
    let crc = crc32fast::hash(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Body length and checksum from a record prefix. `None` when the length cannot be a record,
/// which is what a zero-filled or torn tail usually looks like.
pub(super) fn parse_prefix(p: &[u8; PREFIX_LEN]) -> Option<(usize, u32)> {
    let len = u32_at(p, 0) as usize;
    (len >= MIN_BODY).then(|| (len, u32_at(p, 4)))
}

#[derive(Debug)]
pub(super) enum Body<'a> {
    Enqueue {
        msg_id: u64,
        queues: Vec<QueueId>,
        /// Always the tail of the record body.
        payload: &'a [u8],
    },
    Ack {
        queue: QueueId,
        msg_ids: Vec<u64>,
    },
    DropQueue {
        queue: QueueId,
    },
}

#[derive(Debug)]
pub(super) struct Record<'a> {
    pub lsn: Lsn,
    pub body: Body<'a>,
}

/// Checks the body against `crc` and parses it. A body that passes the checksum but does not
/// parse is treated like any other corruption by the caller.
pub(super) fn decode(body: &[u8], crc: u32) -> Result<Record<'_>, &'static str> {
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    let mut c = Cursor(body);
    let kind = c.u8().ok_or("record too short")?;
    let lsn = c.u64().ok_or("record too short")?;
    let body = match kind {
        KIND_ENQUEUE => {
            let msg_id = c.u64().ok_or("enqueue record too short")?;
            let queues = c.u64s().ok_or("enqueue record queue count out of bounds")?;
            Body::Enqueue {
                msg_id,
                queues,
                payload: c.0,
            }
        }
        KIND_ACK => {
            let queue = c.u64().ok_or("ack record too short")?;
            let msg_ids = c.u64s().ok_or("ack record id count out of bounds")?;
            if !c.0.is_empty() {
                return Err("ack record has trailing bytes");
            }
            Body::Ack { queue, msg_ids }
        }
        KIND_DROP_QUEUE => {
            let queue = c.u64().ok_or("drop-queue record too short")?;
            if !c.0.is_empty() {
                return Err("drop-queue record has trailing bytes");
            }
            Body::DropQueue { queue }
        }
        _ => return Err("unknown record kind"),
    };
    Ok(Record { lsn, body })
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64_at(b, 0))
    }
    /// A u32 count followed by that many u64s.
    fn u64s(&mut self) -> Option<Vec<u64>> {
        let n = self.take(4).map(|b| u32_at(b, 0))? as usize;
        let raw = self.take(n.checked_mul(8)?)?;
        Some(raw.chunks_exact(8).map(|c| u64_at(c, 0)).collect())
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(buf: &[u8]) -> Record<'_> {
        let p: &[u8; PREFIX_LEN] = buf[..PREFIX_LEN].try_into().unwrap();
        let (len, crc) = parse_prefix(p).unwrap();
        assert_eq!(len + PREFIX_LEN, buf.len());
        decode(&buf[PREFIX_LEN..], crc).unwrap()
    }

    #[test]
    fn records_round_trip_and_lengths_match() {
        let mut buf = Vec::new();
        put_enqueue(&mut buf, 7, 42, &[1, 2, 3], b"hello");
        assert_eq!(buf.len(), enqueue_len(3, 5));
        match roundtrip(&buf) {
            Record {
                lsn: 7,
                body:
                    Body::Enqueue {
                        msg_id: 42,
                        queues,
                        payload,
                    },
            } => {
                assert_eq!(queues, vec![1, 2, 3]);
                assert_eq!(payload, b"hello");
            }
            other => panic!("{other:?}"),
        }

        buf.clear();
        put_ack(&mut buf, 8, 5, &[10, 11]);
        assert_eq!(buf.len(), ack_len(2));
        assert!(matches!(
            roundtrip(&buf),
            Record { lsn: 8, body: Body::Ack { queue: 5, ref msg_ids } } if msg_ids == &[10, 11]
        ));

        buf.clear();
        put_drop_queue(&mut buf, 9, 6);
        assert_eq!(buf.len(), DROP_QUEUE_LEN);
        assert!(matches!(
            roundtrip(&buf),
            Record {
                lsn: 9,
                body: Body::DropQueue { queue: 6 }
            }
        ));
    }

    #[test]
    fn bytes_match_the_example_in_docs() {
        let mut buf = Vec::new();
        put_enqueue(&mut buf, 7, 42, &[1, 2], b"hi");
        assert_eq!(buf.len(), 47);
        assert_eq!(&buf[0..4], &[39, 0, 0, 0]);
        assert_eq!(u32_at(&buf, 4), crc32fast::hash(&buf[8..]));
        let mut body = vec![1u8];
        for v in [7u64, 42] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&2u32.to_le_bytes());
        for q in [1u64, 2] {
            body.extend_from_slice(&q.to_le_bytes());
        }
        body.extend_from_slice(b"hi");
        assert_eq!(&buf[8..], &body[..]);
    }

    #[test]
    fn flipped_bit_and_bad_counts_are_rejected() {
        let mut buf = Vec::new();
        put_enqueue(&mut buf, 1, 1, &[1], b"x");
        let crc = u32_at(&buf, 4);
        let mut bad = buf[PREFIX_LEN..].to_vec();
        bad[12] ^= 0x10;
        assert!(decode(&bad, crc).is_err());

        // A count that claims more ids than the body holds, with a matching checksum.
        let mut body = vec![KIND_ACK];
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&body, crc32fast::hash(&body)).is_err());

        assert!(parse_prefix(&[0u8; PREFIX_LEN]).is_none());
    }

    #[test]
    fn header_round_trip_and_version_check() {
        let h = Header {
            segment: 3,
            lsn_floor: 99,
            max_msg_id: 1234,
        };
        let mut b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);
        b[20] ^= 1;
        assert!(matches!(Header::decode(&b), Err(HeaderError::Invalid(_))));
        let mut v2 = h.encode();
        v2[8] = 2;
        assert!(matches!(Header::decode(&v2), Err(HeaderError::Version(2))));
    }
}
