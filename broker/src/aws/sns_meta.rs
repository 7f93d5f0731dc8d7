//! SNS-only topic settings (attributes, tags, creation time) kept beside the engine in
//! `<data_dir>/sns-topics.json`, rewritten whole (temporary file, fsync, rename) on each change.
//!
//! Why not exchange arguments: topic attributes change after creation (SetTopicAttributes) and
//! exchange arguments cannot. The engine exchange of kind `sns` stays the source of truth for
//! existence; subscriptions live in the engine too, as bindings (definitions.json).
//!
//! The same file keeps the HTTP/S subscriptions unsubscribed in the last
//! [`UNSUBSCRIBED_KEEP_SECS`], by the token of their UnsubscribeConfirmation: visiting its
//! SubscribeURL (or ConfirmSubscription with the token) restores the subscription, as on AWS.

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

/// How long an unsubscribed HTTP/S subscription can be restored: three days, as long as AWS
/// keeps a confirmation token valid.
pub const UNSUBSCRIBED_KEEP_SECS: u64 = 3 * 24 * 3600;

/// An unsubscribed subscription, restorable until `expires_secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsubscribed {
    pub expires_secs: u64,
    /// Its binding's arguments (all strings).
    pub arguments: BTreeMap<String, String>,
}

type UnsubscribedKey = (String, String, String);

/// (vhost, topic name) -> settings. Read on every publish (FIFO flags, signature version),
/// hence the read-mostly lock. Lock order: `topics`, then `unsubscribed`.
#[derive(Debug)]
pub struct TopicStore {
    path: PathBuf,
    topics: RwLock<HashMap<(String, String), TopicMeta>>,
    /// (vhost, topic, token) -> what Unsubscribe removed.
    unsubscribed: RwLock<HashMap<UnsubscribedKey, Unsubscribed>>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    topics: Vec<(String, String, TopicMeta)>,
    #[serde(default)]
    unsubscribed: Vec<(String, String, String, Unsubscribed)>,
}

impl TopicStore {
    pub fn open(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = data_dir.join("sns-topics.json");
        let (topics, unsubscribed) = match std::fs::read(&path) {
            Ok(bytes) => {
                let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("{} is not valid SNS metadata: {e}", path.display())
                })?;
                (
                    d.topics.into_iter().map(|(v, t, m)| ((v, t), m)).collect(),
                    d.unsubscribed
                        .into_iter()
                        .map(|(v, t, token, u)| ((v, t, token), u))
                        .collect(),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashMap::new(), HashMap::new()),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        Ok(TopicStore {
            path,
            topics: RwLock::new(topics),
            unsubscribed: RwLock::new(unsubscribed),
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
        self.write(&map, &self.unsubscribed.read())?;
        Ok(r)
    }

    pub fn remove(&self, vhost: &str, name: &str) -> std::io::Result<()> {
        let mut map = self.topics.write();
        let mut unsubscribed = self.unsubscribed.write();
        let before = unsubscribed.len();
        unsubscribed.retain(|(v, t, _), _| v != vhost || t != name);
        let removed = map.remove(&(vhost.to_string(), name.to_string())).is_some();
        if removed || unsubscribed.len() != before {
            self.write(&map, &unsubscribed)?;
        }
        Ok(())
    }

    /// Keeps an unsubscribed subscription restorable by `token` (written before this returns);
    /// expired ones are dropped on the way.
    pub fn keep_unsubscribed(
        &self,
        vhost: &str,
        topic: &str,
        token: &str,
        arguments: BTreeMap<String, String>,
        now_secs: u64,
    ) -> std::io::Result<()> {
        let map = self.topics.read();
        let mut unsubscribed = self.unsubscribed.write();
        unsubscribed.retain(|_, u| u.expires_secs > now_secs);
        unsubscribed.insert(
            (vhost.to_string(), topic.to_string(), token.to_string()),
            Unsubscribed {
                expires_secs: now_secs + UNSUBSCRIBED_KEEP_SECS,
                arguments,
            },
        );
        self.write(&map, &unsubscribed)
    }

    /// Takes back the subscription `token` unsubscribed, if it is still restorable.
    pub fn take_unsubscribed(
        &self,
        vhost: &str,
        topic: &str,
        token: &str,
        now_secs: u64,
    ) -> std::io::Result<Option<BTreeMap<String, String>>> {
        let map = self.topics.read();
        let mut unsubscribed = self.unsubscribed.write();
        let key = (vhost.to_string(), topic.to_string(), token.to_string());
        let Some(u) = unsubscribed.remove(&key) else {
            return Ok(None);
        };
        self.write(&map, &unsubscribed)?;
        Ok((u.expires_secs > now_secs).then_some(u.arguments))
    }

    fn write(
        &self,
        map: &HashMap<(String, String), TopicMeta>,
        unsubscribed: &HashMap<UnsubscribedKey, Unsubscribed>,
    ) -> std::io::Result<()> {
        let mut topics: Vec<(String, String, TopicMeta)> = map
            .iter()
            .map(|((v, t), m)| (v.clone(), t.clone(), m.clone()))
            .collect();
        topics.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut unsubscribed: Vec<(String, String, String, Unsubscribed)> = unsubscribed
            .iter()
            .map(|((v, t, token), u)| (v.clone(), t.clone(), token.clone(), u.clone()))
            .collect();
        unsubscribed.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        let bytes = serde_json::to_vec_pretty(&OnDisk {
            topics,
            unsubscribed,
        })
        .map_err(std::io::Error::other)?;
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

    #[test]
    fn unsubscribed_subscriptions_are_kept_three_days_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = TopicStore::open(dir.path()).unwrap();
        let args: BTreeMap<String, String> = [("x-sns-endpoint".into(), "http://h/".into())].into();
        store
            .keep_unsubscribed("v", "t", "tok", args.clone(), 100)
            .unwrap();
        store
            .keep_unsubscribed("v", "t", "old", args.clone(), 100)
            .unwrap();
        let store = TopicStore::open(dir.path()).unwrap();
        assert_eq!(
            store.take_unsubscribed("v", "t", "nope", 101).unwrap(),
            None
        );
        assert_eq!(
            store.take_unsubscribed("v", "t", "tok", 101).unwrap(),
            Some(args)
        );
        // Taken once only.
        assert_eq!(store.take_unsubscribed("v", "t", "tok", 101).unwrap(), None);
        // Expired.
        let late = 100 + UNSUBSCRIBED_KEEP_SECS;
        assert_eq!(
            store.take_unsubscribed("v", "t", "old", late).unwrap(),
            None
        );
    }
}
