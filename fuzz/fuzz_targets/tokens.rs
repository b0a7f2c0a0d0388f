#![no_main]
//! See `tether_fuzz::tokens`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_fuzz::tokens(data));
