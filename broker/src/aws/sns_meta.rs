//! SNS-only topic settings (attributes, tags, creation time) kept beside the engine in
//! `<data_dir>/sns-topics.json`, rewritten whole (temporary file, fsync, rename) on each change.
//!
//! Why not exchange arguments: topic attributes change after creation (SetTopicAttributes) and
//! exchange arguments cannot. The engine exchange of kind `sns` stays the source of truth for
//! existence; subscriptions live in the engine too, as bindings (definitions.json).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// One topic's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Settable attributes as given (validated when set).
    pub attributes: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub created_secs: u64,
}

impl TopicMeta {
    pub fn fifo(&self) -> bool {
        self.attributes
            .get("FifoTopic")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    pub fn content_based_deduplication(&self) -> bool {
        self.attributes
            .get("ContentBasedDeduplication")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// (vhost, topic name) -> settings. Read on every publish (FIFO flags, signature version),
/// hence the read-mostly lock.
#[derive(Debug)]
pub struct TopicStore {
    path: PathBuf,
    topics: RwLock<HashMap<(String, String), TopicMeta>>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    topics: Vec<(String, String, TopicMeta)>,
}

impl TopicStore {
    pub fn open(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = data_dir.join("sns-topics.json");
        let topics = match std::fs::read(&path) {
            Ok(bytes) => {
                let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("{} is not valid SNS metadata: {e}", path.display())
                })?;
                d.topics.into_iter().map(|(v, t, m)| ((v, t), m)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        Ok(TopicStore {
            path,
            topics: RwLock::new(topics),
        })
    }

    /// The settings of a topic; a topic declared over AMQP has none (AWS's defaults).
    pub fn get(&self, vhost: &str, name: &str) -> TopicMeta {
        self.topics
            .read()
            .get(&(vhost.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// One attribute of a topic, without copying the rest (read per delivered envelope).
    pub fn attribute(&self, vhost: &str, name: &str, attribute: &str) -> Option<String> {
        self.topics
            .read()
            .get(&(vhost.to_string(), name.to_string()))?
            .attributes
            .get(attribute)
            .cloned()
    }

    /// Changes (or creates) a topic's settings and writes the file.
    pub fn update<R>(
        &self,
        vhost: &str,
        name: &str,
        change: impl FnOnce(&mut TopicMeta) -> R,
    ) -> std::io::Result<R> {
        let mut map = self.topics.write();
        let r = change(
            map.entry((vhost.to_string(), name.to_string()))
                .or_default(),
        );
        self.write(&map)?;
        Ok(r)
    }

    pub fn remove(&self, vhost: &str, name: &str) -> std::io::Result<()> {
        let mut map = self.topics.write();
        if map.remove(&(vhost.to_string(), name.to_string())).is_some() {
            self.write(&map)?;
        }
        Ok(())
    }

    fn write(&self, map: &HashMap<(String, String), TopicMeta>) -> std::io::Result<()> {
        let mut topics: Vec<(String, String, TopicMeta)> = map
            .iter()
            .map(|((v, t), m)| (v.clone(), t.clone(), m.clone()))
            .collect();
        topics.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let bytes = serde_json::to_vec_pretty(&OnDisk { topics }).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = TopicStore::open(dir.path()).unwrap();
        store
            .update("v", "t.fifo", |m| {
                m.attributes.insert("FifoTopic".into(), "true".into());
                m.tags.insert("k".into(), "v".into());
            })
            .unwrap();
        let store = TopicStore::open(dir.path()).unwrap();
        let m = store.get("v", "t.fifo");
        assert!(m.fifo());
        assert_eq!(m.tags["k"], "v");
        store.remove("v", "t.fifo").unwrap();
        let store = TopicStore::open(dir.path()).unwrap();
        assert_eq!(store.get("v", "t.fifo"), TopicMeta::default());
    }
}
