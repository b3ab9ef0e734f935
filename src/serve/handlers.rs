//! The routes' handlers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use cascade_engine::{Prompt, Request};

use super::error::ApiError;
use super::openai::Common;
use super::params::settings;
use super::request::parse_request;
use super::response::{self, Chunks, Kind, Meta};
use super::run::{Piece, Run};
use super::{sse, AppState, Phase};

type Shared = State<Arc<AppState>>;

pub async fn health(State(st): Shared) -> Response {
    let (code, status) = match st.phase() {
        Phase::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
        Phase::Ready => (StatusCode::OK, "ok"),
        Phase::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
    };
    (code, Json(json!({ "status": status }))).into_response()
}

pub async fn metrics(State(st): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.prometheus.render(),
    )
        .into_response()
}

pub async fn models(State(st): Shared) -> Result<Response, ApiError> {
    let engine = st.engine()?;
    let name = &st.cfg.model_name;
    Ok(Json(json!({"object": "list", "data": [{
        "id": name,
        "object": "model",
        "created": st.started,
        "owned_by": "cascade",
        "root": st.cfg.engine.target.display().to_string(),
        "parent": null,
        "max_model_len": engine.target().config.context_length,
    }]}))
    .into_response())
}

pub async fn chat(
    State(st): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    handle(st, body, Kind::Chat).await
}

pub async fn completions(
    State(st): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    handle(st, body, Kind::Completion).await
}

/// Parses a body (the fields both endpoints share, then the endpoint's own prompt) and runs it.
async fn handle(
    st: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let (common, prompt) = parse_request(kind, &body_bytes(&st, body)?)?;
    check_model(&st, &common)?;
    generate(st, kind, prompt, &common).await
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// The body, or 413 past `--max-body-bytes`.
fn body_bytes(st: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(st.cfg.max_body_bytes),
        _ => ApiError::bad_request(format!("reading the request body: {}", r.body_text())),
    })
}

fn check_model(st: &AppState, c: &Common) -> Result<(), ApiError> {
    match c.model.as_deref() {
        None => Err(ApiError::field("model", "required")),
        Some(m) if m == st.cfg.model_name => Ok(()),
        Some(m) => Err(ApiError::model_not_found(m, &st.cfg.model_name)),
    }
}

/// Submits the request and answers: whole, or as a stream once its first piece is known.
async fn generate(
    st: Arc<AppState>,
    kind: Kind,
    prompt: Prompt,
    common: &Common,
) -> Result<Response, ApiError> {
    let engine = st.engine()?;
    let s = settings(common, &st.cfg.defaults, st.limits(&engine, kind))?;
    let meta = Meta::new(kind, st.next_id(), &st.cfg.model_name, s.mode);
    let req = Request {
        prompt,
        mode: s.mode,
        config: s.config,
        grammar: s.grammar,
    };
    let from_grammar = common.grammar.is_some();
    let mut run = Run::start(&st, engine, req, s.stops)
        .await
        .map_err(|mut e| {
            // The engine's grammar errors name `response_format`; this request used `grammar`.
            if from_grammar && e.param.as_deref() == Some("response_format") {
                e.param = Some("grammar".into());
                e.message = e.message.replacen("response_format", "grammar", 1);
            }
            e
        })?;
    let first = run.next().await?;
    if s.stream {
        let chunks = Chunks {
            meta,
            include_usage: s.include_usage,
        };
        return Ok(sse::respond(run, chunks, first));
    }
    let mut text = String::new();
    let mut piece = first;
    loop {
        match piece {
            Piece::Text(t) => text.push_str(&t),
            Piece::End(o) => return Ok(Json(response::full(&meta, text, &o)).into_response()),
        }
        piece = run.next().await?;
    }
}
