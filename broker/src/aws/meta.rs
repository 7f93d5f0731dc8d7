//! SQS-only queue settings (the attributes, tags and timestamps the engine has no field for),
//! kept beside the engine in `<data_dir>/sqs-queues.json`, with the names SQS deleted in the
//! last 60 seconds (CreateQueue of one fails with QueueDeletedRecently, across a restart too).
//!
//! Why not x-arguments: SQS attributes change after creation (SetQueueAttributes) and
//! x-arguments cannot. Engine queues stay the source of truth for existence: an entry whose
//! engine queue is gone, or was re-created under a new id (AMQP delete + declare), is ignored
//! and the queue gets AWS's defaults.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bridge::sqs::QueueConfig;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// One queue's SQS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueMeta {
    /// The engine queue these settings belong to.
    pub queue_id: u64,
    /// The settable attributes as GetQueueAttributes shows them.
    pub attributes: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub created_secs: u64,
    pub modified_secs: u64,
    /// Last PurgeQueue, ms since the epoch (one purge per 60 s, as AWS allows).
    #[serde(default)]
    pub purged_ms: u64,
}

impl QueueMeta {
    pub fn new(queue_id: u64, config: &QueueConfig, now_secs: u64) -> Self {
        QueueMeta {
            queue_id,
            attributes: config.to_attributes(),
            tags: BTreeMap::new(),
            created_secs: now_secs,
            modified_secs: now_secs,
            purged_ms: 0,
        }
    }

    /// The typed settings; stored attributes were validated when set.
    pub fn config(&self) -> QueueConfig {
        let mut c = QueueConfig::default();
        if c.apply(&self.attributes, true).is_err() {
            tracing::warn!(
                queue_id = self.queue_id,
                "stored SQS attributes no longer valid; using defaults"
            );
        }
        c
    }
}

/// (vhost, queue name) -> settings, written through to disk on every change.
#[derive(Debug)]
pub struct MetaStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    queues: HashMap<(String, String), QueueMeta>,
    /// (vhost, queue name) -> when SQS deleted it, ms since the epoch, until it is older than
    /// the interval it was remembered for.
    deleted: HashMap<(String, String), (u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    queues: Vec<(String, String, QueueMeta)>,
    /// (vhost, queue name, deleted at ms, remembered for ms).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deleted: Vec<(String, String, u64, u64)>,
}

impl MetaStore {
    pub fn open(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = data_dir.join("sqs-queues.json");
        let inner = match std::fs::read(&path) {
            Ok(bytes) => {
                let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("{} is not valid SQS metadata: {e}", path.display())
                })?;
                Inner {
                    queues: d.queues.into_iter().map(|(v, q, m)| ((v, q), m)).collect(),
                    deleted: d
                        .deleted
                        .into_iter()
                        .map(|(v, q, at, keep)| ((v, q), (at, keep)))
                        .collect(),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Inner::default(),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        Ok(MetaStore {
            path,
            inner: Mutex::new(inner),
        })
    }

    /// When SQS deleted the queue `name`, if it is still remembered.
    pub fn deleted_at(&self, vhost: &str, name: &str) -> Option<u64> {
        self.inner
            .lock()
            .deleted
            .get(&(vhost.to_string(), name.to_string()))
            .map(|(at, _)| *at)
    }

    /// DeleteQueue: drops a queue's settings and remembers its name for `keep_ms` from
    /// `now_ms`, in one write of the file. Names remembered longer ago are forgotten.
    pub fn remove_deleted(
        &self,
        vhost: &str,
        name: &str,
        now_ms: u64,
        keep_ms: u64,
    ) -> std::io::Result<()> {
        let mut inner = self.inner.lock();
        let key = (vhost.to_string(), name.to_string());
        inner.queues.remove(&key);
        inner
            .deleted
            .retain(|_, (at, keep)| now_ms.saturating_sub(*at) < *keep);
        inner.deleted.insert(key, (now_ms, keep_ms));
        self.write(&inner)
    }

    /// The settings of a queue, when they belong to the engine queue `queue_id`.
    pub fn get(&self, vhost: &str, name: &str, queue_id: u64) -> Option<QueueMeta> {
        self.inner
            .lock()
            .queues
            .get(&(vhost.to_string(), name.to_string()))
            .filter(|m| m.queue_id == queue_id)
            .cloned()
    }

    /// Every stored entry of a vhost (ListDeadLetterSourceQueues).
    pub fn in_vhost(&self, vhost: &str) -> Vec<(String, QueueMeta)> {
        self.inner
            .lock()
            .queues
            .iter()
            .filter(|((v, _), _)| v == vhost)
            .map(|((_, q), m)| (q.clone(), m.clone()))
            .collect()
    }

    /// Every stored entry: (vhost, queue name, settings).
    pub fn all(&self) -> Vec<(String, String, QueueMeta)> {
        self.inner
            .lock()
            .queues
            .iter()
            .map(|((v, q), m)| (v.clone(), q.clone(), m.clone()))
            .collect()
    }

    /// Changes (or creates, from `init`) one queue's settings and writes the file.
    pub fn update<R>(
        &self,
        vhost: &str,
        name: &str,
        init: impl FnOnce() -> QueueMeta,
        change: impl FnOnce(&mut QueueMeta) -> R,
    ) -> std::io::Result<R> {
        let mut inner = self.inner.lock();
        let key = (vhost.to_string(), name.to_string());
        let fresh = init();
        let entry = inner.queues.entry(key).or_insert_with(|| fresh.clone());
        if entry.queue_id != fresh.queue_id {
            *entry = fresh;
        }
        let r = change(entry);
        self.write(&inner)?;
        Ok(r)
    }

    pub fn remove(&self, vhost: &str, name: &str) -> std::io::Result<()> {
        let mut inner = self.inner.lock();
        if inner
            .queues
            .remove(&(vhost.to_string(), name.to_string()))
            .is_some()
        {
            self.write(&inner)?;
        }
        Ok(())
    }

    /// Whole-file rewrite through a temporary file and a rename, so a crash leaves the old or
    /// the new file, never half of one. Called under the lock: writers are serialized.
    fn write(&self, inner: &Inner) -> std::io::Result<()> {
        let mut queues: Vec<(String, String, QueueMeta)> = inner
            .queues
            .iter()
            .map(|((v, q), m)| (v.clone(), q.clone(), m.clone()))
            .collect();
        queues.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut deleted: Vec<(String, String, u64, u64)> = inner
            .deleted
            .iter()
            .map(|((v, q), (at, keep))| (v.clone(), q.clone(), *at, *keep))
            .collect();
        deleted.sort();
        let bytes = serde_json::to_vec_pretty(&OnDisk { queues, deleted })
            .map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_ignores_other_queue_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let cfg = QueueConfig {
            visibility_timeout_secs: 7,
            ..Default::default()
        };
        store
            .update(
                "v",
                "q",
                || QueueMeta::new(3, &cfg, 100),
                |m| {
                    m.tags.insert("k".into(), "v".into());
                },
            )
            .unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let m = store.get("v", "q", 3).unwrap();
        assert_eq!(m.config().visibility_timeout_secs, 7);
        assert_eq!(m.tags["k"], "v");
        // Re-created under another id: the old settings do not apply.
        assert!(store.get("v", "q", 4).is_none());
        store.remove("v", "q").unwrap();
        assert!(MetaStore::open(dir.path())
            .unwrap()
            .get("v", "q", 3)
            .is_none());
    }

    #[test]
    fn deleted_names_survive_reopen_until_their_interval_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let cfg = QueueConfig::default();
        store
            .update("v", "q", || QueueMeta::new(3, &cfg, 100), |_| ())
            .unwrap();
        store.remove_deleted("v", "q", 1_000, 60_000).unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        assert!(store.get("v", "q", 3).is_none());
        assert_eq!(store.deleted_at("v", "q"), Some(1_000));
        assert_eq!(store.deleted_at("v", "other"), None);
        // A later deletion forgets the names whose interval is over.
        store.remove_deleted("v", "r", 61_000, 60_000).unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        assert_eq!(store.deleted_at("v", "q"), None);
        assert_eq!(store.deleted_at("v", "r"), Some(61_000));
    }
}
