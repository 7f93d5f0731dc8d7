//! Per-channel state: consumers, delivery tags, content assembly, publisher confirms and
//! transactions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use amq_protocol::protocol::basic::Publish;
use amq_protocol::protocol::BasicProperties;
use bytes::{Bytes, BytesMut};

use crate::engine::{ChannelHandle, DeliveryId, Message, Queue, Settle};
use crate::store::Lsn;

/// A message delivered with a delivery tag and not yet settled by the client.
#[derive(Debug, Clone)]
pub(super) struct Unacked {
    pub queue: Arc<Queue>,
    pub id: DeliveryId,
}

/// Where a publish is between its method frame and its last body frame.
#[derive(Debug, Default)]
pub(super) enum Content {
    /// Expecting a method frame.
    #[default]
    Idle,
    /// basic.publish seen; the content header comes next.
    Header(Publish),
    /// Header seen; `remaining` body bytes come next.
    Body {
        publish: Publish,
        /// Boxed: the state sits in every channel, and properties are large.
        properties: Box<BasicProperties>,
        remaining: u64,
        chunks: Vec<Bytes>,
    },
}

impl Content {
    /// The body from its frames: the frame's own bytes when there was one frame (the common
    /// case: no copy), one concatenation otherwise.
    pub fn join(chunks: Vec<Bytes>) -> Bytes {
        match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                for c in chunks {
                    all.extend_from_slice(&c);
                }
                all.freeze()
            }
        }
    }
}

/// A reply that may only leave once the store has made some Lsn durable. Kept per channel in
/// the order the publishes (or the commit) happened, so confirms go out in publish order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gated {
    Ack { seq: u64, lsn: Lsn },
    Nack { seq: u64 },
    CommitOk { lsn: Lsn },
}

impl Gated {
    pub fn lsn(&self) -> Lsn {
        match *self {
            Gated::Ack { lsn, .. } | Gated::CommitOk { lsn } => lsn,
            Gated::Nack { .. } => 0,
        }
    }
}

/// What a transaction holds until commit or rollback.
#[derive(Debug, Default)]
pub(super) struct Tx {
    /// (mandatory, message) in publish order.
    pub publishes: Vec<(bool, Message)>,
    /// Settlements in the order the client sent them, with the unacked entries they took, so a
    /// rollback can put them back.
    pub settles: Vec<(Settle, Vec<(u64, Unacked)>)>,
}

#[derive(Debug)]
pub(super) struct Channel {
    pub id: u16,
    /// We sent channel.close and wait for close-ok; everything else is discarded.
    pub closing: bool,
    pub handle: ChannelHandle,
    pub content: Content,
    /// Next delivery tag; tags are per channel and start at 1.
    pub next_tag: u64,
    pub unacked: BTreeMap<u64, Unacked>,
    /// Consumers by tag, with their queue.
    pub consumers: HashMap<Arc<str>, Arc<Queue>>,
    /// Every queue this channel consumed from or took a message from with basic.get: the
    /// ones to release when it closes.
    pub queues: Vec<Arc<Queue>>,
    /// The direct reply-to consumer: its tag and the reply queue name it registered.
    pub reply_to: Option<(Arc<str>, String)>,
    /// The last queue declared on this channel, for the empty-name shortcut.
    pub last_queue: Option<String>,
    /// basic.qos global=false: the prefetch of consumers created from now on.
    pub consumer_prefetch: u32,
    pub confirm: bool,
    /// Sequence number of the next publish in confirm mode, from 1.
    pub next_seq: u64,
    pub gated: VecDeque<Gated>,
    pub tx: Option<Tx>,
    /// A tx.commit waits for durability; other commands are refused meanwhile, as RabbitMQ
    /// does.
    pub committing: bool,
}

impl Channel {
    pub fn new(id: u16, handle: ChannelHandle) -> Channel {
        Channel {
            id,
            closing: false,
            handle,
            content: Content::Idle,
            next_tag: 1,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            queues: Vec::new(),
            reply_to: None,
            last_queue: None,
            consumer_prefetch: 0,
            confirm: false,
            next_seq: 1,
            gated: VecDeque::new(),
            tx: None,
            committing: false,
        }
    }

    pub fn track_queue(&mut self, q: &Arc<Queue>) {
        if !self.queues.iter().any(|x| Arc::ptr_eq(x, q)) {
            self.queues.push(q.clone());
        }
    }

    /// Queues this channel's consumers are on, each once.
    pub fn consumer_queues(&self) -> Vec<Arc<Queue>> {
        let mut out: Vec<Arc<Queue>> = Vec::new();
        for q in self.consumers.values() {
            if !out.iter().any(|x| Arc::ptr_eq(x, q)) {
                out.push(q.clone());
            }
        }
        out
    }

    pub fn take_tag(&mut self) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        tag
    }

    /// Removes the unacked entries a basic.ack/nack/reject names: `tag` alone, or everything up
    /// to it with `multiple` (tag 0 with multiple = everything). `None` when `tag` is not
    /// outstanding, which the caller turns into 406 "unknown delivery tag".
    pub fn take_unacked(&mut self, tag: u64, multiple: bool) -> Option<Vec<(u64, Unacked)>> {
        if multiple && tag == 0 {
            return Some(std::mem::take(&mut self.unacked).into_iter().collect());
        }
        if !self.unacked.contains_key(&tag) {
            return None;
        }
        if !multiple {
            return self.unacked.remove(&tag).map(|u| vec![(tag, u)]);
        }
        let rest = self.unacked.split_off(&(tag + 1));
        let taken = std::mem::replace(&mut self.unacked, rest);
        Some(taken.into_iter().collect())
    }
}

/// Groups settlements by queue (one `Queue::settle` call per queue), keeping tag order.
pub(super) fn by_queue(entries: &[(u64, Unacked)]) -> Vec<(Arc<Queue>, Vec<DeliveryId>)> {
    let mut out: Vec<(Arc<Queue>, Vec<DeliveryId>)> = Vec::new();
    for (_, u) in entries {
        match out.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, ids)) => ids.push(u.id),
            None => out.push((u.queue.clone(), vec![u.id])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_a_single_chunk_as_is() {
        let one = Bytes::from_static(b"abc");
        let joined = Content::join(vec![one.clone()]);
        assert_eq!(joined.as_ptr(), one.as_ptr());
        assert_eq!(
            Content::join(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]),
            Bytes::from_static(b"abc")
        );
        assert!(Content::join(Vec::new()).is_empty());
    }
}
