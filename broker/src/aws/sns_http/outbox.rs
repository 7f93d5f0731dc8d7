//! The durable outbox of HTTP/S posts: `<data_dir>/sns-http/outbox.log`, append-only.
//!
//! Records: `kind u8 | id u64 | len u32 | crc32 u32 | payload`, little-endian; the CRC covers
//! kind, id and payload. Kind 1 is a post (payload: the [`HttpPost`] as JSON), kind 2 marks
//! the post with that id done (delivered, or handed to the dead-letter sink). A post is written
//! and fsynced before `enqueue` returns; a done mark is written without fsync (lost, it only
//! means one more delivery after a crash: SNS delivers at least once).
//!
//! Opening reads every record, stops at the first torn or corrupt one (truncating the file
//! there, and saying so in the log) and returns the posts not marked done. When done marks
//! outnumber the pending posts (and there are at least [`COMPACT_MIN_DONE`]), the file is
//! rewritten with the pending posts only: a temporary file, fsync, rename, fsync of the folder.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::HttpPost;

const KIND_POST: u8 = 1;
const KIND_DONE: u8 = 2;
const HEADER_BYTES: usize = 1 + 8 + 4 + 4;
/// A post bigger than this is refused: SNS messages are 256 KiB, and a signed JSON envelope of
/// one, escaped, stays well under it.
pub const POST_BYTES_MAX: usize = 4 << 20;
/// Fewer done marks than this never trigger a compaction.
pub const COMPACT_MIN_DONE: u64 = 1024;

pub(crate) struct Outbox {
    path: PathBuf,
    file: File,
    fsync: bool,
    next_id: u64,
    /// Ids of the pending posts; their bytes stay on disk only (compaction copies them from
    /// the file), so a backlog costs memory once, in the delivery tasks.
    pending: BTreeSet<u64>,
    done_in_file: u64,
}

fn record(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(&id.to_le_bytes());
    crc.update(payload);
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one record; `Ok(None)` at a clean end, `Err` for a torn or corrupt record.
fn read_record(reader: &mut impl Read) -> Result<Option<(u8, u64, Vec<u8>)>, String> {
    let mut header = [0u8; HEADER_BYTES];
    let mut filled = 0;
    while filled < HEADER_BYTES {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err("torn record header".into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let kind = header[0];
    let id = u64::from_le_bytes(header[1..9].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(header[9..13].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[13..17].try_into().expect("4 bytes"));
    if !matches!(kind, KIND_POST | KIND_DONE) || len > POST_BYTES_MAX {
        return Err(format!("bad record header (kind {kind}, length {len})"));
    }
    let mut payload = vec![0u8; len];
    reader
        .read_exact(&mut payload)
        .map_err(|_| "torn record payload".to_string())?;
    let mut check = crc32fast::Hasher::new();
    check.update(&[kind]);
    check.update(&id.to_le_bytes());
    check.update(&payload);
    if check.finalize() != crc {
        return Err("record checksum mismatch".into());
    }
    Ok(Some((kind, id, payload)))
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, returning the pending posts in order.
    pub(crate) fn open(dir: &Path, fsync: bool) -> io::Result<(Outbox, Vec<(u64, HttpPost)>)> {
        fs::create_dir_all(dir)?;
        let path = dir.join("outbox.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut pending = BTreeMap::new();
        let mut done_in_file = 0;
        let mut next_id = 1;
        let mut good_len = 0u64;
        {
            let mut reader = BufReader::new(&file);
            loop {
                match read_record(&mut reader) {
                    Ok(None) => break,
                    Ok(Some((kind, id, payload))) => {
                        good_len += (HEADER_BYTES + payload.len()) as u64;
                        next_id = next_id.max(id + 1);
                        if kind == KIND_POST {
                            pending.insert(id, payload);
                        } else {
                            pending.remove(&id);
                            done_in_file += 1;
                        }
                    }
                    Err(why) => {
                        tracing::warn!(
                            path = %path.display(),
                            offset = good_len,
                            "SNS HTTP outbox: {why}; dropping the file from here (an unfinished last write)"
                        );
                        break;
                    }
                }
            }
        }
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        let read = pending.len();
        let mut posts = Vec::with_capacity(read);
        for (id, payload) in pending {
            match serde_json::from_slice::<HttpPost>(&payload) {
                Ok(post) => posts.push((id, post)),
                Err(e) => tracing::warn!(id, "SNS HTTP outbox: unreadable post dropped: {e}"),
            }
        }
        let pending: BTreeSet<u64> = posts.iter().map(|(id, _)| *id).collect();
        let mut outbox = Outbox {
            path,
            file,
            fsync,
            next_id,
            pending,
            done_in_file,
        };
        // Done marks, or unreadable posts, to leave out of the file.
        if outbox.done_in_file > 0 || posts.len() != read {
            outbox.compact()?;
        }
        Ok((outbox, posts))
    }

    /// Appends posts, durable (one fsync for all) when this returns; gives their ids in order.
    /// All or none: nothing is kept in memory unless the write and the fsync succeeded.
    pub(crate) fn append_all(&mut self, posts: &[HttpPost]) -> io::Result<Vec<u64>> {
        let mut payloads = Vec::with_capacity(posts.len());
        for post in posts {
            let payload = serde_json::to_vec(post).map_err(io::Error::other)?;
            if payload.len() > POST_BYTES_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "SNS HTTP post of {} bytes is over the {POST_BYTES_MAX} byte limit",
                        payload.len()
                    ),
                ));
            }
            payloads.push(payload);
        }
        let first = self.next_id;
        let mut buf = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            buf.extend_from_slice(&record(KIND_POST, first + i as u64, payload));
        }
        self.file.write_all(&buf)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        self.next_id += payloads.len() as u64;
        let ids: Vec<u64> = (first..self.next_id).collect();
        self.pending.extend(ids.iter().copied());
        Ok(ids)
    }

    /// Marks a post done; compacts when done marks outnumber pending posts.
    pub(crate) fn complete(&mut self, id: u64) -> io::Result<()> {
        if !self.pending.remove(&id) {
            return Ok(());
        }
        self.file.write_all(&record(KIND_DONE, id, &[]))?;
        self.done_in_file += 1;
        if self.done_in_file >= COMPACT_MIN_DONE && self.done_in_file > self.pending.len() as u64 {
            self.compact()?;
        }
        Ok(())
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Rewrites the file with the pending posts only, copied from the current file. A read
    /// error leaves the current file as it is.
    fn compact(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        {
            let mut reader = BufReader::new(File::open(&self.path)?);
            let mut out = BufWriter::new(File::create(&tmp)?);
            while let Some((kind, id, payload)) = read_record(&mut reader)
                .map_err(|why| io::Error::other(format!("compaction: {why}")))?
            {
                if kind == KIND_POST && self.pending.contains(&id) {
                    out.write_all(&record(KIND_POST, id, &payload))?;
                }
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)?;
        self.done_in_file = 0;
        Ok(())
    }
}
