//! The writer thread: group commit, segment rolling, deletion and compaction.
//!
//! Only this thread touches segment files after `Store::open` returns, so the bookkeeping needs
//! no lock.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, error, info};

use super::format::{self, Body, Header, HEADER_LEN, PREFIX_LEN};
use super::segment;
use super::state::{SegInfo, State};
use super::{Lsn, QueueId};

/// Stop draining the channel once this much is buffered, so one commit's memory stays bounded
/// and the first records of a burst are not held back behind the whole burst.
const BATCH_BYTES_MAX: usize = 8 << 20;
/// Compaction work per round, between two batches, so confirms are never delayed by more than
/// copying this much.
const COMPACT_CHUNK_BYTES: u64 = 4 << 20;
/// Keeps one ack record (and its checksum span) to 512 KiB however many ids a purge acks.
const ACK_IDS_PER_RECORD: usize = 64 * 1024;
/// The active segment is extended with zeros this much at a time, ahead of its records. A
/// group commit then writes inside space the file already has, so its fdatasync flushes the
/// data and no inode (size, block allocation): on ext4 that is one device write and a flush
/// instead of three writes and a flush, about a third less time per commit. Recovery reads
/// a zero tail as the end of the segment (docs/storage.md).
const PREALLOC_BYTES: u64 = 1 << 20;
/// Zeros written per call while extending.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

pub(super) enum Cmd {
    Enqueue {
        lsn: Lsn,
        msg_id: u64,
        queues: Vec<QueueId>,
        payload: Bytes,
    },
    Ack {
        lsn: Lsn,
        queue: QueueId,
        msg_id: u64,
    },
    AckMany {
        lsn: Lsn,
        queue: QueueId,
        msg_ids: Vec<u64>,
    },
    DropQueue {
        lsn: Lsn,
        queue: QueueId,
    },
}

/// What the writer shares with `Store` handles.
#[derive(Clone)]
pub(super) struct Signals {
    pub durable: Arc<watch::Sender<Lsn>>,
    pub syncs: Arc<AtomicU64>,
    pub failed: Arc<AtomicBool>,
    /// Tests set it to make the writer stop as a crash would: without writing what is queued.
    pub crash: Arc<AtomicBool>,
}

pub(super) struct Active {
    pub seg: u64,
    /// Opened for writing, not appending: records go at `size`, inside the zeroed space.
    pub file: File,
    /// Bytes of records (and header) in the file (not counting `Writer::buf`).
    pub size: u64,
    /// The file's length: `size` plus the zeros written ahead of it.
    pub allocated: u64,
}

pub(super) struct Writer {
    dir: PathBuf,
    segment_bytes_max: u64,
    fsync: bool,
    state: State,
    active: Active,
    /// Written to the file but not yet fsynced.
    dirty: bool,
    buf: Vec<u8>,
    /// Highest Lsn handled, whether or not it needed a record.
    last_lsn: Lsn,
    max_msg_id: u64,
    sig: Signals,
    failed: bool,
    acked: Vec<u64>,
    compaction: Compaction,
    /// The segment whose deletion last failed, so the error is logged once, not every batch.
    delete_failed: Option<u64>,
}

#[derive(Default)]
struct Compaction {
    seg: Option<u64>,
    /// msg_ids still to copy out of `seg`, highest offset first (we pop from the end).
    todo: Vec<u64>,
    /// A segment whose live records could not be read back; not retried until restart.
    blocked: Option<u64>,
}

pub(super) struct WriterInit {
    pub dir: PathBuf,
    pub segment_bytes_max: u64,
    pub fsync: bool,
    pub state: State,
    pub active: Active,
    pub last_lsn: Lsn,
    pub max_msg_id: u64,
    pub sig: Signals,
}

impl Writer {
    pub fn new(init: WriterInit) -> Writer {
        Writer {
            dir: init.dir,
            segment_bytes_max: init.segment_bytes_max,
            fsync: init.fsync,
            state: init.state,
            active: init.active,
            dirty: false,
            buf: Vec::with_capacity(64 * 1024),
            last_lsn: init.last_lsn,
            max_msg_id: init.max_msg_id,
            sig: init.sig,
            failed: false,
            acked: Vec::new(),
            compaction: Compaction::default(),
            delete_failed: None,
        }
    }

    pub fn run(mut self, rx: Receiver<Cmd>) {
        // Compaction may be due right after recovery.
        let mut housekeeping_due = true;
        loop {
            let first = if housekeeping_due && !self.failed {
                match rx.try_recv() {
                    Ok(cmd) => Some(cmd),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(cmd) => Some(cmd),
                    Err(_) => break,
                }
            };
            if self.sig.crash.load(Ordering::Relaxed) {
                return;
            }
            if self.failed {
                // Nothing is written any more, so nothing more may be confirmed; draining only
                // keeps memory from growing until the broker is restarted.
                continue;
            }
            if let Some(cmd) = first {
                if let Err(e) = self.batch(cmd, &rx) {
                    self.fail("write", &e);
                    continue;
                }
            }
            housekeeping_due = match self.housekeep() {
                Ok(more) => more,
                Err(e) => {
                    self.fail("compaction", &e);
                    false
                }
            };
        }
        // Disconnected: every command sent was handled by a batch that was committed. A clean
        // stop leaves no zeros behind.
        if let Err(e) = trim(&self.active, self.fsync) {
            debug!(error = %e, "could not trim the active segment's preallocated space");
        }
        debug!(last_lsn = self.last_lsn, "store writer stopped");
    }

    fn fail(&mut self, what: &str, e: &io::Error) {
        // After a failed fdatasync the kernel may have dropped the dirty pages and a retry can
        // report success for data that is gone, so the only safe answer is to stop confirming.
        error!(
            error = %e,
            segment = self.active.seg,
            durable_lsn = *self.sig.durable.borrow(),
            "message store {what} failed; no further message will be confirmed until restart"
        );
        self.failed = true;
        self.sig.failed.store(true, Ordering::Relaxed);
    }

    /// One group commit: everything the channel holds now, one write, one fdatasync.
    fn batch(&mut self, first: Cmd, rx: &Receiver<Cmd>) -> io::Result<()> {
        self.handle(first)?;
        while self.buf.len() < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(cmd) => self.handle(cmd)?,
                Err(_) => break,
            }
        }
        self.commit()?;
        let lsn = self.last_lsn;
        self.sig.durable.send_if_modified(|d| {
            let advanced = lsn > *d;
            *d = (*d).max(lsn);
            advanced
        });
        Ok(())
    }

    fn handle(&mut self, cmd: Cmd) -> io::Result<()> {
        match cmd {
            Cmd::Enqueue {
                lsn,
                msg_id,
                mut queues,
                payload,
            } => {
                self.max_msg_id = self.max_msg_id.max(msg_id);
                queues.sort_unstable();
                queues.dedup();
                // Not written: recovery would not see it either, so the views stay equal.
                if !queues.is_empty() {
                    self.append_enqueue(lsn, msg_id, queues, &payload)?;
                }
                self.last_lsn = lsn;
            }
            Cmd::Ack { lsn, queue, msg_id } => {
                self.append_acks(lsn, queue, &[msg_id])?;
                self.last_lsn = lsn;
            }
            Cmd::AckMany {
                lsn,
                queue,
                msg_ids,
            } => {
                for chunk in msg_ids.chunks(ACK_IDS_PER_RECORD) {
                    self.append_acks(lsn, queue, chunk)?;
                }
                self.last_lsn = lsn;
            }
            Cmd::DropQueue { lsn, queue } => {
                if self.state.drop_queue(queue) > 0 {
                    self.reserve(format::DROP_QUEUE_LEN)?;
                    format::put_drop_queue(&mut self.buf, lsn, queue);
                }
                self.last_lsn = lsn;
            }
        }
        Ok(())
    }

    fn append_enqueue(
        &mut self,
        lsn: Lsn,
        msg_id: u64,
        queues: Vec<QueueId>,
        payload: &[u8],
    ) -> io::Result<()> {
        let len = format::enqueue_len(queues.len(), payload.len());
        self.reserve(len)?;
        let offset = self.active.size + self.buf.len() as u64;
        format::put_enqueue(&mut self.buf, lsn, msg_id, &queues, payload);
        self.state
            .enqueue(msg_id, queues, self.active.seg, offset, len as u64);
        Ok(())
    }

    /// Acks of messages not live in `queue` are dropped here: replaying them would change
    /// nothing, and writing them would only grow the log.
    fn append_acks(&mut self, lsn: Lsn, queue: QueueId, msg_ids: &[u64]) -> io::Result<()> {
        let mut acked = std::mem::take(&mut self.acked);
        acked.clear();
        self.state.ack(queue, msg_ids, &mut acked);
        let res = if acked.is_empty() {
            Ok(())
        } else {
            self.reserve(format::ack_len(acked.len())).map(|()| {
                format::put_ack(&mut self.buf, lsn, queue, &acked);
            })
        };
        self.acked = acked;
        res
    }

    /// Rolls to a new segment first if a record of `len` bytes would overflow the current one.
    /// A record larger than a whole segment still goes in, alone.
    fn reserve(&mut self, len: usize) -> io::Result<()> {
        let pending = self.active.size + self.buf.len() as u64;
        if pending > HEADER_LEN && pending + len as u64 > self.segment_bytes_max {
            self.roll()?;
        }
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        // The old segment must be durable before the batch's Lsn is published, and it will not
        // be written again.
        self.commit()?;
        let header = Header {
            segment: self.active.seg + 1,
            lsn_floor: self.last_lsn,
            max_msg_id: self.max_msg_id,
        };
        let file = segment::create(&self.dir, &header, self.fsync)?;
        // The old segment is complete: its zeros go (not fsynced: recovery reads a zero tail
        // as the end of a segment anyway).
        if let Err(e) = trim(&self.active, false) {
            debug!(error = %e, segment = self.active.seg, "could not trim a rolled segment");
        }
        debug!(
            segment = header.segment,
            previous_bytes = self.active.size,
            "rolled to a new segment"
        );
        self.active = Active {
            seg: header.segment,
            file,
            size: HEADER_LEN,
            allocated: HEADER_LEN,
        };
        self.state.segs.insert(
            header.segment,
            SegInfo {
                size: HEADER_LEN,
                ..SegInfo::default()
            },
        );
        // Everything before is committed, so this is as safe here as after a batch, and keeps
        // a batch spanning many segments from holding them all on disk until it ends.
        self.delete_dead();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        use std::os::unix::fs::FileExt;
        let end = self.active.size + self.buf.len() as u64;
        self.active.file.write_all_at(&self.buf, self.active.size)?;
        if end > self.active.allocated {
            // Past the zeros: extend by whole steps, not past the segment's cap (a record
            // larger than a segment gets no zeros after it).
            let target = end
                .next_multiple_of(PREALLOC_BYTES)
                .max(end + PREALLOC_BYTES / 2)
                .min(self.segment_bytes_max.max(end));
            let mut at = end;
            while at < target {
                let n = (target - at).min(ZEROS.len() as u64) as usize;
                self.active.file.write_all_at(&ZEROS[..n], at)?;
                at += n as u64;
            }
            self.active.allocated = target;
        }
        self.active.size = end;
        if let Some(info) = self.state.segs.get_mut(&self.active.seg) {
            info.size = self.active.size;
        }
        self.dirty = true;
        self.buf.clear();
        if self.buf.capacity() > 2 * BATCH_BYTES_MAX {
            self.buf.shrink_to(BATCH_BYTES_MAX);
        }
        Ok(())
    }

    fn commit(&mut self) -> io::Result<()> {
        self.flush()?;
        if self.dirty {
            if self.fsync {
                self.active.file.sync_data()?;
            }
            self.dirty = false;
            self.sig.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Deletes what can go, then does one round of compaction. Returns whether compaction has
    /// more to do (the caller then polls the channel instead of blocking on it).
    pub fn housekeep(&mut self) -> io::Result<bool> {
        self.delete_dead();
        let more = self.compact_round()?;
        if more {
            // The copies must be durable before the segment holding the originals goes.
            self.commit()?;
            self.delete_dead();
        }
        Ok(more)
    }

    /// Oldest-first only: then every ack in a deleted segment refers to a message in it or in
    /// an older, already deleted segment, and no surviving record needs what was deleted.
    /// Called only after a commit, so the records that made these segments dead are on disk.
    pub fn delete_dead(&mut self) {
        while let Some((&seg, info)) = self.state.segs.first_key_value() {
            if seg == self.active.seg || info.live_msgs > 0 {
                break;
            }
            let path = segment::path(&self.dir, seg);
            let res = match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
            // Each deletion is durable before the next: were a crash to undo the deletion of N
            // but not that of N+1, the acks in N+1 would be gone and the messages in N they
            // acked would come back.
            .and_then(|()| {
                if self.fsync {
                    segment::sync_dir(&self.dir)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = res {
                if self.delete_failed != Some(seg) {
                    error!(error = %e, path = %path.display(), "could not delete a dead segment; will retry");
                    self.delete_failed = Some(seg);
                }
                break;
            }
            debug!(segment = seg, bytes = info.size, "deleted dead segment");
            self.state.segs.remove(&seg);
        }
    }

    /// Copies live messages out of the oldest segment to the head, so it can be deleted and stop
    /// pinning every segment after it. Due when the oldest is mostly dead (under a quarter of
    /// its bytes live, with at least three segments), or when the whole log is mostly dead
    /// (more than twice the live bytes plus two segments of slack): the second rule bounds the
    /// disk used by a backlog that keeps an old segment more than a quarter live.
    fn compact_round(&mut self) -> io::Result<bool> {
        let Some((&oldest, &info)) = self.state.segs.first_key_value() else {
            return Ok(false);
        };
        if oldest == self.active.seg
            || info.live_msgs == 0
            || self.compaction.blocked == Some(oldest)
        {
            return Ok(false);
        }
        let sparse = self.state.segs.len() >= 3 && info.live_bytes * 4 < info.size;
        // Headers count as live: they cannot be compacted away, and with tiny segments they
        // would otherwise keep this rule true forever.
        let headers = self.state.segs.len() as u64 * HEADER_LEN;
        let bloated = self.state.total_size()
            > 2 * (self.state.total_live_bytes() + headers) + 2 * self.segment_bytes_max;
        if !sparse && !bloated {
            return Ok(false);
        }
        if self.compaction.seg != Some(oldest) {
            let mut victims: Vec<(u64, u64)> = self
                .state
                .msgs
                .iter()
                .filter(|(_, l)| l.seg == oldest)
                .map(|(&id, l)| (l.offset, id))
                .collect();
            victims.sort_unstable_by(|a, b| b.cmp(a));
            self.compaction.todo = victims.into_iter().map(|(_, id)| id).collect();
            self.compaction.seg = Some(oldest);
            info!(
                segment = oldest,
                live_msgs = info.live_msgs,
                live_bytes = info.live_bytes,
                size = info.size,
                "compacting the oldest segment"
            );
        }
        let path = segment::path(&self.dir, oldest);
        let mut reader = match File::open(&path) {
            Ok(f) => BufReader::with_capacity(1 << 20, f),
            Err(e) => {
                self.block_compaction(oldest, &path, 0, 0, &e.to_string());
                return Ok(false);
            }
        };
        let mut pos = 0u64;
        let mut record = Vec::new();
        let mut copied = 0u64;
        while copied < COMPACT_CHUNK_BYTES {
            let Some(id) = self.compaction.todo.pop() else {
                break;
            };
            let Some(live) = self.state.msgs.get(&id).filter(|l| l.seg == oldest) else {
                continue;
            };
            let (offset, len, queues) = (live.offset, live.len, live.queues.clone());
            let read = read_record_at(&mut reader, &mut pos, offset, len, &mut record)
                .map_err(|e| e.to_string())
                .and_then(|()| read_enqueue(&record, id).map_err(str::to_owned));
            let payload = match read {
                Ok(p) => p,
                Err(why) => {
                    self.block_compaction(oldest, &path, offset, id, &why);
                    return Ok(copied > 0);
                }
            };
            // Carries the last Lsn: a copy is not a new event and nobody waits for it.
            self.append_enqueue(self.last_lsn, id, queues, payload)?;
            copied += len;
        }
        Ok(copied > 0)
    }
}

impl Writer {
    /// A read error here is not a write error: the log stays correct, only this segment stays.
    fn block_compaction(
        &mut self,
        seg: u64,
        path: &std::path::Path,
        offset: u64,
        msg_id: u64,
        why: &str,
    ) {
        error!(
            path = %path.display(), offset, msg_id, reason = why,
            "a live record cannot be read back; this segment will not be compacted and pins \
             the log until its messages are acked or the broker restarts"
        );
        self.compaction.blocked = Some(seg);
    }
}

/// Cuts the zeros after a segment's records.
fn trim(active: &Active, fsync: bool) -> io::Result<()> {
    if active.allocated > active.size {
        active.file.set_len(active.size)?;
        if fsync {
            active.file.sync_all()?;
        }
    }
    Ok(())
}

fn seek_to(reader: &mut BufReader<File>, pos: &mut u64, offset: u64) -> io::Result<()> {
    if offset >= *pos {
        // Within the buffer this costs no syscall.
        reader.seek_relative((offset - *pos) as i64)?;
    } else {
        reader.seek(SeekFrom::Start(offset))?;
    }
    *pos = offset;
    Ok(())
}

/// The payload of the enqueue record `record` (prefix included) for `msg_id`, checked.
pub(super) fn read_enqueue(record: &[u8], msg_id: u64) -> Result<&[u8], &'static str> {
    let prefix: &[u8; PREFIX_LEN] = record
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or("short record")?;
    let (len, crc) = format::parse_prefix(prefix).ok_or("bad record length")?;
    if len + PREFIX_LEN != record.len() {
        return Err("record length changed");
    }
    match format::decode(&record[PREFIX_LEN..], crc)?.body {
        Body::Enqueue {
            msg_id: id,
            payload,
            ..
        } if id == msg_id => Ok(payload),
        _ => Err("not the enqueue record of this message"),
    }
}

/// Positions `reader` for record reads by offset, in ascending order where possible.
pub(super) fn read_record_at(
    reader: &mut BufReader<File>,
    pos: &mut u64,
    offset: u64,
    len: u64,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    seek_to(reader, pos, offset)?;
    out.resize(len as usize, 0);
    reader.read_exact(out)?;
    *pos += len;
    Ok(())
}
