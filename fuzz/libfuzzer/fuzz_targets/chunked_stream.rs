#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stockade_fuzz::chunked_stream(data));
