//! A `tokenizer.json` (then encoding, decoding and streaming sample text with it). A second
//! section, when present, is its `tokenizer_config.json`.
#![no_main]

use cascade_fuzz::{sections, work_tokenizer};
use cascade_weights::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cascade_fuzz::caught_panics_are_handled();
    let parts = sections(data);
    let config = parts.get(1).copied();
    if let Ok(tok) = Tokenizer::from_json_bytes(parts[0], config, None, "fuzz") {
        work_tokenizer(&tok);
    }
});
