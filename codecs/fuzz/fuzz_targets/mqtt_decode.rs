//! MQTT decoder: any bytes, whole and split in two, under a few packet limits, at every protocol
//! level (before CONNECT, 3.1, 3.1.1, 5.0). The input format and the property live in
//! `codecs::mqtt::fuzzing`, which the seed replay unit test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    codecs::mqtt::fuzzing::check_input(data);
});
