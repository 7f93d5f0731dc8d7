//! Which messages are live, where their records are, and how much of each segment is live.
//!
//! Recovery replays the log into a `State` and the writer thread applies every record it writes
//! to the same `State` with the same functions, so the writer's view is exactly what a recovery
//! at that point of the log would compute. That is what lets the writer skip acks that change
//! nothing and delete segments without re-reading them.

use std::collections::{BTreeMap, HashMap};

use super::QueueId;

#[derive(Debug)]
pub(super) struct Live {
    pub seg: u64,
    pub offset: u64,
    /// Whole record, prefix included.
    pub len: u64,
    /// Sorted, no duplicates, never empty.
    pub queues: Vec<QueueId>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SegInfo {
    /// Bytes in the file, header included.
    pub size: u64,
    pub live_msgs: u64,
    /// Bytes of the records of the live messages whose latest copy is in this segment.
    pub live_bytes: u64,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub msgs: HashMap<u64, Live>,
    pub segs: BTreeMap<u64, SegInfo>,
}

impl State {
    /// An enqueue record: the latest copy of a msg_id replaces any earlier one, which is how a
    /// compacted message and its not-yet-deleted original resolve.
    pub fn enqueue(&mut self, msg_id: u64, queues: Vec<QueueId>, seg: u64, offset: u64, len: u64) {
        debug_assert!(queues.windows(2).all(|w| w[0] < w[1]));
        self.forget(msg_id);
        if queues.is_empty() {
            return;
        }
        let info = self.segs.entry(seg).or_default();
        info.live_msgs += 1;
        info.live_bytes += len;
        self.msgs.insert(
            msg_id,
            Live {
                seg,
                offset,
                len,
                queues,
            },
        );
    }

    /// Pushes onto `acked` the ids that were live in `queue` (the only ones worth a record).
    pub fn ack(&mut self, queue: QueueId, msg_ids: &[u64], acked: &mut Vec<u64>) {
        for &id in msg_ids {
            let Some(live) = self.msgs.get_mut(&id) else {
                continue;
            };
            let Ok(pos) = live.queues.binary_search(&queue) else {
                continue;
            };
            live.queues.remove(pos);
            acked.push(id);
            if live.queues.is_empty() {
                self.forget(id);
            }
        }
    }

    /// Returns how many messages were live in `queue`.
    pub fn drop_queue(&mut self, queue: QueueId) -> usize {
        let mut n = 0;
        let segs = &mut self.segs;
        self.msgs.retain(|_, live| {
            let Ok(pos) = live.queues.binary_search(&queue) else {
                return true;
            };
            n += 1;
            live.queues.remove(pos);
            if live.queues.is_empty() {
                unaccount(segs, live);
                return false;
            }
            true
        });
        n
    }

    fn forget(&mut self, msg_id: u64) {
        if let Some(live) = self.msgs.remove(&msg_id) {
            unaccount(&mut self.segs, &live);
        }
    }

    pub fn total_size(&self) -> u64 {
        self.segs.values().map(|s| s.size).sum()
    }

    pub fn total_live_bytes(&self) -> u64 {
        self.segs.values().map(|s| s.live_bytes).sum()
    }
}

fn unaccount(segs: &mut BTreeMap<u64, SegInfo>, live: &Live) {
    if let Some(info) = segs.get_mut(&live.seg) {
        info.live_msgs -= 1;
        info.live_bytes -= live.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_copy_wins_and_accounting_follows() {
        let mut s = State::default();
        s.enqueue(1, vec![1, 2], 1, 44, 100);
        let mut acked = Vec::new();
        s.ack(1, &[1], &mut acked);
        assert_eq!(acked, vec![1]);
        // Compaction copy into segment 2 with the current queue set.
        s.enqueue(1, vec![2], 2, 44, 90);
        assert_eq!(s.segs[&1].live_msgs, 0);
        assert_eq!(s.segs[&1].live_bytes, 0);
        assert_eq!(s.segs[&2].live_bytes, 90);
        acked.clear();
        s.ack(1, &[1], &mut acked);
        assert!(acked.is_empty(), "already acked in queue 1");
        assert_eq!(s.drop_queue(2), 1);
        assert!(s.msgs.is_empty());
        assert_eq!(s.segs[&2].live_msgs, 0);
        assert_eq!(s.total_live_bytes(), 0);
    }
}
