#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smr_net::fuzzing::message_batch_decoder(data);
});
