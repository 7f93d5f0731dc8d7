//! Retained messages: one per topic, kept in memory and in `<data_dir>/mqtt-retained.bin`,
//! rewritten whole (temporary file, fsync, rename) on every change. The file is a sequence of
//! records `u32 length (big-endian)` + the engine's message encoding (docs/storage.md), whose
//! routing key is the topic mapped as for `amq.topic`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use bytes::{Buf, Bytes};
use codecs::mqtt::topic::routing_key_to_topic;
use parking_lot::Mutex;

use super::mapping::filter_matches;
use crate::engine::Message;

#[derive(Debug)]
pub struct Retained {
    path: PathBuf,
    map: Mutex<BTreeMap<String, Message>>,
    /// Retained `$SYS/` statistics: in memory only, republished after a restart.
    sys: Mutex<BTreeMap<String, Message>>,
}

impl Retained {
    /// Loads the retained messages of `data_dir` (none when the file is missing).
    pub fn open(data_dir: PathBuf) -> std::io::Result<Retained> {
        let path = data_dir.join("mqtt-retained.bin");
        let mut map = BTreeMap::new();
        match std::fs::read(&path) {
            Ok(data) => {
                let mut b = Bytes::from(data);
                while b.remaining() >= 4 {
                    let len = b.get_u32() as usize;
                    if len > b.remaining() {
                        tracing::warn!("retained message file ends inside a record; tail dropped");
                        break;
                    }
                    let rec = b.split_to(len);
                    if let Some(msg) = Message::decode(rec) {
                        if let Some(topic) = routing_key_to_topic(&msg.routing_key) {
                            map.insert(topic.into_owned(), msg);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Retained {
            path,
            map: Mutex::new(map),
            sys: Mutex::new(BTreeMap::new()),
        })
    }

    /// Stores (or, with an empty body, clears) the retained message of `topic`.
    pub fn set(&self, topic: &str, msg: Message) {
        let mut map = self.map.lock();
        if msg.body.is_empty() {
            if map.remove(topic).is_none() {
                return;
            }
        } else {
            map.insert(topic.to_string(), msg);
        }
        if let Err(e) = self.save(&map) {
            tracing::error!(error = %e, path = %self.path.display(), "cannot write retained messages");
        }
    }

    /// Stores a retained message that is not written to disk (`$SYS/` statistics).
    pub fn set_volatile(&self, topic: &str, msg: Message) {
        self.sys.lock().insert(topic.to_string(), msg);
    }

    /// The retained messages whose topic `filter` matches.
    pub fn matching(&self, filter: &str) -> Vec<(String, Message)> {
        let pick = |map: &BTreeMap<String, Message>| -> Vec<(String, Message)> {
            map.iter()
                .filter(|(t, _)| filter_matches(filter, t))
                .map(|(t, m)| (t.clone(), m.clone()))
                .collect()
        };
        let mut out = pick(&self.map.lock());
        out.extend(pick(&self.sys.lock()));
        out
    }

    /// Retained messages on disk.
    pub(super) fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Retained messages, `$SYS/` ones included.
    pub(super) fn count(&self) -> usize {
        self.map.lock().len() + self.sys.lock().len()
    }

    fn save(&self, map: &BTreeMap<String, Message>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for msg in map.values() {
                let enc = msg.encode();
                let len = u32::try_from(enc.len()).map_err(std::io::Error::other)?;
                f.write_all(&len.to_be_bytes())?;
                f.write_all(&enc)?;
            }
            f.flush()?;
            f.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}
