//! AMQP 0-9-1 decoder: any bytes, whole and split in two, under a few frame limits.
//! The input format and the property live in `codecs::amqp::fuzzing`, which the seed replay
//! unit test runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    codecs::amqp::fuzzing::check_input(data);
});
