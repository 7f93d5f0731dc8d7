//! Durable definitions: vhosts, durable exchanges, durable queues (with their store ids) and
//! bindings between durable entities, in one JSON file rewritten atomically on every change
//! (write a temporary file, fsync, rename, fsync the directory). Definitions change rarely;
//! messages never go through here.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::exchange::{Destination, ExchangeKind, ExchangeSettings};
use super::message::Table;
use super::queue::QueueSettings;
use super::{Shared, Vhost};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Definitions {
    pub version: u32,
    pub vhosts: Vec<String>,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    pub kind: ExchangeKind,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    /// The queue's id in the message store.
    pub id: u64,
    pub auto_delete: bool,
    pub arguments: Table,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BindingDef {
    pub vhost: String,
    pub source: String,
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: Table,
}

const FORMAT_VERSION: u32 = 1;

#[derive(Debug)]
pub(crate) struct DefinitionsFile {
    path: PathBuf,
    /// Serializes snapshots and writes so a later snapshot is never overwritten by an earlier.
    lock: Mutex<()>,
}

impl DefinitionsFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        DefinitionsFile {
            path,
            lock: Mutex::new(()),
        }
    }

    pub(crate) fn load(&self) -> anyhow::Result<Definitions> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let defs: Definitions = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("{} is not valid definitions: {e}", self.path.display())
                })?;
                if defs.version != FORMAT_VERSION {
                    anyhow::bail!(
                        "{} has format version {}, this wharf reads {FORMAT_VERSION}",
                        self.path.display(),
                        defs.version
                    );
                }
                Ok(defs)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Definitions::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn save(&self, vhosts: &[Arc<Vhost>]) -> std::io::Result<()> {
        let _guard = self.lock.lock();
        let defs = snapshot(vhosts);
        let json = serde_json::to_vec_pretty(&defs).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn snapshot(vhosts: &[Arc<Vhost>]) -> Definitions {
    let mut defs = Definitions {
        version: FORMAT_VERSION,
        ..Default::default()
    };
    for vhost in vhosts {
        defs.vhosts.push(vhost.name.clone());
        let queues = vhost.queues();
        let durable_queue = |name: &str| {
            queues.iter().any(|q| {
                q.name == name && q.settings.durable && q.settings.exclusive_owner.is_none()
            })
        };
        let exchanges = vhost.exchanges();
        let durable_exchange = |name: &str| {
            exchanges
                .iter()
                .any(|e| e.name == name && e.settings.durable)
        };
        for q in &queues {
            if q.settings.durable && q.settings.exclusive_owner.is_none() && !q.is_deleted() {
                defs.queues.push(QueueDef {
                    vhost: vhost.name.clone(),
                    name: q.name.clone(),
                    id: q.id,
                    auto_delete: q.settings.auto_delete,
                    arguments: q.settings.arguments.clone(),
                });
            }
        }
        for ex in &exchanges {
            if !ex.settings.durable {
                continue;
            }
            if !ex.name.is_empty() && !ex.name.starts_with("amq.") {
                defs.exchanges.push(ExchangeDef {
                    vhost: vhost.name.clone(),
                    name: ex.name.clone(),
                    kind: ex.settings.kind,
                    auto_delete: ex.settings.auto_delete,
                    internal: ex.settings.internal,
                    arguments: ex.settings.arguments.clone(),
                });
            }
            for b in ex.bindings() {
                let durable = match &b.destination {
                    // An SNS subscription whose queue was deleted stays (as on AWS).
                    Destination::Queue(q) => {
                        durable_queue(q)
                            || (ex.settings.kind == ExchangeKind::Sns
                                && super::sns::is_subscription(&b)
                                && !queues.iter().any(|x| &x.name == q))
                    }
                    Destination::Exchange(e) => durable_exchange(e),
                };
                if durable {
                    defs.bindings.push(BindingDef {
                        vhost: vhost.name.clone(),
                        source: ex.name.clone(),
                        destination: b.destination,
                        routing_key: b.routing_key,
                        arguments: b.arguments,
                    });
                }
            }
        }
    }
    defs
}

/// Recreates durable entities from the definitions at startup.
pub(crate) fn restore(shared: &Shared, defs: &Definitions) -> anyhow::Result<()> {
    for e in &defs.exchanges {
        let Some(vhost) = shared.vhost(&e.vhost) else {
            continue;
        };
        let settings = ExchangeSettings {
            kind: e.kind,
            durable: true,
            auto_delete: e.auto_delete,
            internal: e.internal,
            arguments: e.arguments.clone(),
        };
        vhost.restore_exchange(&e.name, settings);
    }
    for q in &defs.queues {
        let Some(vhost) = shared.vhost(&q.vhost) else {
            continue;
        };
        let settings = QueueSettings {
            durable: true,
            exclusive_owner: None,
            auto_delete: q.auto_delete,
            arguments: q.arguments.clone(),
        };
        vhost
            .restore_queue(&q.name, q.id, settings)
            .map_err(|e| anyhow::anyhow!("restoring queue {}: {e}", q.name))?;
    }
    for b in &defs.bindings {
        let Some(vhost) = shared.vhost(&b.vhost) else {
            continue;
        };
        vhost.restore_binding(
            &b.source,
            b.destination.clone(),
            &b.routing_key,
            b.arguments.clone(),
        );
    }
    Ok(())
}
