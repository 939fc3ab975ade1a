#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| remora::fuzzing::dns_message(data));
