//! Segment log store: durable storage for the persistent messages of durable queues.
//!
//! Callers hand records to one writer thread and get an [`Lsn`] back at once; the thread writes
//! whatever has accumulated with one write and one fdatasync (group commit), then publishes the
//! new [`Store::durable_lsn`]. A confirm waits for that, never for its own fsync.
//!
//! Bytes on disk, recovery rules, deletion and compaction: docs/storage.md.
//!
//! One process per directory: the store itself takes no lock; the engine locks
//! `<data_dir>/LOCK` before opening it.

mod format;
mod recovery;
mod segment;
mod state;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use writer::{Cmd, Signals, Writer, WriterInit};

pub type QueueId = u64;
/// Log sequence number: one per call to `enqueue`, `ack`, `ack_many` or `drop_queue`, increasing
/// in the order the records are written, starting at 1 in an empty store. After a restart they
/// continue above the highest Lsn on disk; a waiter never outlives the process, so an Lsn whose
/// call needed no record may be handed out again.
pub type Lsn = u64;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub dir: PathBuf,
    /// A segment is closed and a new one started when the next record would take it past this.
    pub segment_bytes_max: u64,
    /// Off only in tests and benchmarks: without it nothing survives a power loss, and a
    /// compaction can lose the messages it moves.
    pub fsync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            dir: PathBuf::from("wharf-data/msgs"),
            segment_bytes_max: 64 << 20,
            fsync: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecoveredMessage {
    pub msg_id: u64,
    /// Queues in which it is still live (not acked, queue not dropped), ascending.
    pub queues: Vec<QueueId>,
    pub payload: Bytes,
}

#[derive(Debug, Default)]
pub struct Recovery {
    /// Ordered by msg_id ascending.
    pub messages: Vec<RecoveredMessage>,
    /// Highest msg_id ever stored (0 in an empty store); new ids must be above it.
    pub max_msg_id: u64,
    /// Bytes cut from a torn or corrupt tail of the last segment.
    pub truncated_bytes: u64,
    /// Segment files replayed.
    pub segments: usize,
}

/// Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    /// Lsn assignment and the send happen under one lock, so channel order is Lsn order.
    tx: Mutex<Option<Sender>>,
    /// Held for the whole join, so a second `close` returns only once the first has finished.
    thread: Mutex<Option<JoinHandle<()>>>,
    sig: Signals,
}

struct Sender {
    last_lsn: Lsn,
    tx: mpsc::Sender<Cmd>,
}

impl Store {
    /// Opens (creating it if missing) the directory, recovers it and starts the writer thread.
    /// Fails on an I/O error or on a segment written by a newer format version.
    pub fn open(opts: StoreOptions) -> io::Result<(Store, Recovery)> {
        let opened = recovery::recover(&opts)?;
        let sig = Signals {
            durable: Arc::new(watch::Sender::new(opened.last_lsn)),
            syncs: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicBool::new(false)),
            crash: Arc::new(AtomicBool::new(false)),
        };
        let mut writer = Writer::new(WriterInit {
            dir: opts.dir.clone(),
            segment_bytes_max: opts.segment_bytes_max.max(1),
            fsync: opts.fsync,
            state: opened.state,
            active: opened.active,
            last_lsn: opened.last_lsn,
            max_msg_id: opened.max_msg_id,
            sig: sig.clone(),
        });
        // Before returning, so the directory the caller sees is already cleaned up.
        writer.delete_dead();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("wharf-store".into())
            .spawn(move || writer.run(rx))?;
        let store = Store {
            shared: Arc::new(Shared {
                tx: Mutex::new(Some(Sender {
                    last_lsn: opened.last_lsn,
                    tx,
                })),
                thread: Mutex::new(Some(thread)),
                sig,
            }),
        };
        Ok((store, opened.recovery))
    }

    /// Stores a message once for all of `queues`; it stays live until acked in each of them.
    /// Returns at once; the message is durable when `durable_lsn()` reaches the returned Lsn.
    /// A msg_id enqueued again replaces the earlier record (its queue set included).
    /// Returns 0, storing nothing, after `close`.
    ///
    /// # Panics
    /// If the payload does not fit one record (about 4 GiB); message size limits are far lower.
    pub fn enqueue(&self, msg_id: u64, queues: &[QueueId], payload: Bytes) -> Lsn {
        assert!(
            payload.len() <= format::max_payload(queues.len()),
            "message payload of {} bytes exceeds the store's record size",
            payload.len()
        );
        let queues = queues.to_vec();
        self.submit(|lsn| Cmd::Enqueue {
            lsn,
            msg_id,
            queues,
            payload,
        })
    }

    /// The message is gone from `queue` (acked, expired, dead-lettered, purged...). Must come
    /// after the `enqueue` of that message returned. Needs no fsync before the ack is answered.
    pub fn ack(&self, queue: QueueId, msg_id: u64) -> Lsn {
        self.submit(|lsn| Cmd::Ack { lsn, queue, msg_id })
    }

    /// One record for many acks in one queue (purge, multiple-ack).
    pub fn ack_many(&self, queue: QueueId, msg_ids: &[u64]) -> Lsn {
        let msg_ids = msg_ids.to_vec();
        self.submit(|lsn| Cmd::AckMany {
            lsn,
            queue,
            msg_ids,
        })
    }

    /// Every message of `queue` is gone.
    pub fn drop_queue(&self, queue: QueueId) -> Lsn {
        self.submit(|lsn| Cmd::DropQueue { lsn, queue })
    }

    /// Highest Lsn handed out so far: waiting for it covers every record submitted before the
    /// call (used where a record's own Lsn is not returned, e.g. an ack under a queue lock).
    pub fn submitted_lsn(&self) -> Lsn {
        self.shared.tx.lock().as_ref().map_or(0, |s| s.last_lsn)
    }

    /// Highest Lsn such that it and every Lsn before it are written and fsynced.
    pub fn durable_lsn(&self) -> Lsn {
        *self.shared.sig.durable.borrow()
    }

    /// Resolves when `durable_lsn() >= lsn`. Cancel-safe: dropping the future loses nothing.
    /// Never resolves for an Lsn the store cannot make durable any more (see [`Store::is_failed`]).
    pub async fn wait_durable(&self, lsn: Lsn) {
        let mut rx = self.shared.sig.durable.subscribe();
        if rx.wait_for(|&d| d >= lsn).await.is_err() {
            // Unreachable while `self` holds the sender; never report durability we lack.
            std::future::pending::<()>().await;
        }
    }

    /// For sessions that confirm many publishes at once: the value is `durable_lsn()`.
    pub fn subscribe_durable(&self) -> watch::Receiver<Lsn> {
        self.shared.sig.durable.subscribe()
    }

    /// Flushes and fsyncs everything handed over so far, then stops and joins the writer thread.
    /// Idempotent. Blocks for one fsync at most; from async code, prefer `spawn_blocking`.
    pub fn close(&self) {
        self.shared.close();
    }

    /// True once a write or fsync failed: from then on nothing more becomes durable and the
    /// broker should stop accepting persistent messages and be restarted (recovery repairs
    /// the tail).
    pub fn is_failed(&self) -> bool {
        self.shared.sig.failed.load(Ordering::Relaxed)
    }

    /// Group commits done so far (fdatasyncs when `fsync` is on). For tests and metrics.
    pub fn sync_count(&self) -> u64 {
        self.shared.sig.syncs.load(Ordering::Relaxed)
    }

    fn submit(&self, cmd: impl FnOnce(Lsn) -> Cmd) -> Lsn {
        let mut guard = self.shared.tx.lock();
        let Some(sender) = guard.as_mut() else {
            return 0;
        };
        let lsn = sender.last_lsn + 1;
        if sender.tx.send(cmd(lsn)).is_err() {
            // Only if the writer thread panicked: the record is lost and never confirmed.
            if !self.shared.sig.failed.swap(true, Ordering::Relaxed) {
                tracing::error!("message store writer thread is gone; nothing more is stored");
            }
        }
        sender.last_lsn = lsn;
        lsn
    }

    /// Stops the writer as a crash would: what is queued and not yet written is lost.
    #[cfg(test)]
    fn simulate_crash(&self) {
        self.shared.sig.crash.store(true, Ordering::Relaxed);
        self.shared.close();
    }
}

impl Shared {
    fn close(&self) {
        let mut thread = self.thread.lock();
        // Dropping the sender is the stop signal: the writer drains and commits what was sent.
        drop(self.tx.lock().take());
        if let Some(handle) = thread.take() {
            if handle.join().is_err() {
                tracing::error!("message store writer thread panicked");
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Dropping the last handle without `close` still flushes: records already handed over
        // get written, and the thread is not left running against the directory.
        self.close();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("durable_lsn", &self.durable_lsn())
            .field("failed", &self.is_failed())
            .finish()
    }
}
