//! A request body as the routes read it, apart from the engine: the fields both endpoints share,
//! then the endpoint's own prompt. The fuzz target `request_body` drives [`read_request`].

use cascade_engine::Prompt;

use super::error::ApiError;
use super::openai::{parse_body, read, ChatRequest, Common, CompletionRequest};
use super::params::{chat_prompt, completion_prompt, settings, Limits, ModeDefaults, Settings};
use super::response::Kind;

/// The shared fields and the prompt of a body sent to `kind`'s endpoint.
pub fn parse_request(kind: Kind, body: &[u8]) -> Result<(Common, Prompt), ApiError> {
    let v = parse_body(body)?;
    let common: Common = read(&v)?;
    let prompt = match kind {
        Kind::Chat => chat_prompt(&read::<ChatRequest>(&v)?)?,
        Kind::Completion => completion_prompt(&read::<CompletionRequest>(&v)?)?,
    };
    Ok((common, prompt))
}

/// Everything the server checks of a body before it reaches the engine: [`parse_request`] and
/// the generation settings under the server's defaults and the model's limits.
pub fn read_request(
    kind: Kind,
    body: &[u8],
    defaults: &ModeDefaults,
    limits: Limits,
) -> Result<(Prompt, Settings), ApiError> {
    let (common, prompt) = parse_request(kind, body)?;
    Ok((prompt, settings(&common, defaults, limits)?))
}
