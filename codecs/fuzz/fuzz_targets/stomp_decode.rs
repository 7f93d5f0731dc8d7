//! STOMP decoder: any bytes, whole and split in two, under three limit sets (none, tiny,
//! RabbitMQ's) and the three versions' escaping. The input format and the property live in
//! `codecs::stomp::fuzzing`, which the seed replay unit test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    codecs::stomp::fuzzing::check_input(data);
});
