//! A tokenizer from GGUF metadata (`tokenizer.ggml.*`): the input is a GGUF file, usually one
//! with metadata only, so that mutations land on the vocabulary, merges, types and ids.
#![no_main]

use std::path::Path;

use cascade_fuzz::work_tokenizer;
use cascade_weights::{GgufHeader, Tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = GgufHeader::parse(Path::new("fuzz.gguf"), data) else {
        return;
    };
    if let Ok(tok) = Tokenizer::from_gguf(&header.metadata) {
        work_tokenizer(&tok);
    }
});
