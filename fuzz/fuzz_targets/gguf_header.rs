//! The GGUF header parser alone (metadata of every type, tensor infos, offsets, shapes, types,
//! the interleaved layout): the part of a load that reads every byte a file claims, at the
//! speed that lets a fuzzer run it millions of times. `gguf_load` takes the same files through
//! the whole loader.
#![no_main]

use std::path::Path;

use cascade_weights::GgufHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = GgufHeader::parse(Path::new("fuzz.gguf"), data) {
        for t in &h.tensors {
            // A parsed tensor lies inside the file.
            let end = t
                .offset
                .checked_add(t.n_bytes)
                .expect("tensor end overflows");
            assert!(end <= data.len() as u64, "tensor {} past the end", t.name);
        }
        for v in h.metadata.values() {
            let _ = v.describe();
        }
    }
});
