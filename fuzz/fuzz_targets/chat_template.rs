//! A chat template (as a model file carries it) rendered over a short conversation: it must end
//! (fuel), not recurse without bound, and not write without bound.
#![no_main]

use cascade_engine::chat::{render, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cascade_fuzz::caught_panics_are_handled();
    let Ok(template) = std::str::from_utf8(data) else {
        return;
    };
    let messages = [
        Message::system("You are a helpful assistant."),
        Message::user("Write a function that adds two numbers."),
        Message::assistant("def add(a, b):\n    return a + b"),
        Message::user("Now in Rust, please."),
    ];
    let _ = render(template, &messages, "<s>", "</s>");
});
