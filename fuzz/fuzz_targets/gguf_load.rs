//! A GGUF file through the whole loader: header (metadata, tensor infos, offsets, shapes, types,
//! the interleaved layout), typed config, tokenizer, the model's tensor checks, then one forward
//! pass of a short prompt if it loads.
#![no_main]

use cascade_engine::{Logits, Model};
use cascade_fuzz::{scratch, work_tokenizer, SAMPLE};
use cascade_weights::{OpenOptions, WeightStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch().join("model.gguf");
    std::fs::write(&path, data).expect("scratch write");
    let store = WeightStore::new();
    let Ok(model) = Model::load(&store, &path, &OpenOptions::default()) else {
        return;
    };
    work_tokenizer(&model.tokenizer);
    let Ok(ids) = model.tokenizer.encode(&SAMPLE[..12], true) else {
        return;
    };
    if ids.is_empty() {
        return;
    }
    // A hostile config's KV size is an error, never a panic.
    if let Ok(mut cache) = model.new_cache(ids.len() + 1) {
        let _ = model.forward(&ids, &mut cache, Logits::Last);
    }
});
