#![no_main]
//! See `tether_fuzz::control_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_fuzz::control_request(data));
