//! `cascade serve` on the real models (1.5B target, 0.5B draft), driven by the official `openai`
//! Python client (`tests/serve/openai_client.py`): chat and completions, streamed and not, usage,
//! stop strings, concurrent streams, a client that disconnects, the error classes, and structured
//! outputs (json_schema through `parse` with a Pydantic model, json_object, a Lark grammar, bad input).

mod common;
#[path = "serve/harness.rs"]
mod harness;

use std::process::Command;
use std::time::Duration;

use harness::Server;

const KEY: &str = "cascade-test-key";

/// Whether `python3` can import `openai` and `jsonschema`; in CI (CI=true) their absence fails
/// the test.
fn openai_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openai, jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = "python3 cannot import openai and jsonschema: run \
                   `python3 -m pip install 'openai>=1.40,<3' 'jsonschema>=4'`";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipping: {msg}");
    }
    ok
}

#[test]
fn the_openai_client_talks_to_the_server() {
    if !openai_available() {
        return;
    }
    let target = common::real_model("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    let draft = common::real_model("qwen2.5-coder-0.5b-instruct-q4.gguf");
    let draft = draft.to_str().unwrap();
    let mut s = Server::start(
        &target,
        &["--draft", draft, "--threads", "2", "--api-key", KEY],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/serve/openai_client.py");
    let base = format!("http://{}/v1", s.addr);
    let out = Command::new("python3")
        .args([script, "--base-url", &base, "--api-key", KEY])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "openai_client.py failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        s.log()
    );
    let (status, took) = s.terminate(Duration::from_secs(12));
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}
