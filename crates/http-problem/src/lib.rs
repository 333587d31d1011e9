//! Problem details for HTTP APIs (RFC 9457): every error a client sees is an
//! `application/problem+json` body with a stable `type`, a human `title`, the `status`, and a
//! `detail` written for the client. Internal causes go to the log, never into the body.
//!
//! This crate does no IO.

use actix_web::{
    HttpRequest, HttpResponse, ResponseError,
    body::BoxBody,
    error::{JsonPayloadError, PathError, QueryPayloadError},
    http::{StatusCode, header},
};
use serde::Serialize;

/// The media type of a problem body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// One problem, ready to be sent.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem; relative to the API's documentation.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extra members, flattened into the body.
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// Seconds after which a retry may succeed: the `Retry-After` header (and the
    /// `retry_after_seconds` member).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of kind `kind` (a short slug such as `not-found`, published under
    /// `/problems/`) with the given status and title.
    pub fn new(status: StatusCode, kind: &str, title: &str) -> Self {
        Self {
            kind: format!("/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            extensions: serde_json::Map::new(),
            retry_after: None,
        }
    }

    /// Tells the client when to retry: the `Retry-After` header, and `retry_after_seconds` in
    /// the body for clients that only read JSON.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self.with("retry_after_seconds", seconds)
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extensions.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
        self
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not Found")
            .detail("No resource exists at this path.")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method Not Allowed",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal Server Error",
        )
        .detail("Something went wrong on our side; it has been logged.")
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service Unavailable",
        )
        .detail(detail)
    }

    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "bad-gateway", "Bad Gateway").detail(detail)
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid Request",
        )
        .detail(detail)
    }

    pub fn to_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response
            .insert_header((header::CONTENT_TYPE, CONTENT_TYPE))
            .insert_header((header::CACHE_CONTROL, "no-store"));
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(self)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        Problem::status_code(self)
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        self.to_response()
    }
}

/// The default service of an app: unknown paths get a `not-found` problem.
pub async fn not_found() -> HttpResponse {
    Problem::not_found().to_response()
}

/// What a client is told about a body serde could not read: the field and the rule, never a
/// Rust type name, and no line and column (bodies are small).
pub fn serde_message(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let text = error.to_string();
    let text = text.split(" at line ").next().unwrap_or_default();
    match error.classify() {
        Category::Syntax | Category::Eof => format!("The body is not valid JSON: {text}."),
        _ if text.contains("expected a map") || text.contains("expected struct") => {
            "The body must be a JSON object.".to_owned()
        }
        _ => format!("Invalid JSON body: {text}."),
    }
}

/// A JSON body that must be an object: `web::Json<T>` would also take an array for a struct
/// (serde reads its fields by position). Limits and content type follow the app's
/// `JsonConfig` and [`json_error`].
#[derive(Debug)]
pub struct JsonObject<T>(pub T);

impl<T: serde::de::DeserializeOwned + 'static> actix_web::FromRequest for JsonObject<T> {
    type Error = actix_web::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let object =
            actix_web::web::Json::<serde_json::Map<String, serde_json::Value>>::from_request(
                req, payload,
            );
        Box::pin(async move {
            let object = object.await?.into_inner();
            serde_json::from_value(serde_json::Value::Object(object))
                .map(JsonObject)
                .map_err(|e| Problem::invalid_request(serde_message(&e)).into())
        })
    }
}

/// For `web::JsonConfig::default().error_handler(json_error)`: a malformed or oversized JSON body
/// becomes a problem that says what is wrong with it.
pub fn json_error(error: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let problem = match &error {
        JsonPayloadError::OverflowKnownLength { length, limit } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request Body Too Large",
        )
        .detail(format!(
            "The body has {length} bytes; the limit is {limit}."
        ))
        .with("limit_bytes", limit),
        JsonPayloadError::Overflow { limit } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request Body Too Large",
        )
        .detail(format!("The body exceeds the limit of {limit} bytes."))
        .with("limit_bytes", limit),
        JsonPayloadError::ContentType => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported Media Type",
        )
        .detail("Send the body as application/json."),
        JsonPayloadError::Deserialize(e) => Problem::invalid_request(serde_message(e)),
        JsonPayloadError::Payload(actix_web::error::PayloadError::Io(e))
            if e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request Timeout",
            )
            .detail("The request body did not arrive in time.")
        }
        _ => Problem::invalid_request("The JSON body could not be read."),
    };
    problem.into()
}

/// For `web::QueryConfig::default().error_handler(query_error)`.
pub fn query_error(error: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    Problem::invalid_request(format!("Invalid query string: {error}")).into()
}

/// For `web::PathConfig::default().error_handler(path_error)`.
pub fn path_error(error: PathError, _req: &HttpRequest) -> actix_web::Error {
    Problem::invalid_request(format!("Invalid path parameter: {error}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_rfc_9457() {
        let problem = Problem::not_found().with("path", "/x");
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(json["type"], "/problems/not-found");
        assert_eq!(json["status"], 404);
        assert_eq!(json["path"], "/x");
        assert_eq!(
            problem
                .to_response()
                .headers()
                .get(header::CONTENT_TYPE)
                .unwrap(),
            CONTENT_TYPE
        );
    }
}
