#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| remora::fuzzing::metadata_exchange(data));
