//! One error type for every HTTP answer that is not a success, rendered in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use cascade_engine::EngineError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (`messages[0].role`, `max_tokens`), when there is one.
    pub param: Option<String>,
    /// A short machine-readable code (`model_not_found`, `invalid_api_key`).
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 about one field of the request.
    pub fn field(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        let param = param.into();
        let message = format!("{param}: {}", message.into());
        ApiError {
            param: Some(param),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    /// 400 about the request as a whole (malformed JSON).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send 'Authorization: Bearer KEY'",
            )
        }
    }

    pub fn model_not_found(asked: &str, served: &str) -> ApiError {
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                format!("the model '{asked}' does not exist; this server serves '{served}'"),
            )
        }
    }

    pub fn not_found(path: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no route {path}"))
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        )
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        )
    }

    pub fn loading() -> ApiError {
        ApiError {
            code: Some("loading"),
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is loading")
        }
    }

    pub fn shutting_down() -> ApiError {
        ApiError {
            code: Some("shutting_down"),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// OpenAI's `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 405 | 413 => "invalid_request_error",
            401 => "authentication_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            _ => "server_error",
        }
    }

    /// The JSON body (also sent as an SSE event when a stream fails midway).
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// The request field an engine parameter name stands for.
fn field_of(engine_name: &str) -> String {
    match engine_name {
        "top-p" => "top_p".into(),
        "temperature" => "temperature".into(),
        "alpha" => "cascade.alpha".into(),
        "draft length" | "maximum draft length" => "cascade.draft_len".into(),
        "mode" | "proposer" => "cascade.mode".into(),
        other => other.replace(' ', "_"),
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let msg = e.to_string();
        match e {
            EngineError::QueueFull { .. } => ApiError {
                code: Some("queue_full"),
                retry_after: Some(1),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, msg)
            },
            EngineError::PromptTooLong { .. }
            | EngineError::EmptyPrompt
            | EngineError::InvalidToken { .. }
            | EngineError::ChatTemplate(_)
            | EngineError::Limit { .. }
            | EngineError::NoChatTemplate => ApiError::field("prompt", msg),
            EngineError::KvBudget { .. } => ApiError::field("max_tokens", msg),
            EngineError::InvalidParam { name, reason } => ApiError::field(field_of(name), reason),
            EngineError::NoDraft => ApiError::field("cascade.mode", msg),
            EngineError::Grammar { reason } => ApiError::field("response_format", reason),
            EngineError::ShuttingDown | EngineError::SchedulerGone => ApiError {
                code: Some("shutting_down"),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg)
            },
            _ => ApiError::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_statuses_and_fields() {
        let e = ApiError::from(EngineError::QueueFull { limit: 3 });
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(1));
        let e = ApiError::from(EngineError::InvalidParam {
            name: "top-p",
            reason: "2 must be in (0, 1]".into(),
        });
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("top_p"));
        assert!(e.message.starts_with("top_p: "));
        let e = ApiError::from(EngineError::SchedulerGone);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        // A prompt or template past its limit is the client's request: 400 naming the limit.
        let e = ApiError::from(EngineError::Limit {
            what: "the prompt's text in bytes",
            limit: 1 << 20,
        });
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("limit of 1048576"), "{}", e.message);
    }

    #[test]
    fn the_body_has_openais_shape() {
        let b = ApiError::field("n", "only 1 is supported").body();
        assert_eq!(b["error"]["param"], "n");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(b["error"]["code"].is_null());
    }
}
