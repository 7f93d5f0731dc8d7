//! Opening the store: replay every segment into a `State`, repair the tail, load live payloads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use tracing::{error, info, warn};

use super::format::{self, Body, Header, HeaderError, HEADER_LEN, PREFIX_LEN, VERSION};
use super::segment;
use super::state::{SegInfo, State};
use super::writer::{read_enqueue, read_record_at, Active};
use super::{Lsn, RecoveredMessage, Recovery, StoreOptions};

pub(super) struct Opened {
    pub state: State,
    pub active: Active,
    pub last_lsn: Lsn,
    pub max_msg_id: u64,
    pub recovery: Recovery,
}

/// Where the scan of one segment stopped.
struct ScanEnd {
    /// Offset just past the last good record.
    good_end: u64,
    /// Why the record at `good_end` was refused; `None` when the segment ended cleanly.
    bad: Option<&'static str>,
}

pub(super) fn recover(opts: &StoreOptions) -> io::Result<Opened> {
    let started = Instant::now();
    let dir = opts.dir.as_path();
    fs::create_dir_all(dir)?;
    let files = segment::list(dir)?;

    let mut state = State::default();
    let mut last_lsn: Lsn = 0;
    let mut max_msg_id = 0u64;
    let mut truncated_bytes = 0u64;
    let mut replayed = 0usize;
    let mut next_seg = 1u64;
    let mut dir_changed = false;
    let mut tail: Option<(u64, u64, u64)> = None;

    for (i, (seg, path)) in files.iter().enumerate() {
        let (seg, is_last) = (*seg, i + 1 == files.len());
        next_seg = seg + 1;
        let mut file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut raw = [0u8; HEADER_LEN as usize];
        let header = if file_len >= HEADER_LEN {
            file.read_exact(&mut raw)?;
            Header::decode(&raw)
        } else {
            Err(HeaderError::Invalid("shorter than a segment header"))
        };
        let header = match header {
            Ok(h) if h.segment == seg => Ok(h),
            Ok(_) => Err("segment number in the header does not match the file name"),
            Err(HeaderError::Invalid(why)) => Err(why),
            Err(HeaderError::Version(v)) => {
                // Never guess at a newer format: refusing to start is recoverable, misreading
                // and truncating is not.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: segment format version {v}, this build reads version {VERSION}",
                        path.display()
                    ),
                ));
            }
        };
        let header = match header {
            Ok(h) => h,
            // The header is fsynced before any record is written, so a last segment no longer
            // than a header with a bad one is a crash during creation and holds nothing.
            Err(why) if is_last && file_len <= HEADER_LEN => {
                warn!(
                    path = %path.display(), bytes = file_len, reason = why,
                    "last segment was torn while being created; removing it"
                );
                fs::remove_file(path)?;
                truncated_bytes += file_len;
                dir_changed = true;
                continue;
            }
            Err(why) => {
                let aside = path.with_extension("seg.corrupt");
                error!(
                    path = %path.display(), moved_to = %aside.display(), bytes = file_len, reason = why,
                    "segment header unreadable; moving the file aside, its messages are not recovered"
                );
                fs::rename(path, &aside)?;
                dir_changed = true;
                continue;
            }
        };
        replayed += 1;
        last_lsn = last_lsn.max(header.lsn_floor);
        max_msg_id = max_msg_id.max(header.max_msg_id);

        let end = scan(
            file,
            seg,
            file_len,
            &mut state,
            &mut last_lsn,
            &mut max_msg_id,
        )?;
        let mut size = file_len;
        let mut allocated = file_len;
        let zero_tail = match end.bad {
            Some(_) => zeros_after(path, end.good_end)?,
            None => false,
        };
        if zero_tail {
            // Space the writer extended the segment by, ahead of its records: the end of the
            // segment, not damage. Kept as it is; the writer goes on writing into it.
            size = end.good_end;
        } else if let Some(why) = end.bad {
            let dropped = file_len - end.good_end;
            if is_last {
                warn!(
                    path = %path.display(), offset = end.good_end, bytes = dropped, reason = why,
                    "torn or corrupt tail in the last segment; truncating at the last good record"
                );
                let f = OpenOptions::new().write(true).open(path)?;
                f.set_len(end.good_end)?;
                if opts.fsync {
                    f.sync_all()?;
                }
                truncated_bytes += dropped;
                size = end.good_end;
                allocated = size;
            } else {
                error!(
                    path = %path.display(), offset = end.good_end, bytes = dropped, reason = why,
                    "corrupt record in a segment that is not the last; skipping the rest of this \
                     segment (records after this offset are lost) and continuing with the next"
                );
            }
        }
        state.segs.entry(seg).or_default().size = size;
        if is_last {
            tail = Some((seg, size, allocated));
        }
    }

    let active = match tail {
        Some((seg, size, allocated)) => {
            let file = OpenOptions::new()
                .write(true)
                .open(segment::path(dir, seg))?;
            // A process crash leaves written records in the page cache only: make what we just
            // recovered durable before anything is confirmed on top of it.
            if opts.fsync {
                file.sync_data()?;
            }
            Active {
                seg,
                file,
                size,
                allocated,
            }
        }
        None => {
            let header = Header {
                segment: next_seg,
                lsn_floor: last_lsn,
                max_msg_id,
            };
            let file = segment::create(dir, &header, opts.fsync)?;
            state.segs.insert(
                next_seg,
                SegInfo {
                    size: HEADER_LEN,
                    ..SegInfo::default()
                },
            );
            Active {
                seg: next_seg,
                file,
                size: HEADER_LEN,
                allocated: HEADER_LEN,
            }
        }
    };
    if dir_changed && opts.fsync {
        segment::sync_dir(dir)?;
    }

    let messages = load_payloads(dir, &state)?;
    info!(
        dir = %dir.display(),
        segments = replayed,
        live_messages = messages.len(),
        truncated_bytes,
        last_lsn,
        max_msg_id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "message store recovered"
    );
    Ok(Opened {
        state,
        active,
        last_lsn,
        max_msg_id,
        recovery: Recovery {
            messages,
            max_msg_id,
            truncated_bytes,
            segments: replayed,
        },
    })
}

/// True when every byte of `path` from `offset` to its end is zero (and there is at least
/// one): the writer's preallocated space (see `writer::PREALLOC_BYTES`).
fn zeros_after(path: &Path, offset: u64) -> io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut any = false;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(any);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        any = true;
    }
}

/// Replays the records of one segment (positioned just after its header) into `state`.
fn scan(
    file: File,
    seg: u64,
    file_len: u64,
    state: &mut State,
    last_lsn: &mut Lsn,
    max_msg_id: &mut u64,
) -> io::Result<ScanEnd> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut off = HEADER_LEN;
    let mut body = Vec::new();
    let mut acked = Vec::new();
    let bad = |off: u64, why: &'static str| -> io::Result<ScanEnd> {
        Ok(ScanEnd {
            good_end: off,
            bad: Some(why),
        })
    };
    loop {
        if off == file_len {
            return Ok(ScanEnd {
                good_end: off,
                bad: None,
            });
        }
        if file_len - off < PREFIX_LEN as u64 {
            return bad(off, "partial record length");
        }
        let mut prefix = [0u8; PREFIX_LEN];
        reader.read_exact(&mut prefix)?;
        let Some((len, crc)) = format::parse_prefix(&prefix) else {
            return bad(off, "impossible record length");
        };
        let rec_len = (PREFIX_LEN + len) as u64;
        if rec_len > file_len - off {
            return bad(off, "record runs past the end of the file");
        }
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
        let rec = match format::decode(&body, crc) {
            Ok(rec) => rec,
            Err(why) => return bad(off, why),
        };
        *last_lsn = (*last_lsn).max(rec.lsn);
        match rec.body {
            Body::Enqueue {
                msg_id, mut queues, ..
            } => {
                *max_msg_id = (*max_msg_id).max(msg_id);
                queues.sort_unstable();
                queues.dedup();
                state.enqueue(msg_id, queues, seg, off, rec_len);
            }
            Body::Ack { queue, msg_ids } => {
                acked.clear();
                state.ack(queue, &msg_ids, &mut acked);
            }
            Body::DropQueue { queue } => {
                state.drop_queue(queue);
            }
        }
        off += rec_len;
    }
}

/// Second pass: only the payloads of messages still live, read in file order. Keeping them out
/// of the first pass bounds memory by the live data, not by the size of the log.
fn load_payloads(dir: &Path, state: &State) -> io::Result<Vec<RecoveredMessage>> {
    let mut order: Vec<(u64, u64, u64)> = state
        .msgs
        .iter()
        .map(|(&id, l)| (l.seg, l.offset, id))
        .collect();
    order.sort_unstable();
    let mut messages = Vec::with_capacity(order.len());
    let mut open: Option<(u64, BufReader<File>, u64)> = None;
    for (seg, offset, id) in order {
        if open.as_ref().is_none_or(|(s, _, _)| *s != seg) {
            let file = File::open(segment::path(dir, seg))?;
            open = Some((seg, BufReader::with_capacity(1 << 20, file), 0));
        }
        let (_, reader, pos) = open.as_mut().expect("opened above");
        let live = &state.msgs[&id];
        let mut record = Vec::new();
        read_record_at(reader, pos, offset, live.len, &mut record)?;
        let payload_len = read_enqueue(&record, id)
            .map_err(|why| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("segment {seg} changed during recovery at offset {offset}: {why}"),
                )
            })?
            .len();
        let start = record.len() - payload_len;
        messages.push(RecoveredMessage {
            msg_id: id,
            queues: live.queues.clone(),
            payload: Bytes::from(record).slice(start..),
        });
    }
    messages.sort_unstable_by_key(|m| m.msg_id);
    Ok(messages)
}
