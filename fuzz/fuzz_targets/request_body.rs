//! A request body as `cascade serve` reads it: the first byte picks the endpoint (even: chat
//! completions, odd: completions), the rest is the body; parsed, then checked against the
//! server's defaults and a model's limits.
#![no_main]

use cascade::engine::DraftLen;
use cascade::serve::{read_request, Kind, Limits, ModeDefaults, ModeName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let kind = if first % 2 == 0 {
        Kind::Chat
    } else {
        Kind::Completion
    };
    let defaults = ModeDefaults {
        mode: ModeName::Exact,
        rule: None,
        alpha: None,
        draft_len: DraftLen::default(),
        lookup: true,
        draft_model: first & 2 != 0,
    };
    let limits = Limits {
        context: 4096,
        default_max_tokens: 256,
    };
    let _ = read_request(kind, body, &defaults, limits);
});
