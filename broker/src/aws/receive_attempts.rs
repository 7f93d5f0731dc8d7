//! FIFO ReceiveRequestAttemptId: a ReceiveMessage retried with the same attempt id within 5
//! minutes gets the same messages and receipt handles back, and their visibility timeout starts
//! over (never past 12 hours from the original receive), as long as none of them was modified
//! since (deleted, purged, its visibility changed or run out). Otherwise the retry is an
//! ordinary receive.
//!
//! Journaled to `<data_dir>/sqs-receive-attempts.jsonl` so a restart inside the window still
//! replays: one JSON line per remembered answer (with each message's store id, deadline and
//! receive time, wall clock), appended before the receive is answered, and a line with no
//! messages when an answer is forgotten. At startup the live answers put their messages back
//! under their leases ([`Queue::restore_leases`]), and the receipt handles they carry (from the
//! earlier process) are mapped to the new leases. Written, not fsynced, like the deduplication
//! journal: a process crash (SIGKILL) loses nothing; an OS crash may lose the last lines, which
//! turns a retry into an ordinary receive (what AWS does once a lease ran out).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bridge::sqs::Message;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::engine::{DeliveryId, Queue};

/// How long an attempt id can be replayed (AWS: 5 minutes).
const ATTEMPT_WINDOW_MS: u64 = 5 * 60 * 1000;
/// A message is invisible for at most 12 hours from its receive (AWS).
pub const VISIBILITY_TOTAL_MAX: Duration = Duration::from_secs(43_200);
/// The journal is not compacted below this many lines.
const COMPACT_MIN: usize = 1024;
const FILE: &str = "sqs-receive-attempts.jsonl";

/// (vhost, engine queue id, attempt id).
pub type Key = (String, u64, String);

#[derive(Debug)]
struct Held {
    id: DeliveryId,
    /// The deadline its lease had when answered (or last replayed): a different deadline
    /// means ChangeMessageVisibility touched it.
    at: Instant,
    /// Store id, to find the message again after a restart.
    msg_id: u64,
    /// The original receive, ms since the epoch.
    recv_ms: u64,
    message: Message,
}

#[derive(Debug)]
struct Attempt {
    at_ms: u64,
    messages: Vec<Held>,
}

/// One journal line. `m` empty: the answer of this key is forgotten.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    v: String,
    q: u64,
    a: String,
    /// When the answer was first given, ms since the epoch.
    at: u64,
    m: Vec<LineMessage>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LineMessage {
    /// Store id.
    id: u64,
    /// Visibility deadline, ms since the epoch.
    until: u64,
    /// The original receive, ms since the epoch (for the 12-hour cap).
    recv: u64,
    msg: Message,
}

#[derive(Debug)]
struct Inner {
    answers: HashMap<Key, Attempt>,
    file: Option<File>,
    lines: usize,
    next_check: usize,
}

#[derive(Debug)]
pub struct ReceiveAttempts {
    path: Option<PathBuf>,
    inner: Mutex<Inner>,
}

impl Default for ReceiveAttempts {
    /// In memory only (tests).
    fn default() -> Self {
        ReceiveAttempts {
            path: None,
            inner: Mutex::new(Inner {
                answers: HashMap::new(),
                file: None,
                lines: 0,
                next_check: COMPACT_MIN,
            }),
        }
    }
}

/// An answer read back from the journal at startup, for the caller to re-lease.
pub struct Restorable {
    pub key: Key,
    /// When the answer was first given, ms since the epoch.
    pub at_ms: u64,
    /// (store msg_id, visible in, received ago, the message as answered).
    pub messages: Vec<(u64, Duration, Duration, Message)>,
}

fn deadline_ms(at: Instant, now: Instant, now_ms: u64) -> u64 {
    now_ms + at.saturating_duration_since(now).as_millis() as u64
}

impl ReceiveAttempts {
    /// Reads the journal's live answers (a torn last line is skipped). The caller re-leases
    /// their messages and hands back the ones it could with [`ReceiveAttempts::restored`].
    pub fn open(data_dir: &Path, now_ms: u64) -> anyhow::Result<(Self, Vec<Restorable>)> {
        let path = data_dir.join(FILE);
        let mut latest: HashMap<Key, Line> = HashMap::new();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                if let Ok(l) = serde_json::from_str::<Line>(&line) {
                    latest.insert((l.v.clone(), l.q, l.a.clone()), l);
                }
            }
        }
        let restorable = latest
            .into_iter()
            .filter(|(_, l)| {
                !l.m.is_empty()
                    && now_ms.saturating_sub(l.at) < ATTEMPT_WINDOW_MS
                    && l.m.iter().all(|m| m.until > now_ms)
            })
            .map(|(key, l)| Restorable {
                key,
                at_ms: l.at,
                messages: l
                    .m
                    .into_iter()
                    .map(|m| {
                        (
                            m.id,
                            Duration::from_millis(m.until - now_ms),
                            Duration::from_millis(now_ms.saturating_sub(m.recv)),
                            m.msg,
                        )
                    })
                    .collect(),
            })
            .collect();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let attempts = ReceiveAttempts {
            path: Some(path),
            ..ReceiveAttempts::default()
        };
        attempts.inner.lock().file = Some(file);
        Ok((attempts, restorable))
    }

    /// The answers whose messages were re-leased at startup, with their new delivery ids (in
    /// the order of [`Restorable::messages`]); then the journal is rewritten with them only.
    pub fn restored(
        &self,
        answers: Vec<(Restorable, std::sync::Arc<Queue>, Vec<DeliveryId>)>,
        now_ms: u64,
    ) -> std::io::Result<()> {
        let mut inner = self.inner.lock();
        for (r, q, ids) in answers {
            let messages: Option<Vec<Held>> = r
                .messages
                .into_iter()
                .zip(ids)
                .map(|((msg_id, _, ago, message), id)| {
                    Some(Held {
                        id,
                        at: q.receipt_deadline(id)?,
                        msg_id,
                        recv_ms: now_ms.saturating_sub(ago.as_millis() as u64),
                        message,
                    })
                })
                .collect();
            if let Some(messages) = messages {
                inner.answers.insert(
                    r.key,
                    Attempt {
                        at_ms: r.at_ms,
                        messages,
                    },
                );
            }
        }
        self.rewrite(&mut inner, now_ms)
    }

    /// The answer remembered for `key`, when it can be replayed: every message still under the
    /// lease it was answered with. Their leases restart at `now + visibility`, capped at 12
    /// hours from their original receive.
    pub fn replay(
        &self,
        key: &Key,
        queue: &Queue,
        visibility: Duration,
        now_ms: u64,
    ) -> Option<Vec<Message>> {
        let mut inner = self.inner.lock();
        let attempt = inner.answers.get_mut(key)?;
        let unmodified = now_ms.saturating_sub(attempt.at_ms) < ATTEMPT_WINDOW_MS
            && attempt
                .messages
                .iter()
                .all(|h| queue.receipt_deadline(h.id) == Some(h.at));
        if !unmodified {
            inner.answers.remove(key);
            self.journal_forget(&mut inner, key, now_ms);
            return None;
        }
        for h in &mut attempt.messages {
            let ago = queue.received_ago(h.id).unwrap_or_default();
            let v = visibility.min(VISIBILITY_TOTAL_MAX.saturating_sub(ago));
            queue.change_visibility(h.id, v);
            if let Some(new) = queue.receipt_deadline(h.id) {
                h.at = new;
            }
        }
        let out = attempt.messages.iter().map(|h| h.message.clone()).collect();
        let line = line_of(key, now_ms, inner.answers.get(key));
        self.append(&mut inner, line, now_ms);
        Some(out)
    }

    /// Remembers a receive's answer under its attempt id (an empty answer is not remembered:
    /// its retry is a new receive either way). Forgets attempts older than the window.
    pub fn record(
        &self,
        key: Key,
        queue: &Queue,
        answer: &[(DeliveryId, u64, Message)],
        now_ms: u64,
    ) {
        let mut inner = self.inner.lock();
        inner
            .answers
            .retain(|_, a| now_ms.saturating_sub(a.at_ms) < ATTEMPT_WINDOW_MS);
        // A message whose lease is already over (VisibilityTimeout 0) cannot be replayed, nor
        // can the answer it belongs to.
        let messages: Option<Vec<Held>> = answer
            .iter()
            .map(|(id, msg_id, m)| {
                Some(Held {
                    id: *id,
                    at: queue.receipt_deadline(*id)?,
                    msg_id: *msg_id,
                    recv_ms: now_ms,
                    message: m.clone(),
                })
            })
            .collect();
        match messages.filter(|m| !m.is_empty()) {
            Some(messages) => {
                inner.answers.insert(
                    key.clone(),
                    Attempt {
                        at_ms: now_ms,
                        messages,
                    },
                );
                let line = line_of(&key, now_ms, inner.answers.get(&key));
                self.append(&mut inner, line, now_ms);
            }
            None => {
                if inner.answers.remove(&key).is_some() {
                    self.journal_forget(&mut inner, &key, now_ms);
                }
            }
        }
    }

    /// ChangeMessageVisibility on delivery `id` of queue `queue_id`: an answer holding it can
    /// no longer be replayed (in memory the changed deadline already says so; the journal must
    /// say it too, or a restart would bring back the old lease).
    pub fn touched(&self, vhost: &str, queue_id: u64, id: DeliveryId, now_ms: u64) {
        let mut inner = self.inner.lock();
        let keys: Vec<Key> = inner
            .answers
            .iter()
            .filter(|(k, a)| {
                k.0 == vhost && k.1 == queue_id && a.messages.iter().any(|h| h.id == id)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            inner.answers.remove(&k);
            self.journal_forget(&mut inner, &k, now_ms);
        }
    }

    fn journal_forget(&self, inner: &mut Inner, key: &Key, now_ms: u64) {
        let line = Line {
            v: key.0.clone(),
            q: key.1,
            a: key.2.clone(),
            at: now_ms,
            m: Vec::new(),
        };
        self.append(inner, line, now_ms);
    }

    /// Appends one line. A write error is logged, not returned: the answer still stands in
    /// memory, only a restart could not replay it. Every `COMPACT_MIN` lines or more, the
    /// journal is rewritten with the live answers when it holds over twice as many lines.
    fn append(&self, inner: &mut Inner, line: Line, now_ms: u64) {
        let Some(file) = inner.file.as_mut() else {
            return;
        };
        let mut bytes = match serde_json::to_vec(&line) {
            Ok(b) => b,
            Err(_) => return,
        };
        bytes.push(b'\n');
        if let Err(e) = file.write_all(&bytes) {
            tracing::warn!(error = %e, "cannot journal an SQS receive attempt");
            return;
        }
        inner.lines += 1;
        if inner.lines >= inner.next_check {
            inner
                .answers
                .retain(|_, a| now_ms.saturating_sub(a.at_ms) < ATTEMPT_WINDOW_MS);
            if inner.lines > 2 * inner.answers.len() {
                if let Err(e) = self.rewrite(inner, now_ms) {
                    tracing::warn!(error = %e, "cannot compact the SQS receive attempt journal");
                }
            }
            inner.next_check = inner.lines + COMPACT_MIN.max(inner.answers.len());
        }
    }

    /// Writes the live answers to a new journal (temporary file, then rename) and opens it for
    /// appending.
    fn rewrite(&self, inner: &mut Inner, now_ms: u64) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut f = std::io::BufWriter::new(File::create(&tmp)?);
            for (key, a) in &inner.answers {
                serde_json::to_writer(&mut f, &line_of(key, now_ms, Some(a)))?;
                f.write_all(b"\n")?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        inner.file = Some(OpenOptions::new().append(true).open(path)?);
        inner.lines = inner.answers.len();
        inner.next_check = inner.lines + COMPACT_MIN;
        Ok(())
    }
}

/// The journal line of `key`'s answer (`None`: forgotten).
fn line_of(key: &Key, now_ms: u64, a: Option<&Attempt>) -> Line {
    let now = Instant::now();
    let m = a.map_or_else(Vec::new, |a| {
        a.messages
            .iter()
            .map(|h| LineMessage {
                id: h.msg_id,
                until: deadline_ms(h.at, now, now_ms),
                recv: h.recv_ms,
                msg: h.message.clone(),
            })
            .collect()
    });
    Line {
        v: key.0.clone(),
        q: key.1,
        a: key.2.clone(),
        at: a.map_or(now_ms, |a| a.at_ms),
        m,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::engine::{Engine, EngineConfig, Message as EngineMessage, QueueSettings, Table};

    fn open() -> (tempfile::TempDir, Arc<Engine>, Arc<Queue>) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig {
            data_dir: dir.path().join("engine"),
            fsync: false,
            ..Default::default()
        })
        .unwrap();
        let settings = QueueSettings {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Table::new(),
        };
        let q = engine
            .vhost("/")
            .unwrap()
            .declare_queue("q.fifo", settings, false, 0)
            .unwrap()
            .0;
        let mut m = EngineMessage::new("", "q.fifo", Bytes::from_static(b"body"));
        m.properties.delivery_mode = Some(2);
        q.publish(&Arc::new(m), &mut None);
        (dir, engine, q)
    }

    fn answer(body: &str) -> Message {
        Message {
            message_id: "id".into(),
            receipt_handle: "handle".into(),
            md5_of_body: String::new(),
            body: body.into(),
            attributes: Default::default(),
            md5_of_message_attributes: None,
            message_attributes: Default::default(),
        }
    }

    fn key() -> Key {
        ("/".into(), 1, "attempt".into())
    }

    #[tokio::test]
    async fn replay_keeps_the_12_hour_cap_from_the_original_receive() {
        let (dir, _engine, q) = open();
        let got = q.receive(1, Duration::from_secs(60), None, true);
        let msg_id = got[0].delivery.msg_id;
        assert_ne!(msg_id, 0, "persistent, so it has a store id");
        // Back to ready, then under a lease taken an hour ago (as a restart restores one).
        assert!(q.change_visibility(got[0].delivery.id, Duration::ZERO));
        let hour = Duration::from_secs(3600);
        let ids = q.restore_leases(&[(msg_id, hour, hour)]).unwrap();
        let (attempts, _) = ReceiveAttempts::open(dir.path(), 1_000_000).unwrap();
        attempts.record(key(), &q, &[(ids[0], msg_id, answer("body"))], 1_000_000);
        let replayed = attempts
            .replay(&key(), &q, VISIBILITY_TOTAL_MAX, 1_000_000)
            .unwrap();
        assert_eq!(replayed, vec![answer("body")]);
        // 12 hours from the receive, an hour ago: 11 hours from now, not 12.
        let deadline = q.receipt_deadline(ids[0]).unwrap();
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(left <= 11 * hour, "{left:?}");
        assert!(left > 11 * hour - Duration::from_secs(60), "{left:?}");
        // A short visibility is not lengthened by the cap.
        attempts
            .replay(&key(), &q, Duration::from_secs(30), 1_000_000)
            .unwrap();
        let left = q
            .receipt_deadline(ids[0])
            .unwrap()
            .saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_secs(30), "{left:?}");
    }

    #[tokio::test]
    async fn journal_brings_back_live_answers_and_not_forgotten_ones() {
        let (dir, _engine, q) = open();
        let got = q.receive(1, Duration::from_secs(300), None, true);
        let (id, msg_id) = (got[0].delivery.id, got[0].delivery.msg_id);
        let now = 5_000_000;
        let (attempts, restorable) = ReceiveAttempts::open(dir.path(), now).unwrap();
        assert!(restorable.is_empty());
        attempts.record(key(), &q, &[(id, msg_id, answer("body"))], now);
        let other: Key = ("/".into(), 1, "other".into());
        attempts.record(other.clone(), &q, &[(id, msg_id, answer("body"))], now);
        // ChangeMessageVisibility forgets every answer holding the message.
        attempts.touched("/", 1, id, now);
        attempts.record(key(), &q, &[(id, msg_id, answer("body"))], now);
        drop(attempts);

        let (_, restorable) = ReceiveAttempts::open(dir.path(), now + 1_000).unwrap();
        assert_eq!(restorable.len(), 1);
        let r = &restorable[0];
        assert_eq!(r.key, key());
        assert_eq!(r.at_ms, now);
        let (m_id, visible_in, ago, m) = &r.messages[0];
        assert_eq!(*m_id, msg_id);
        assert!(*visible_in <= Duration::from_secs(300));
        assert!(*visible_in > Duration::from_secs(290));
        assert_eq!(*ago, Duration::from_secs(1));
        assert_eq!(m, &answer("body"));
        // Past the 5-minute window nothing is restorable.
        let (_, restorable) = ReceiveAttempts::open(dir.path(), now + ATTEMPT_WINDOW_MS).unwrap();
        assert!(restorable.is_empty());
    }
}
