//! Replays the fuzz target's seed corpus (`fuzz/seeds/mqtt_decode/`, built from `fixtures/`
//! plus any regression input a fuzz run found) through the fuzz target's own check, then every
//! split point of each stream under every protocol level and packet limit.

use std::path::{Path, PathBuf};

use super::fuzzing;
use super::Protocol;

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/mqtt_decode")
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<_> = std::fs::read_dir(seed_dir())
        .expect("seed corpus present")
        .map(|entry| {
            let path = entry.expect("seed dir entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read seed"))
        })
        .collect();
    seeds.sort();
    seeds
}

const LEVELS: [Option<Protocol>; 4] = [
    None,
    Some(Protocol::V3_1),
    Some(Protocol::V3_1_1),
    Some(Protocol::V5),
];

#[test]
fn seed_corpus_replays_at_every_level_and_split() {
    let seeds = seeds();
    assert!(seeds.len() >= 100, "seed corpus has {} files", seeds.len());
    for (name, data) in &seeds {
        // Exactly what the fuzz target runs.
        fuzzing::check_input(data);
        let stream = data.get(2..).unwrap_or_default();
        for protocol in LEVELS {
            for limit in [0, 64, 65_536] {
                for split in 0..=stream.len() {
                    let r = std::panic::catch_unwind(|| {
                        fuzzing::check(stream, split, limit, protocol);
                    });
                    assert!(
                        r.is_ok(),
                        "{name}: level {protocol:?}, limit {limit}, split {split}"
                    );
                }
            }
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex fixture"))
        .collect()
}

/// Every capture in `fixtures/` is in the corpus as its client stream (from before CONNECT)
/// and its server stream, so the corpus cannot silently fall behind the fixtures.
#[test]
fn seed_corpus_holds_every_fixture() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/mqtt/fixtures");
    let seeds = seeds();
    let has = |name: &str, stream: &[u8]| {
        seeds
            .iter()
            .any(|(n, d)| n == name && d.get(2..) == Some(stream))
    };
    let mut n = 0;
    for entry in std::fs::read_dir(fixtures).expect("fixtures present") {
        let path = entry.expect("fixture entry").path();
        let base = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read fixture");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        if base == "mosquitto_v5_violations" {
            for line in lines {
                let mut fields = line.split_whitespace();
                let name = fields.next().expect("name");
                let packet = hex(fields.nth(1).expect("packet"));
                assert!(has(&format!("{base}_{name}.bin"), &packet), "{base} {name}");
                n += 1;
            }
            continue;
        }
        let (mut client, mut server) = (Vec::new(), Vec::new());
        for line in lines {
            let (dir, h) = line.split_once(' ').expect("direction and hex");
            if dir == "C" { &mut client } else { &mut server }.extend(hex(h.trim()));
        }
        assert!(has(&format!("{base}_client.bin"), &client), "{base} client");
        assert!(has(&format!("{base}_server.bin"), &server), "{base} server");
        n += 1;
    }
    assert!(n >= 9, "only {n} fixtures");
}
