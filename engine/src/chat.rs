//! Chat templates from the model's metadata, rendered with minijinja.

use minijinja::value::ValueKind;
use minijinja::{context, Environment, Error, ErrorKind, Output, State, Value};
use serde::Serialize;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Message {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

fn raise_exception(msg: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Instructions one render may run (minijinja's fuel). Real templates spend tens per message;
/// a template that loops without end stops here instead of hanging the request.
pub const TEMPLATE_FUEL: u64 = 2_000_000;
/// Nesting a render may reach (macros calling macros, nested loops); minijinja's own cap is 500.
pub const TEMPLATE_RECURSION: usize = 100;
/// Bytes a render may write on top of four times the messages' own bytes.
pub const TEMPLATE_OUTPUT_SLACK: usize = 64 << 10;
/// Items (of sequences and maps, nested) one `{{ value }}` may print. minijinja repeats a
/// sequence lazily (`messages * 10**10`) in one instruction, past the reach of fuel, and prints it
/// whole before the output cap can see it: the `chat_template` fuzzer found that hang.
pub const TEMPLATE_PRINT_ITEMS: usize = 100_000;

/// Renders `messages` with a Hugging Face style Jinja chat template, ending with the prompt for
/// the assistant's turn. Templates come from model files, so a render is bounded: in
/// instructions ([`TEMPLATE_FUEL`]), in nesting ([`TEMPLATE_RECURSION`]) and in output
/// ([`output_limit`]); each refusal is an error naming the limit. A panic inside the template
/// engine is an error too: the `chat_template` fuzzer found minijinja 2.24 indexing past an
/// empty string on a backwards slice (`{{ ''[-18::-21] }}`).
pub fn render(template: &str, messages: &[Message], bos: &str, eos: &str) -> Result<String> {
    let run = std::panic::AssertUnwindSafe(|| render_bounded(template, messages, bos, eos));
    std::panic::catch_unwind(run).unwrap_or_else(|_| {
        Err(EngineError::ChatTemplate(
            "the template engine failed on this template (a panic in minijinja, caught)".into(),
        ))
    })
}

fn render_bounded(template: &str, messages: &[Message], bos: &str, eos: &str) -> Result<String> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION);
    env.add_function("raise_exception", raise_exception);
    env.set_formatter(bounded_formatter);
    env.add_template("chat", template)
        .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
    let limit = output_limit(messages);
    let mut out = Capped {
        buf: Vec::new(),
        limit,
    };
    let ctx = context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    };
    match tmpl.render_captured_to(ctx, &mut out) {
        Ok(_) => {}
        Err(_) if out.buf.len() >= limit => {
            return Err(EngineError::Limit {
                what: "the chat template's output in bytes",
                limit: limit as u64,
            })
        }
        Err(e) if e.kind() == ErrorKind::OutOfFuel => {
            return Err(EngineError::Limit {
                what: "the chat template's instructions (minijinja fuel)",
                limit: TEMPLATE_FUEL,
            })
        }
        Err(e) => return Err(EngineError::ChatTemplate(e.to_string())),
    }
    String::from_utf8(out.buf).map_err(|e| EngineError::ChatTemplate(e.to_string()))
}

/// minijinja's own formatter, after checking that the value holds at most
/// [`TEMPLATE_PRINT_ITEMS`] items.
fn bounded_formatter(
    out: &mut Output,
    state: &State,
    value: &Value,
) -> std::result::Result<(), Error> {
    let mut budget = TEMPLATE_PRINT_ITEMS;
    if !fits(value, &mut budget) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("a printed value holds more than {TEMPLATE_PRINT_ITEMS} items"),
        ));
    }
    minijinja::escape_formatter(out, state, value)
}

/// Whether `v` and everything inside it holds at most `budget` items (spent as it walks; a
/// sequence's length is known before it is walked, so a huge one costs nothing to refuse).
fn fits(v: &Value, budget: &mut usize) -> bool {
    if !matches!(
        v.kind(),
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable | ValueKind::Plain
    ) {
        return true;
    }
    match v.len() {
        Some(n) if n > *budget => return false,
        Some(n) => *budget -= n,
        None => {}
    }
    let Ok(items) = v.try_iter() else {
        return true;
    };
    for item in items {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        let inner = if v.kind() == ValueKind::Map {
            v.get_item(&item).unwrap_or_default()
        } else {
            item
        };
        if !fits(&inner, budget) {
            return false;
        }
    }
    true
}

/// The most bytes a render of `messages` may write.
pub fn output_limit(messages: &[Message]) -> usize {
    let input: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .sum();
    input
        .saturating_mul(4)
        .saturating_add(TEMPLATE_OUTPUT_SLACK)
}

/// A writer that refuses to grow past `limit` bytes.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.limit {
            self.buf
                .extend_from_slice(&b[..self.limit - self.buf.len()]);
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn renders_a_chatml_template() {
        let s = render(CHATML, &[Message::user("hi")], "", "").unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn template_errors_are_reported() {
        assert!(render("{% for %}", &[], "", "").is_err());
        assert!(render("{{ raise_exception('no') }}", &[], "", "").is_err());
    }

    #[test]
    fn a_panic_in_the_template_engine_is_an_error() {
        // minijinja 2.24 indexes an empty string's characters on a backwards slice from -18.
        for t in ["{{ ''[2-20::2-23] }}", "{{ ''[-18::-21] }}"] {
            let e = render(t, &[Message::user("hi")], "", "").unwrap_err();
            assert!(
                matches!(e, EngineError::ChatTemplate(ref m) if m.contains("panic")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel() {
        let t = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let e = render(t, &[Message::user("hi")], "", "").unwrap_err();
        assert!(
            matches!(e, EngineError::Limit { limit, .. } if limit == TEMPLATE_FUEL),
            "{e}"
        );
    }

    #[test]
    fn a_template_that_writes_without_bound_is_cut_at_its_limit() {
        let t = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}";
        let m = [Message::user("hi")];
        let e = render(t, &m, "", "").unwrap_err();
        let want = output_limit(&m) as u64;
        assert!(
            matches!(e, EngineError::Limit { limit, .. } if limit == want),
            "{e}"
        );
        // The messages' own size raises the limit: a long conversation is not refused.
        let long = [Message::user("y".repeat(200_000))];
        let s = render(CHATML, &long, "", "").unwrap();
        assert!(s.len() > 200_000);
    }

    #[test]
    fn printing_a_repeated_sequence_is_refused_not_hung() {
        // The chat_template fuzzer's hang: a sequence repeated 5 * 10^11 times, printed.
        let t = "{rl({{messages*24*22222222257}} i";
        let m = [Message::user("hi"), Message::assistant("yo")];
        let e = render(t, &m, "", "").unwrap_err();
        assert!(e.to_string().contains("more than 100000 items"), "{e}");
        // Nested, and a map: the walk counts every item.
        let t = "{{ [messages * 30000, messages * 30000] }}";
        assert!(render(t, &m, "", "").is_err());
        // Real values print as before.
        let s = render("{{ messages }}", &m, "", "").unwrap();
        assert!(s.contains("hi") && s.contains("yo"), "{s}");
    }

    #[test]
    fn recursion_is_bounded() {
        let t = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        let e = render(t, &[], "", "").unwrap_err();
        assert!(e.to_string().contains("recursion"), "{e}");
    }
}
