//! Router errors in the OpenAI error schema:
//! `{"error": {"message", "type", "param", "code"}}`.
//!
//! | status | type | code | when |
//! |---|---|---|---|
//! | 400 | invalid_request_error | invalid_value, unknown_parameter, … | bad input |
//! | 400 | invalid_request_error | context_length_exceeded | prompt + max_tokens over the context |
//! | 401 | authentication_error | invalid_api_key | missing or wrong key |
//! | 404 | invalid_request_error | model_not_found | unknown model, or unknown path |
//! | 413 | invalid_request_error | request_too_large | body over the limit |
//! | 429 | rate_limit_error | queue_full | every worker's queue is full |
//! | 503 | service_unavailable | no_workers | no target worker answers |
//! | 500 | server_error | internal_error | a worker failed mid-request |

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: &'static str,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), kind: "invalid_request_error", param: param.map(str::to_string), code: "invalid_value" }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn context_length(needed: usize, limit: usize) -> Self {
        ApiError::invalid(
            format!("This model's maximum context length is {limit} tokens. However, you requested {needed} tokens (prompt + max_tokens). Please reduce the length of the messages or max_tokens."),
            Some("messages"),
        )
        .with_code("context_length_exceeded")
    }

    pub fn unauthorized() -> Self {
        ApiError { status: StatusCode::UNAUTHORIZED, message: "Incorrect or missing API key.".into(), kind: "authentication_error", param: None, code: "invalid_api_key" }
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: "model_not_found",
        }
    }

    pub fn not_found(path: &str) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, message: format!("Unknown path `{path}`."), kind: "invalid_request_error", param: None, code: "not_found" }
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("Request body is larger than the {limit}-byte limit."),
            kind: "invalid_request_error",
            param: None,
            code: "request_too_large",
        }
    }

    pub fn queue_full(msg: &str) -> Self {
        ApiError { status: StatusCode::TOO_MANY_REQUESTS, message: format!("Every worker is at capacity: {msg}"), kind: "rate_limit_error", param: None, code: "queue_full" }
    }

    /// Too many requests in flight for one API key.
    pub fn key_busy(limit: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("This API key already has {limit} requests in flight, the most allowed; retry when one finishes."),
            kind: "rate_limit_error",
            param: None,
            code: "rate_limit_exceeded",
        }
    }

    /// The client was too slow sending its request.
    pub fn timeout(msg: String) -> Self {
        ApiError { status: StatusCode::REQUEST_TIMEOUT, message: msg, kind: "invalid_request_error", param: None, code: "request_timeout" }
    }

    /// The request ran past `--request-timeout-secs`; what it was doing on
    /// the worker is cancelled.
    pub fn deadline(limit: std::time::Duration) -> Self {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!("The request did not finish within the router's request timeout ({} s).", limit.as_secs_f64()),
            kind: "server_error",
            param: None,
            code: "request_timeout",
        }
    }

    pub fn unavailable(msg: &str) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: msg.to_string(), kind: "service_unavailable", param: None, code: "no_workers" }
    }

    pub fn internal(msg: &str) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: msg.to_string(), kind: "server_error", param: None, code: "internal_error" }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        r.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // Clients such as `openai` honour it in their retry backoff.
            r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            r.headers_mut().insert("connection", axum::http::HeaderValue::from_static("close"));
        }
        r
    }
}

/// How a worker's gRPC status reaches the client.
pub fn from_status(s: &tonic::Status) -> ApiError {
    match s.code() {
        tonic::Code::InvalidArgument => ApiError::invalid(s.message(), None),
        tonic::Code::ResourceExhausted => ApiError::queue_full(s.message()),
        tonic::Code::DeadlineExceeded => ApiError { status: StatusCode::GATEWAY_TIMEOUT, message: format!("target worker: {}", s.message()), kind: "server_error", param: None, code: "request_timeout" },
        tonic::Code::Unavailable => ApiError::unavailable(&format!("target worker unavailable: {}", s.message())),
        _ => ApiError::internal(&format!("target worker error: {}", s.message())),
    }
}
