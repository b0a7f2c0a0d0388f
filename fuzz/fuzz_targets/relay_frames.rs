#![no_main]
//! See `tether_fuzz::relay_frames`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_fuzz::relay_frames(data));
