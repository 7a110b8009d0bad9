//! Fuzz target: see `meridian_regions::fuzz_checks::cookie` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_regions::fuzz_checks::cookie(data));
