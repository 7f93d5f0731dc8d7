use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::format::{enqueue_len, HEADER_LEN};
use super::*;

fn opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        dir: dir.to_path_buf(),
        segment_bytes_max: 64 << 20,
        fsync: false,
    }
}

fn small(dir: &Path, segment_bytes_max: u64) -> StoreOptions {
    StoreOptions {
        segment_bytes_max,
        ..opts(dir)
    }
}

fn payload(id: u64) -> Bytes {
    Bytes::from(format!("payload of message {id};").repeat((id % 5 + 1) as usize))
}

fn fixed_payload(id: u64, len: usize) -> Bytes {
    let mut v = format!("{id:08}").into_bytes();
    v.resize(len, b'.');
    Bytes::from(v)
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn last_seg(dir: &Path) -> PathBuf {
    seg_files(dir).pop().expect("a segment")
}

/// Racy against the writer by design (a listed file may be deleted before it is measured).
fn dir_bytes(dir: &Path) -> u64 {
    seg_files(dir)
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// msg_id -> (queues, payload), for comparing with a model.
fn live(rec: &Recovery) -> BTreeMap<u64, (Vec<QueueId>, Bytes)> {
    let ids: Vec<u64> = rec.messages.iter().map(|m| m.msg_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in msg_id order");
    rec.messages
        .iter()
        .map(|m| (m.msg_id, (m.queues.clone(), m.payload.clone())))
        .collect()
}

fn reopen(o: StoreOptions) -> (Store, Recovery) {
    Store::open(o).expect("reopen")
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn flip_byte(path: &Path, at: u64) {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= 0x5a;
    fs::write(path, b).unwrap();
}

#[test]
fn store_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Store>();
}

#[test]
fn round_trip_fan_out_and_acks() {
    let dir = tempfile::tempdir().unwrap();
    let (s, rec) = Store::open(opts(dir.path())).unwrap();
    assert!(rec.messages.is_empty());
    assert_eq!(
        (rec.max_msg_id, rec.truncated_bytes, rec.segments),
        (0, 0, 0)
    );

    let mut model: BTreeMap<u64, Vec<QueueId>> = BTreeMap::new();
    let mut last = 0;
    for id in 1..=100u64 {
        let queues: Vec<QueueId> = (1..=(id % 3 + 1)).collect();
        let lsn = s.enqueue(id, &queues, payload(id));
        assert!(lsn > last, "lsn must increase");
        last = lsn;
        model.insert(id, queues);
    }
    // Odd ids leave queue 1; every tenth leaves all of its queues.
    for id in (1..=100u64).step_by(2) {
        s.ack(1, id);
        model.get_mut(&id).unwrap().retain(|&q| q != 1);
    }
    for id in (10..=100u64).step_by(10) {
        for q in model.remove(&id).unwrap() {
            s.ack(q, id);
        }
    }
    model.retain(|_, q| !q.is_empty());
    let last_written = last;
    // Changes nothing, so no record is written for it; its Lsn still becomes durable.
    let last = s.ack(7, 3);
    s.close();
    assert_eq!(s.durable_lsn(), last);

    let (s2, rec) = reopen(opts(dir.path()));
    assert_eq!(rec.max_msg_id, 100);
    assert_eq!(rec.segments, 1);
    assert_eq!(rec.truncated_bytes, 0);
    let got = live(&rec);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        model.keys().copied().collect::<Vec<_>>()
    );
    for (id, (queues, body)) in &got {
        assert_eq!(queues, &model[id], "queues of {id}");
        assert_eq!(body, &payload(*id), "payload of {id}");
    }
    // Lsns continue above the last one on disk.
    assert!(s2.durable_lsn() >= last_written);
    assert!(s2.enqueue(101, &[1], payload(101)) > last_written);
}

#[test]
fn torn_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(opts(dir.path())).unwrap();
    for id in 1..=10 {
        s.enqueue(id, &[1], fixed_payload(id, 100));
    }
    s.close();
    let seg = last_seg(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    let rec_len = enqueue_len(1, 100) as u64;
    assert_eq!(len, HEADER_LEN + 10 * rec_len);
    // A write torn 5 bytes short of the end of the last record.
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();

    let (s, rec) = reopen(opts(dir.path()));
    assert_eq!(rec.truncated_bytes, rec_len - 5);
    assert_eq!(
        live(&rec).keys().copied().collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert_eq!(fs::metadata(&seg).unwrap().len(), HEADER_LEN + 9 * rec_len);
    // Appending after the repair, and a clean reopen after that.
    s.enqueue(11, &[1], fixed_payload(11, 100));
    s.close();
    let (_s, rec) = reopen(opts(dir.path()));
    assert_eq!(rec.truncated_bytes, 0);
    let got = live(&rec);
    assert_eq!(got.len(), 10);
    assert_eq!(got[&11].1, fixed_payload(11, 100));
}

#[test]
fn corrupt_last_record_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(opts(dir.path())).unwrap();
    for id in 1..=10 {
        s.enqueue(id, &[1, 2], fixed_payload(id, 100));
    }
    s.close();
    let seg = last_seg(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    flip_byte(&seg, len - 3);

    let (_s, rec) = reopen(opts(dir.path()));
    assert_eq!(rec.truncated_bytes, enqueue_len(2, 100) as u64);
    let got = live(&rec);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert!(got.values().all(|(q, _)| q == &vec![1, 2]));
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        len - enqueue_len(2, 100) as u64
    );
}

#[test]
fn zeroed_tail_is_the_end_of_the_segment() {
    // What the writer's preallocation leaves after a crash, and what a file system that
    // extended the file but lost the data shows after a power loss: nothing to repair, and
    // records written after the reopen go where the zeros start.
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(opts(dir.path())).unwrap();
    for id in 1..=3 {
        s.enqueue(id, &[1], payload(id));
    }
    s.close();
    let seg = last_seg(dir.path());
    let mut b = fs::read(&seg).unwrap();
    let records_end = b.len() as u64;
    b.extend_from_slice(&[0u8; 4096]);
    fs::write(&seg, b).unwrap();
    let (s, rec) = reopen(opts(dir.path()));
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.messages.len(), 3);
    s.enqueue(4, &[1], payload(4));
    s.close();
    // A clean stop cuts the zeros.
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        records_end + enqueue_len(1, payload(4).len()) as u64
    );
    let (_s, rec) = reopen(opts(dir.path()));
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(
        live(&rec).keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

#[test]
fn active_segment_is_preallocated_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(opts(dir.path())).unwrap();
    for id in 1..=3 {
        let lsn = s.enqueue(id, &[1], payload(id));
        wait_until("durable", || s.durable_lsn() >= lsn);
    }
    let seg = last_seg(dir.path());
    // Zeros ahead of the records, written with them.
    assert!(fs::metadata(&seg).unwrap().len() >= 1 << 19);
    s.simulate_crash();
    let (s, rec) = reopen(opts(dir.path()));
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(
        live(&rec).keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let lsn = s.enqueue(4, &[1], payload(4));
    wait_until("durable", || s.durable_lsn() >= lsn);
    s.simulate_crash();
    let (_s, rec) = reopen(opts(dir.path()));
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(
        live(&rec).keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

/// Five 100-byte single-queue records per segment.
fn five_per_segment(dir: &Path) -> StoreOptions {
    small(dir, HEADER_LEN + 5 * enqueue_len(1, 100) as u64)
}

#[test]
fn corrupt_record_in_earlier_segment_skips_rest_of_that_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(five_per_segment(dir.path())).unwrap();
    for id in 1..=50 {
        s.enqueue(id, &[1], fixed_payload(id, 100));
    }
    s.close();
    let files = seg_files(dir.path());
    assert_eq!(files.len(), 10);
    let second_len = fs::metadata(&files[1]).unwrap().len();
    // Third record of the second segment: message 8.
    let rec_len = enqueue_len(1, 100) as u64;
    flip_byte(&files[1], HEADER_LEN + 2 * rec_len + 50);

    for _ in 0..2 {
        let (s, rec) = reopen(five_per_segment(dir.path()));
        assert_eq!(rec.truncated_bytes, 0, "only the last segment is truncated");
        assert_eq!(rec.segments, 10);
        let ids: Vec<u64> = live(&rec).keys().copied().collect();
        let want: Vec<u64> = (1..=50).filter(|id| !(8..=10).contains(id)).collect();
        assert_eq!(ids, want);
        assert_eq!(fs::metadata(&files[1]).unwrap().len(), second_len);
        s.close();
    }
}

#[test]
fn torn_segment_header_is_removed_and_bad_older_header_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(five_per_segment(dir.path())).unwrap();
    for id in 1..=15 {
        s.enqueue(id, &[1], fixed_payload(id, 100));
    }
    s.close();
    let files = seg_files(dir.path());
    assert_eq!(files.len(), 3);
    // A crash while creating segment 4: only part of its header made it.
    let torn = segment::path(dir.path(), 4);
    fs::write(&torn, &b"WHARFSEG\x01\x00"[..]).unwrap();
    // And rot in the header of segment 1.
    flip_byte(&files[0], 20);

    let (s, rec) = reopen(five_per_segment(dir.path()));
    assert_eq!(rec.truncated_bytes, 10);
    assert_eq!(rec.segments, 2);
    assert!(!torn.exists() || fs::metadata(&torn).unwrap().len() == HEADER_LEN);
    assert!(dir.path().join("00000000000000000001.seg.corrupt").exists());
    let ids: Vec<u64> = live(&rec).keys().copied().collect();
    assert_eq!(ids, (6..=15).collect::<Vec<_>>());
    assert_eq!(rec.max_msg_id, 15);
    s.enqueue(16, &[1], fixed_payload(16, 100));
    s.close();
    let (_s, rec) = reopen(five_per_segment(dir.path()));
    assert_eq!(rec.messages.len(), 11);
}

#[test]
fn newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(opts(dir.path())).unwrap();
    s.enqueue(1, &[1], payload(1));
    s.close();
    let seg = last_seg(dir.path());
    let mut b = fs::read(&seg).unwrap();
    b[8] = 2;
    fs::write(&seg, &b).unwrap();
    let err = Store::open(opts(dir.path())).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("version 2"), "{err}");
    // Untouched: a newer build can still read it.
    assert_eq!(fs::read(&seg).unwrap(), b);
}

#[test]
fn drop_queue_and_ack_many() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(opts(dir.path())).unwrap();
    for id in 1..=50 {
        s.enqueue(id, &[1, 2], payload(id));
    }
    for id in 51..=60 {
        s.enqueue(id, &[2], payload(id));
    }
    let ids: Vec<u64> = (1..=25).chain(1000..1010).collect();
    s.ack_many(1, &ids);
    s.drop_queue(2);
    // A queue id reused after the drop starts empty, and what goes in afterwards stays.
    s.enqueue(61, &[2], payload(61));
    s.ack_many(3, &[]);
    s.close();

    let (s, rec) = reopen(opts(dir.path()));
    let got = live(&rec);
    let want: Vec<u64> = (26..=50).chain([61]).collect();
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), want);
    for id in 26..=50 {
        assert_eq!(got[&id].0, vec![1]);
        assert_eq!(got[&id].1, payload(id));
    }
    assert_eq!(got[&61].0, vec![2]);

    s.drop_queue(1);
    s.drop_queue(2);
    s.close();
    let (_s, rec) = reopen(opts(dir.path()));
    assert!(rec.messages.is_empty());
    assert_eq!(rec.max_msg_id, 61);
}

#[test]
fn same_msg_id_again_later_copy_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(opts(dir.path())).unwrap();
    s.enqueue(5, &[1, 2], Bytes::from_static(b"first"));
    s.enqueue(6, &[1], Bytes::from_static(b"other"));
    s.ack(1, 5);
    s.enqueue(5, &[2, 3], Bytes::from_static(b"second"));
    s.ack(3, 5);
    s.close();
    let (s, rec) = reopen(opts(dir.path()));
    let got = live(&rec);
    assert_eq!(got[&5], (vec![2], Bytes::from_static(b"second")));
    s.ack(2, 5);
    s.close();
    let (_s, rec) = reopen(opts(dir.path()));
    assert_eq!(live(&rec).keys().copied().collect::<Vec<_>>(), vec![6]);
}

#[test]
fn segments_roll_and_dead_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let o = small(dir.path(), 4096);
    let (s, _) = Store::open(o.clone()).unwrap();
    let mut max_files = 0;
    for id in 1..=2000u64 {
        s.enqueue(id, &[1], fixed_payload(id, 100));
        if id > 10 {
            s.ack(1, id - 10);
        }
        if id % 100 == 0 {
            max_files = max_files.max(seg_files(dir.path()).len());
        }
    }
    wait_until("old segments deleted", || seg_files(dir.path()).len() <= 3);
    s.close();
    // About 60 segments were written in all.
    let first = segment::list(dir.path()).unwrap()[0].0;
    assert!(first > 40, "oldest remaining segment {first}");
    assert!(max_files <= 6, "at most {max_files} segments at once");
    assert!(dir_bytes(dir.path()) <= 3 * 4096);

    let (_s, rec) = reopen(o);
    let got = live(&rec);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1991..=2000).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|(id, (_, p))| p == &fixed_payload(*id, 100)));
    assert_eq!(rec.max_msg_id, 2000);
}

#[test]
fn record_larger_than_a_segment_goes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let o = small(dir.path(), 1024);
    let (s, _) = Store::open(o.clone()).unwrap();
    let big = Bytes::from(vec![3u8; 10_000]);
    s.enqueue(1, &[1], fixed_payload(1, 100));
    s.enqueue(2, &[1], big.clone());
    s.enqueue(3, &[1], fixed_payload(3, 100));
    s.close();
    let sizes: Vec<u64> = seg_files(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(sizes.len(), 3);
    assert_eq!(sizes[1], HEADER_LEN + enqueue_len(1, 10_000) as u64);
    let (_s, rec) = reopen(o);
    let got = live(&rec);
    assert_eq!(got[&2].1, big);
    assert_eq!(got.len(), 3);
}

#[test]
fn long_lived_message_is_compacted_forward() {
    let dir = tempfile::tempdir().unwrap();
    let o = small(dir.path(), 4096);
    let (s, _) = Store::open(o.clone()).unwrap();
    let keep = Bytes::from(vec![7u8; 300]);
    s.enqueue(1, &[1, 2], keep.clone());
    // Filler into a second segment, not a third: then compaction would start at once.
    let mut id = 2;
    while id < 32 {
        s.enqueue(id, &[1], fixed_payload(id, 100));
        s.ack(1, id);
        id += 1;
    }
    s.close();
    assert_eq!(seg_files(dir.path()).len(), 2);
    let first_seg = segment::path(dir.path(), 1);
    let snapshot = fs::read(&first_seg).unwrap();

    let (s, rec) = reopen(o.clone());
    assert_eq!(live(&rec).keys().copied().collect::<Vec<_>>(), vec![1]);
    s.ack(2, 1);
    for _ in 0..2000 {
        s.enqueue(id, &[1], fixed_payload(id, 100));
        s.ack(1, id);
        id += 1;
    }
    wait_until("compaction", || seg_files(dir.path()).len() <= 3);
    s.close();
    assert!(!first_seg.exists());
    assert!(dir_bytes(dir.path()) <= 3 * 4096);

    let (s, rec) = reopen(o.clone());
    let got = live(&rec);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(got[&1], (vec![1], keep.clone()));
    s.close();

    // A crash that lost the deletion of segment 1 after its message was copied: the original
    // (still in queues 1 and 2) comes back next to the copy, and the copy must win.
    fs::write(&first_seg, &snapshot).unwrap();
    let (s, rec) = reopen(o.clone());
    let got = live(&rec);
    assert_eq!(got[&1], (vec![1], keep.clone()));
    s.ack(1, 1);
    s.close();
    let (_s, rec) = reopen(o);
    assert!(!live(&rec).contains_key(&1));
}

#[test]
fn backlog_above_a_quarter_does_not_pin_the_log() {
    // The oldest segment stays about half live, so only the whole-log rule can free the
    // dead segments behind it.
    let dir = tempfile::tempdir().unwrap();
    let o = small(dir.path(), 4096);
    let (s, _) = Store::open(o.clone()).unwrap();
    let mut id = 1;
    for _ in 0..20 {
        s.enqueue(id, &[9], fixed_payload(id, 100));
        s.enqueue(id + 1, &[1], fixed_payload(id + 1, 100));
        s.ack(1, id + 1);
        id += 2;
    }
    for _ in 0..3000 {
        s.enqueue(id, &[1], fixed_payload(id, 100));
        s.ack(1, id);
        id += 1;
    }
    let live_bytes = 20 * enqueue_len(1, 100) as u64;
    let bound = 2 * (live_bytes + 4 * HEADER_LEN) + 3 * 4096;
    wait_until("log bounded", || dir_bytes(dir.path()) <= bound);
    s.close();
    let (_s, rec) = reopen(o);
    let got = live(&rec);
    assert_eq!(got.len(), 20);
    for (id, (q, p)) in got {
        assert_eq!(q, vec![9]);
        assert_eq!(p, fixed_payload(id, 100));
    }
}

#[tokio::test]
async fn wait_durable_resolves_after_commit_and_is_cancel_safe() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(StoreOptions {
        fsync: true,
        ..opts(dir.path())
    })
    .unwrap();
    let mut sub = s.subscribe_durable();
    let lsn = s.enqueue(1, &[1], payload(1));
    assert_eq!(lsn, 1);
    s.wait_durable(lsn).await;
    assert!(s.durable_lsn() >= lsn);
    assert!(s.sync_count() >= 1);
    sub.wait_for(|&d| d >= lsn).await.unwrap();

    // Not written yet: times out, and dropping the waiter disturbs nothing.
    let not_yet = s.durable_lsn() + 1;
    let r = tokio::time::timeout(Duration::from_millis(50), s.wait_durable(not_yet)).await;
    assert!(r.is_err());
    let lsn2 = s.ack(1, 1);
    assert_eq!(lsn2, not_yet);
    tokio::time::timeout(Duration::from_secs(10), s.wait_durable(lsn2))
        .await
        .expect("durable");
    s.wait_durable(0).await;
}

#[test]
fn concurrent_enqueues_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(StoreOptions {
        fsync: true,
        ..opts(dir.path())
    })
    .unwrap();
    const THREADS: u64 = 8;
    const EACH: u64 = 500;
    let lsns: Vec<Lsn> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = s.clone();
                scope.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let id = t * EACH + i + 1;
                            s.enqueue(id, &[t + 1], payload(id))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let max = *lsns.iter().max().unwrap();
    assert_eq!(max, THREADS * EACH);
    wait_until("all durable", || s.durable_lsn() >= max);
    let syncs = s.sync_count();
    eprintln!("{} records, {syncs} fsyncs", THREADS * EACH);
    assert!(syncs >= 1);
    assert!(
        syncs < THREADS * EACH / 2,
        "{syncs} fsyncs for {} records",
        THREADS * EACH
    );
    s.close();
    let (_s, rec) = reopen(opts(dir.path()));
    assert_eq!(rec.messages.len() as u64, THREADS * EACH);
}

#[test]
fn close_is_idempotent_and_later_calls_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(opts(dir.path())).unwrap();
    let lsn = s.enqueue(1, &[1], payload(1));
    let s2 = s.clone();
    std::thread::scope(|scope| {
        scope.spawn(|| s2.close());
        scope.spawn(|| s.close());
    });
    assert_eq!(s.durable_lsn(), lsn);
    s.close();
    assert_eq!(s.enqueue(2, &[1], payload(2)), 0);
    assert_eq!(s.ack(1, 1), 0);
    assert_eq!(s.ack_many(1, &[1]), 0);
    assert_eq!(s.drop_queue(1), 0);
    drop((s, s2));
    let (_s, rec) = reopen(opts(dir.path()));
    assert_eq!(live(&rec).keys().copied().collect::<Vec<_>>(), vec![1]);
}

#[test]
fn dropping_the_last_handle_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(opts(dir.path())).unwrap();
    for id in 1..=100 {
        s.enqueue(id, &[1], payload(id));
    }
    drop(s);
    let (_s, rec) = reopen(opts(dir.path()));
    assert_eq!(rec.messages.len(), 100);
}

#[test]
fn crash_keeps_everything_that_was_durable() {
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        fsync: true,
        ..small(dir.path(), 16 << 10)
    };
    let (s, _) = Store::open(o.clone()).unwrap();
    let sent: Vec<(u64, Lsn, Option<Lsn>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let s = s.clone();
                scope.spawn(move || {
                    let mut sent = Vec::new();
                    for i in 0..2000u64 {
                        let id = t * 10_000 + i + 1;
                        let lsn = s.enqueue(id, &[1, 2], payload(id));
                        // Every third message is acked in queue 1 right away.
                        let ack = (i % 3 == 0).then(|| s.ack(1, id));
                        sent.push((id, lsn, ack));
                    }
                    sent
                })
            })
            .collect();
        wait_until("some durable", || s.durable_lsn() > 500);
        s.simulate_crash();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    // The writer is stopped: nothing becomes durable after this.
    let durable = s.durable_lsn();
    drop(s);
    let (_s, rec) = reopen(o);
    let got = live(&rec);
    let mut confirmed = 0;
    for (id, lsn, ack) in sent {
        if lsn == 0 || lsn > durable {
            continue;
        }
        confirmed += 1;
        let (queues, p) = got.get(&id).unwrap_or_else(|| panic!("durable {id} lost"));
        assert_eq!(p, &payload(id));
        match ack {
            Some(a) if a != 0 && a <= durable => assert_eq!(queues, &vec![2]),
            _ => assert!(queues.contains(&2)),
        }
    }
    assert!(confirmed > 0);
}

const CRASH_DIR_ENV: &str = "WHARF_STORE_KILL9_DIR";

/// Child process of `kill9_loses_nothing_confirmed`: writes until killed, printing what is
/// durable.
#[test]
#[ignore = "run by kill9_loses_nothing_confirmed in a child process"]
fn kill9_child() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        return;
    };
    let (s, _) = Store::open(StoreOptions {
        dir: dir.into(),
        segment_bytes_max: 64 << 10,
        fsync: true,
    })
    .unwrap();
    // The producer runs ahead of the confirmer, so records are in flight when the kill comes.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Lsn, u64, u64)>(16);
    let producer = s.clone();
    std::thread::spawn(move || {
        let mut next = 1u64;
        loop {
            let first = next;
            let mut lsn = 0;
            for _ in 0..50 {
                lsn = producer.enqueue(next, &[1, 2], payload(next));
                next += 1;
            }
            if first > 1 {
                let prev: Vec<u64> = (first - 50..first).collect();
                lsn = producer.ack_many(1, &prev);
            }
            if tx.send((lsn, next - 1, first - 1)).is_err() {
                return;
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Bounded, in case the parent died without killing us.
    let deadline = Instant::now() + Duration::from_secs(60);
    rt.block_on(async {
        while Instant::now() < deadline {
            let (lsn, enqueued, acked) = rx.recv().unwrap();
            s.wait_durable(lsn).await;
            println!("durable {enqueued} {acked}");
        }
    });
}

#[test]
fn kill9_loses_nothing_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    /// Kills the child even when an assertion fails first.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "store::tests::kill9_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(Child)
        .unwrap();
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut confirmed = (0u64, 0u64);
    let mut seen = 0;
    let kill_after = 20 + rand::random::<u32>() % 40;
    while seen < kill_after {
        let line = lines
            .next()
            .expect("child stopped before it was killed")
            .unwrap();
        let Some(rest) = line.strip_prefix("durable ") else {
            continue;
        };
        let mut it = rest.split(' ').map(|n| n.parse::<u64>().unwrap());
        confirmed = (it.next().unwrap(), it.next().unwrap());
        seen += 1;
    }
    drop(child); // SIGKILL, then reaped
    let (enqueued, acked) = confirmed;
    assert!(enqueued >= 1000);

    let (_s, rec) = reopen(StoreOptions {
        dir: dir.path().to_path_buf(),
        segment_bytes_max: 64 << 10,
        fsync: true,
    });
    let got = live(&rec);
    for id in 1..=enqueued {
        let (queues, p) = got
            .get(&id)
            .unwrap_or_else(|| panic!("confirmed {id} lost"));
        assert_eq!(p, &payload(id));
        if id <= acked {
            assert_eq!(queues, &vec![2], "acked {id} came back in queue 1");
        } else {
            assert!(queues.contains(&2));
        }
    }
}
