//! Segment files: names, listing, creation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::format::Header;

const SUFFIX: &str = ".seg";
const DIGITS: usize = 20;

pub(super) fn path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:0DIGITS$}{SUFFIX}"))
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files in `dir`, oldest first. Other files are left alone.
pub(super) fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seg) = entry.file_name().to_str().and_then(parse_name) {
            segs.push((seg, entry.path()));
        }
    }
    segs.sort_unstable();
    Ok(segs)
}

/// Creates a segment holding only its header, opened for writing (records are written at
/// their offsets, see `Active`). With `fsync` the header and the directory entry are on disk
/// before any record goes in, so recovery can tell a segment torn while being created
/// (shorter than a header) from a corrupt one.
pub(super) fn create(dir: &Path, header: &Header, fsync: bool) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path(dir, header.segment))?;
    file.write_all(&header.encode())?;
    if fsync {
        file.sync_all()?;
        sync_dir(dir)?;
    }
    Ok(file)
}

/// Makes created, renamed and removed directory entries durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = path(Path::new("/x"), 42);
        assert_eq!(p, Path::new("/x/00000000000000000042.seg"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_name(name), Some(42));
        assert_eq!(parse_name(&format!("{}", u64::MAX) /* 20 digits */), None);
        assert_eq!(parse_name("18446744073709551615.seg"), Some(u64::MAX));
        assert_eq!(parse_name("00000000000000000042.seg.corrupt"), None);
        assert_eq!(parse_name("0042.seg"), None);
    }
}
