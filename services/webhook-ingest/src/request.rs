//! What every receiver does with a request before it knows the sender: read a bounded body,
//! read headers, and the problems it answers with.

use actix_web::{HttpRequest, http::StatusCode, web};
use futures::StreamExt as _;
use http_problem::Problem;

/// 401 with no detail: a sender probing signatures learns nothing from the answer.
pub fn unauthorized() -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
}

pub fn too_large(max: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "Payload Too Large",
    )
    .detail(format!("The body is larger than {max} bytes."))
    .with("limit_bytes", max)
}

pub fn unprocessable(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
        "Unprocessable Content",
    )
    .detail(detail)
}

/// The answer when the inbox cannot be written: senders retry what is not acknowledged.
pub fn not_stored(error: database::DatabaseError) -> Problem {
    tracing::error!(%error, "cannot store an inbound webhook");
    Problem::unavailable("The event could not be stored; retry later.").retry_after(5)
}

/// How long a sender may take to send a whole body (`WEBHOOK_BODY_TIMEOUT`), so a sender that
/// stalls cannot hold a connection and a buffer for ever.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: std::time::Duration,
}

/// Reads the body as it streams in, refusing it as soon as it passes the size limit (or declares
/// more), so a huge body is never buffered whole, and with 408 when it is not all there in time.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limits: BodyLimits,
) -> Result<Vec<u8>, Problem> {
    tokio::time::timeout(limits.timeout, read_bounded(req, payload, limits.max_bytes))
        .await
        .unwrap_or_else(|_| {
            Err(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request Timeout",
            )
            .detail(format!(
                "The body did not arrive within {} seconds.",
                limits.timeout.as_secs_f64()
            )))
        })
}

async fn read_bounded(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> Result<Vec<u8>, Problem> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(max));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| Problem::invalid_request("The body could not be read."))?;
        if body.len() + chunk.len() > max {
            return Err(too_large(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A header's text, or "" when it is absent or not text.
pub fn header<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}
