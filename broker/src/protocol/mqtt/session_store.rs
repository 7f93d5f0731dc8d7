//! The QoS state of persistent MQTT sessions, durable across reconnects, restarts and SIGKILL.
//!
//! The engine keeps a persistent session's queue, bindings and messages; what it cannot know is
//! the MQTT packet-id bookkeeping that MQTT-4.4.0-1 and exactly-once need:
//! - inbound QoS 2: packet ids whose PUBREC was sent and whose PUBREL is awaited (a PUBLISH
//!   with one of them is a resend, not a new message);
//! - outbound: the PUBLISHes awaiting PUBACK/PUBREC (packet id and the message's store id, so
//!   the message the queue redelivers after a reconnect goes out with its original packet id)
//!   and the PUBRELs awaiting PUBCOMP, each in the order it was sent.
//!
//! Kept in memory for every persistent session (connected or not: a reconnect reads it here)
//! and in one append-only journal, `<data_dir>/mqtt-sessions.log`, written by one thread that
//! commits in groups (one write and one fdatasync per batch) and publishes how far it is
//! durable. Callers get a sequence number per record and decide what waits for it (see
//! docs/mapping/mqtt.md, "Resend and exactly-once"). When the journal has grown well beyond the
//! live state, the thread rewrites it as a snapshot (temporary file, fsync, rename); at open the
//! journal is replayed, a torn tail dropped, and a snapshot written.
//!
//! Record: `u32 LE length` of what follows the checksum, `u32 LE CRC-32` of it, `u8 kind`,
//! `u16 LE` client id length, client id (UTF-8), then by kind: 1 qos2-in add / 2 qos2-in done /
//! 4 released / 5 done: `u16 LE` packet id; 3 published: `u16 LE` packet id, `u64 LE` msg id;
//! 6 clear: nothing. The file starts with `WHARFMQS` and `u32 LE` version 1.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

const MAGIC: &[u8; 8] = b"WHARFMQS";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 12;
/// The journal is rewritten as a snapshot once what was appended since the last one exceeds
/// this and four times the snapshot.
const COMPACT_BYTES_MIN: u64 = 4 << 20;

/// One change of a session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Inbound QoS 2 PUBLISH taken, PUBREC (to be) sent: the packet id awaits PUBREL.
    Qos2In(u16),
    /// Inbound PUBREL: the packet id is free again.
    Qos2InDone(u16),
    /// Outbound QoS 1/2 PUBLISH of the message with this store id, awaiting PUBACK/PUBREC.
    Published(u16, u64),
    /// PUBREC received, PUBREL (to be) sent: awaiting PUBCOMP.
    Released(u16),
    /// PUBACK or PUBCOMP received: the outbound packet id is free again.
    Done(u16),
    /// The session is gone (clean start, or it ended without persisting).
    Clear,
}

/// The QoS state of one persistent session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SessionState {
    pub qos2_in: BTreeSet<u16>,
    /// Outbound PUBLISHes awaiting PUBACK/PUBREC, in send order: (packet id, store msg id).
    pub published: Vec<(u16, u64)>,
    /// Outbound PUBRELs awaiting PUBCOMP, in PUBREC order: (packet id, store msg id).
    pub released: Vec<(u16, u64)>,
}

impl SessionState {
    pub(super) fn is_empty(&self) -> bool {
        self.qos2_in.is_empty() && self.published.is_empty() && self.released.is_empty()
    }

    /// Applies one change; the same code for live changes and for replay.
    fn apply(&mut self, op: Op) {
        match op {
            Op::Qos2In(pid) => {
                self.qos2_in.insert(pid);
            }
            Op::Qos2InDone(pid) => {
                self.qos2_in.remove(&pid);
            }
            Op::Published(pid, msg_id) => {
                self.forget_out(pid);
                self.published.push((pid, msg_id));
            }
            Op::Released(pid) => {
                let msg_id = self
                    .published
                    .iter()
                    .find(|(p, _)| *p == pid)
                    .map_or(0, |(_, m)| *m);
                self.forget_out(pid);
                self.released.push((pid, msg_id));
            }
            Op::Done(pid) => self.forget_out(pid),
            Op::Clear => *self = SessionState::default(),
        }
    }

    fn forget_out(&mut self, pid: u16) {
        self.published.retain(|(p, _)| *p != pid);
        self.released.retain(|(p, _)| *p != pid);
    }

    /// The records that rebuild this state, in an order that keeps the lists' order.
    fn records(&self) -> Vec<Op> {
        let mut ops: Vec<Op> = self.qos2_in.iter().map(|&p| Op::Qos2In(p)).collect();
        for &(pid, msg_id) in &self.released {
            ops.push(Op::Published(pid, msg_id));
            ops.push(Op::Released(pid));
        }
        ops.extend(self.published.iter().map(|&(p, m)| Op::Published(p, m)));
        ops
    }
}

#[derive(Debug)]
struct Locked {
    sessions: HashMap<String, SessionState>,
    /// Encoded records not yet handed to the writer.
    pending: Vec<u8>,
    /// Sequence number of the last record.
    seq: u64,
    closed: bool,
}

#[derive(Debug)]
struct Inner {
    locked: Mutex<Locked>,
    wake: Condvar,
    durable: watch::Sender<u64>,
}

/// The journal and the in-memory state of every persistent session.
#[derive(Debug)]
pub(super) struct SessionStore {
    inner: Arc<Inner>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SessionStore {
    /// Replays `<dir>/mqtt-sessions.log` (a torn tail is dropped), rewrites it as a snapshot
    /// and starts the writer. With `fsync` false, "durable" means "handed to the kernel".
    pub(super) fn open(dir: &Path, fsync: bool) -> io::Result<SessionStore> {
        let path = dir.join("mqtt-sessions.log");
        let mut sessions = HashMap::new();
        match fs::File::open(&path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                let dropped = replay(&bytes, &mut sessions);
                if dropped > 0 {
                    tracing::warn!(file = %path.display(), bytes = dropped, "MQTT session journal: torn or damaged tail dropped");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        sessions.retain(|_, s: &mut SessionState| !s.is_empty());
        let snapshot = encode_snapshot(&sessions);
        let file = write_snapshot(&path, &snapshot)?;
        tracing::info!(sessions = sessions.len(), "MQTT session journal loaded");
        let (durable, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            locked: Mutex::new(Locked {
                sessions,
                pending: Vec::new(),
                seq: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            durable,
        });
        let writer_inner = inner.clone();
        let base = snapshot.len() as u64;
        let writer = std::thread::Builder::new()
            .name("mqtt-sessions".into())
            .spawn(move || write_loop(&writer_inner, path, file, base, fsync))?;
        Ok(SessionStore {
            inner,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Records a change of `client`'s state; returns its sequence number (see
    /// [`SessionStore::durable_seq`]). Applied to the in-memory state at once.
    pub(super) fn record(&self, client: &str, op: Op) -> u64 {
        let mut l = self.inner.locked.lock();
        match l.sessions.get_mut(client) {
            Some(s) => {
                s.apply(op);
                if s.is_empty() {
                    l.sessions.remove(client);
                }
            }
            None if op == Op::Clear => {}
            None => {
                let mut s = SessionState::default();
                s.apply(op);
                if !s.is_empty() {
                    l.sessions.insert(client.to_string(), s);
                }
            }
        }
        encode_record(&mut l.pending, client, op);
        l.seq += 1;
        let seq = l.seq;
        drop(l);
        self.inner.wake.notify_one();
        seq
    }

    /// The state of `client`'s session, if it has any.
    pub(super) fn get(&self, client: &str) -> Option<SessionState> {
        self.inner.locked.lock().sessions.get(client).cloned()
    }

    /// Every record up to this sequence number is on disk.
    pub(super) fn durable_seq(&self) -> u64 {
        *self.inner.durable.borrow()
    }

    pub(super) fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.inner.durable.subscribe()
    }
}

impl Drop for SessionStore {
    fn drop(&mut self) {
        self.inner.locked.lock().closed = true;
        self.inner.wake.notify_one();
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
    }
}

/// The writer thread: one write and one fdatasync per batch, then the durable sequence moves.
fn write_loop(inner: &Inner, path: PathBuf, mut file: fs::File, base: u64, fsync: bool) {
    // Bytes of the last snapshot, and bytes appended since.
    let mut snapshot_bytes = base;
    let mut appended: u64 = 0;
    loop {
        let (batch, seq, snapshot) = {
            let mut l = inner.locked.lock();
            while l.pending.is_empty() && !l.closed {
                inner.wake.wait(&mut l);
            }
            if l.pending.is_empty() {
                return;
            }
            let compact = appended > COMPACT_BYTES_MIN.max(4 * snapshot_bytes);
            // A snapshot taken under the lock holds every record so far, pending ones too.
            let snapshot = compact.then(|| encode_snapshot(&l.sessions));
            (std::mem::take(&mut l.pending), l.seq, snapshot)
        };
        let result = match &snapshot {
            Some(snap) => write_snapshot(&path, snap).map(|f| {
                file = f;
                snapshot_bytes = snap.len() as u64;
                appended = 0;
            }),
            None => file
                .write_all(&batch)
                .and_then(|()| if fsync { file.sync_data() } else { Ok(()) })
                .map(|()| appended += batch.len() as u64),
        };
        if let Err(e) = result {
            // As the message store does: nothing is confirmed after a failed write or sync.
            tracing::error!(file = %path.display(), error = %e, "MQTT session journal write failed; nothing more is confirmed until restart");
            return;
        }
        inner.durable.send_replace(seq);
    }
}

/// Writes a new journal holding `records` (after the header) in place of the old one.
fn write_snapshot(path: &Path, records: &[u8]) -> io::Result<fs::File> {
    let tmp = path.with_extension("log.tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&VERSION.to_le_bytes())?;
        f.write_all(records)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    fs::OpenOptions::new().append(true).open(path)
}

fn encode_snapshot(sessions: &HashMap<String, SessionState>) -> Vec<u8> {
    let mut out = Vec::new();
    for (client, s) in sessions {
        for op in s.records() {
            encode_record(&mut out, client, op);
        }
    }
    out
}

fn encode_record(out: &mut Vec<u8>, client: &str, op: Op) {
    let mut body = Vec::with_capacity(16 + client.len());
    let (kind, pid, msg_id) = match op {
        Op::Qos2In(p) => (1u8, Some(p), None),
        Op::Qos2InDone(p) => (2, Some(p), None),
        Op::Published(p, m) => (3, Some(p), Some(m)),
        Op::Released(p) => (4, Some(p), None),
        Op::Done(p) => (5, Some(p), None),
        Op::Clear => (6, None, None),
    };
    body.push(kind);
    // Client ids are at most 65,535 bytes (an MQTT string).
    body.extend_from_slice(&(client.len() as u16).to_le_bytes());
    body.extend_from_slice(client.as_bytes());
    if let Some(p) = pid {
        body.extend_from_slice(&p.to_le_bytes());
    }
    if let Some(m) = msg_id {
        body.extend_from_slice(&m.to_le_bytes());
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// Replays a journal into `sessions`; returns how many bytes at the end were not records (a
/// torn tail, or damage: everything from the first bad record on is dropped).
fn replay(bytes: &[u8], sessions: &mut HashMap<String, SessionState>) -> usize {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC || bytes[8..12] != VERSION.to_le_bytes() {
        return bytes.len();
    }
    let mut rest = &bytes[HEADER_LEN..];
    while let Some((client, op, used)) = decode_record(rest) {
        let s = sessions.entry(client).or_default();
        s.apply(op);
        rest = &rest[used..];
    }
    rest.len()
}

fn decode_record(b: &[u8]) -> Option<(String, Op, usize)> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let body = b.get(8..8usize.checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let kind = *body.first()?;
    let clen = u16::from_le_bytes(body.get(1..3)?.try_into().ok()?) as usize;
    let client = std::str::from_utf8(body.get(3..3 + clen)?)
        .ok()?
        .to_string();
    let rest = &body[3 + clen..];
    let pid = || Some(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?));
    let op = match kind {
        1 => Op::Qos2In(pid()?),
        2 => Op::Qos2InDone(pid()?),
        3 => Op::Published(
            pid()?,
            u64::from_le_bytes(rest.get(2..10)?.try_into().ok()?),
        ),
        4 => Op::Released(pid()?),
        5 => Op::Done(pid()?),
        6 => Op::Clear,
        _ => return None,
    };
    Some((client, op, 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait_durable(s: &SessionStore, seq: u64) {
        let mut rx = s.subscribe_durable();
        while *rx.borrow_and_update() < seq {
            rx.changed().await.unwrap();
        }
    }

    #[tokio::test]
    async fn state_survives_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = SessionStore::open(dir.path(), false).unwrap();
        s.record("c", Op::Qos2In(7));
        s.record("c", Op::Qos2In(8));
        s.record("c", Op::Qos2InDone(7));
        s.record("c", Op::Published(3, 30));
        s.record("c", Op::Published(1, 10));
        s.record("c", Op::Published(2, 20));
        s.record("c", Op::Released(1));
        s.record("c", Op::Done(2));
        s.record("gone", Op::Qos2In(1));
        let last = s.record("gone", Op::Clear);
        wait_durable(&s, last).await;
        let want = SessionState {
            qos2_in: BTreeSet::from([8]),
            published: vec![(3, 30)],
            released: vec![(1, 10)],
        };
        assert_eq!(s.get("c"), Some(want.clone()));
        assert_eq!(s.get("gone"), None);
        drop(s);
        // Reopened (replay, then a snapshot), and reopened again (replay of the snapshot).
        for _ in 0..2 {
            let s = SessionStore::open(dir.path(), false).unwrap();
            assert_eq!(s.get("c"), Some(want.clone()));
            assert_eq!(s.get("gone"), None);
        }
    }

    #[tokio::test]
    async fn a_torn_tail_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = SessionStore::open(dir.path(), false).unwrap();
        s.record("c", Op::Qos2In(1));
        let last = s.record("c", Op::Qos2In(2));
        wait_durable(&s, last).await;
        drop(s);
        let path = dir.path().join("mqtt-sessions.log");
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes.truncate(n - 3); // the second record torn
        fs::write(&path, &bytes).unwrap();
        let s = SessionStore::open(dir.path(), false).unwrap();
        assert_eq!(s.get("c").unwrap().qos2_in, BTreeSet::from([1]));
    }

    #[test]
    fn snapshot_records_rebuild_the_same_state() {
        let mut st = SessionState::default();
        for op in [
            Op::Published(5, 50),
            Op::Published(6, 60),
            Op::Released(6),
            Op::Published(7, 70),
            Op::Released(5),
            Op::Qos2In(9),
        ] {
            st.apply(op);
        }
        let mut again = SessionState::default();
        for op in st.records() {
            again.apply(op);
        }
        assert_eq!(again, st);
        assert_eq!(st.released, vec![(6, 60), (5, 50)], "PUBREC order");
    }
}
