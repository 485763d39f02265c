#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stockade_fuzz::stock_config(data));
