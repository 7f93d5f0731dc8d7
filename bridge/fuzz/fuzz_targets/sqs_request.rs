//! Arbitrary HTTP requests (method, target, headers, body) through the SigV4 parser and
//! verifier, both SQS decoders and STS routing; the property is `bridge::fuzzing::check`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bridge::fuzzing::check(data));
