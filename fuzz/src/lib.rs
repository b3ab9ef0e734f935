//! What the fuzz targets share: a scratch folder for inputs that must be files (the loaders map
//! files), the split of one input into several files, and a workout for a loaded tokenizer.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cascade_weights::{StreamDecoder, Tokenizer};

mod format;
pub use format::{sections, write_folder, SECTION};

/// This process's scratch folder (on tmpfs where there is one), made once.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("cascade-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

/// Text that reaches the pre-tokenizer's every class: letters, digits, punctuation, spaces and
/// newlines, non-Latin scripts, an emoji, and special tokens written out.
pub const SAMPLE: &str =
    "Hello, world! <|im_start|>user\n  def f(x):\n\treturn x ** 2  # 12345 é漢字 🙂<|im_end|>\r\n";

/// Encodes, decodes and streams [`SAMPLE`]: what a request does with a tokenizer.
pub fn work_tokenizer(tok: &Tokenizer) {
    let Ok(ids) = tok.encode(SAMPLE, true) else {
        return;
    };
    let _ = tok.decode(&ids);
    let mut stream = StreamDecoder::new();
    for &id in &ids {
        let _ = stream.push(tok, id);
        let _ = tok.kind(id);
        let _ = tok.is_eog(id);
    }
    let _ = stream.finish();
    // Ids a client may send that the vocabulary does not have.
    for id in [u32::MAX, tok.n_vocab() as u32, 0] {
        let _ = tok.is_valid(id);
        let _ = tok.token_str(id);
    }
}

/// Lets panics unwind, so that one the code under test catches (cascade turns a panic inside
/// minijinja or `tokenizers` into an error) counts as handled, as it is for a user. libfuzzer-sys
/// installs a hook that aborts on every panic, caught or not; this one prints the panic and
/// returns, and a panic nobody catches still aborts in libfuzzer-sys's wrapper: a crash.
pub fn caught_panics_are_handled() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| eprintln!("panic (unwinding): {info}")))
    });
}
