//! The FIFO deduplication window (5 minutes by MessageDeduplicationId or body SHA-256), kept
//! in memory and journaled to `<data_dir>/sqs-dedup.jsonl` so a restart inside the window still
//! answers a repeat with the first send's ids instead of enqueueing it twice.
//!
//! Why a journal and not the message store: the window must outlive the message (a repeat
//! after the first copy was received and deleted is still a duplicate), and the store drops
//! deleted messages. Why not `sqs-queues.json`: that file is rewritten whole on each change, and
//! this one changes on every FIFO send. One JSON line per new id, appended before the send is
//! answered; written, not fsynced: it survives a process crash (SIGKILL), and an OS crash can
//! lose the last lines, which turns a later repeat into a second copy (at-least-once, never a
//! lost message). Expiry is wall-clock time, so it means the same across a restart. The file is
//! rewritten with the live entries at startup and, while running, when it holds more than twice
//! as many lines as live entries (checked every `COMPACT_MIN` lines or more).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// SQS's FIFO deduplication interval.
pub const WINDOW_MS: u64 = 300_000;
/// Above this many remembered ids, expired ones are swept on the next lookup.
const SWEEP_LEN: usize = 4096;
/// The journal is not compacted below this many lines.
const COMPACT_MIN: usize = 4096;
const FILE: &str = "sqs-dedup.jsonl";

/// (vhost, queue, scope key): the scope key is the dedup id, or group + NUL + id.
pub type Key = (String, String, String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    v: String,
    q: String,
    k: String,
    /// Expiry, ms since the epoch.
    until: u64,
    id: String,
    seq: String,
}

#[derive(Debug)]
struct Inner {
    window: HashMap<Key, (u64, String, String)>,
    file: File,
    /// Lines in the journal.
    lines: usize,
    /// Sweep and maybe compact when `lines` reaches this.
    next_check: usize,
}

#[derive(Debug)]
pub struct DedupStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl DedupStore {
    /// Loads the live entries of the journal (a torn last line is skipped) and rewrites it.
    pub fn open(data_dir: &Path, now_ms: u64) -> anyhow::Result<Self> {
        Self::open_file(data_dir, FILE, now_ms)
    }

    /// The same window journaled in a file of its own (SNS FIFO topics use one).
    pub fn open_file(data_dir: &Path, file_name: &str, now_ms: u64) -> anyhow::Result<Self> {
        let path = data_dir.join(file_name);
        let mut window = HashMap::new();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                if let Ok(l) = serde_json::from_str::<Line>(&line) {
                    if l.until > now_ms {
                        window.insert((l.v, l.q, l.k), (l.until, l.id, l.seq));
                    }
                }
            }
        }
        let file = rewrite(&path, &window)?;
        let lines = window.len();
        Ok(DedupStore {
            path,
            inner: Mutex::new(Inner {
                window,
                file,
                lines,
                next_check: lines + COMPACT_MIN,
            }),
        })
    }

    /// The (message id, sequence number) of a send of `key` within the window.
    pub fn lookup(&self, key: &Key, now_ms: u64) -> Option<(String, String)> {
        let mut inner = self.inner.lock();
        if inner.window.len() > SWEEP_LEN {
            inner.window.retain(|_, (until, _, _)| *until > now_ms);
        }
        match inner.window.get(key) {
            Some((until, id, seq)) if *until > now_ms => Some((id.clone(), seq.clone())),
            _ => None,
        }
    }

    /// Remembers a new send for the window and journals it.
    pub fn insert(&self, key: Key, id: String, seq: String, now_ms: u64) -> std::io::Result<()> {
        let until = now_ms + WINDOW_MS;
        let mut line = serde_json::to_vec(&Line {
            v: key.0.clone(),
            q: key.1.clone(),
            k: key.2.clone(),
            until,
            id: id.clone(),
            seq: seq.clone(),
        })?;
        line.push(b'\n');
        let mut inner = self.inner.lock();
        inner.window.insert(key, (until, id, seq));
        inner.file.write_all(&line)?;
        inner.lines += 1;
        if inner.lines >= inner.next_check {
            // Amortized: the sweep costs O(live) and runs once per max(COMPACT_MIN, live) lines.
            inner.window.retain(|_, (u, _, _)| *u > now_ms);
            if inner.lines > 2 * inner.window.len() {
                inner.file = rewrite(&self.path, &inner.window)?;
                inner.lines = inner.window.len();
            }
            inner.next_check = inner.lines + COMPACT_MIN.max(inner.window.len());
        }
        Ok(())
    }
}

/// Writes the live entries to a new journal (temporary file, then rename) and opens it for
/// appending.
fn rewrite(path: &Path, window: &HashMap<Key, (u64, String, String)>) -> std::io::Result<File> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = std::io::BufWriter::new(File::create(&tmp)?);
        for ((v, q, k), (until, id, seq)) in window {
            let line = Line {
                v: v.clone(),
                q: q.clone(),
                k: k.clone(),
                until: *until,
                id: id.clone(),
                seq: seq.clone(),
            };
            serde_json::to_writer(&mut f, &line)?;
            f.write_all(b"\n")?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Key {
        ("v".into(), "q.fifo".into(), k.into())
    }

    #[test]
    fn window_survives_reopen_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let d = DedupStore::open(dir.path(), 1_000).unwrap();
        d.insert(key("a"), "id-a".into(), "1".into(), 1_000)
            .unwrap();
        d.insert(key("b"), "id-b".into(), "2".into(), 2_000)
            .unwrap();
        drop(d);
        // A torn last line (crash mid-append) is skipped.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all(b"{\"v\":\"v\",\"q\"").unwrap();
        let d = DedupStore::open(dir.path(), 1_500).unwrap();
        assert_eq!(
            d.lookup(&key("a"), 1_500),
            Some(("id-a".into(), "1".into()))
        );
        assert_eq!(d.lookup(&key("c"), 1_500), None);
        drop(d);
        // After a's window, only b is left, and the file was compacted to it.
        let d = DedupStore::open(dir.path(), 1_000 + WINDOW_MS).unwrap();
        assert_eq!(d.lookup(&key("a"), 1_000 + WINDOW_MS), None);
        assert!(d.lookup(&key("b"), 1_000 + WINDOW_MS).is_some());
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn journal_is_compacted_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let d = DedupStore::open(dir.path(), 0).unwrap();
        for i in 0..COMPACT_MIN as u64 {
            // Each expires before the next is sent.
            d.insert(key(&i.to_string()), "id".into(), "s".into(), i * WINDOW_MS)
                .unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(text.lines().count() < 10, "{} lines", text.lines().count());
    }
}
