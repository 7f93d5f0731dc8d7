//! Replays the fuzz target's seed corpus (`fuzz/seeds/stomp_decode/`, written by
//! `fuzz/stomp_seeds.py` from `fixtures/`, plus any regression input a fuzz run found) through
//! the fuzz target's own check, then every split point under every limit set and version.

use std::path::Path;

use super::fuzzing;

#[test]
fn seed_corpus_replays_at_every_version_limit_and_split() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/stomp_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus present") {
        let path = entry.expect("seed entry").path();
        let data = std::fs::read(&path).expect("read seed");
        fuzzing::check_input(&data);
        let stream = data.get(2..).unwrap_or_default();
        for version in fuzzing::VERSIONS {
            for choice in 0..3 {
                for split in 0..=stream.len() {
                    let r = std::panic::catch_unwind(|| {
                        fuzzing::check(stream, split, &fuzzing::limits(choice), version);
                    });
                    assert!(
                        r.is_ok(),
                        "{}: {version:?}, limits {choice}, split {split}",
                        path.display()
                    );
                }
            }
        }
        n += 1;
    }
    assert!(n >= 30, "only {n} seeds");
}

/// Every capture in `fixtures/` is a seed, so the corpus cannot fall behind the fixtures.
#[test]
fn seed_corpus_holds_every_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for v in ["1_0", "1_1", "1_2"] {
        let capture = std::fs::read(root.join(format!("src/stomp/fixtures/stomppy_{v}.bin")))
            .expect("fixture");
        let seed = std::fs::read(root.join(format!("fuzz/seeds/stomp_decode/stomppy_{v}.bin")))
            .expect("seed");
        assert_eq!(&seed[2..], &capture[..], "{v}");
    }
}
