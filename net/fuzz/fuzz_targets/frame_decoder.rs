#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smr_net::fuzzing::frame_decoder(data);
});
