//! A Hugging Face folder: the input is its files separated by `SECTION` lines: `config.json`,
//! the safetensors file, `tokenizer.json`, and optionally `model.safetensors.index.json` (then
//! the safetensors file is written as the shard `model-00001-of-00001.safetensors`).
#![no_main]

use cascade_engine::{Logits, Model};
use cascade_fuzz::{scratch, sections, work_tokenizer, write_folder};
use cascade_weights::{OpenOptions, WeightStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cascade_fuzz::caught_panics_are_handled();
    let parts = sections(data);
    let dir = scratch().join("hf");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    write_folder(&parts, &dir).expect("scratch write");
    let store = WeightStore::new();
    let Ok(model) = Model::load(&store, &dir, &OpenOptions::default()) else {
        return;
    };
    work_tokenizer(&model.tokenizer);
    let ids = [0u32, 1, 2];
    if ids.iter().all(|&i| (i as usize) < model.vocab_size()) {
        // A hostile config's KV size is an error, never a panic.
        if let Ok(mut cache) = model.new_cache(4) {
            let _ = model.forward(&ids, &mut cache, Logits::All);
        }
    }
});
