//! `POST /api/v1/webhooks/github`: GitHub's webhooks, verified (`X-Hub-Signature-256`), stored in
//! the inbox before the 200 (GitHub gives a receiver 10 seconds, so nothing downstream runs
//! first), once per (`X-GitHub-Hook-ID`, `X-GitHub-Delivery`): a redelivery keeps its delivery id.
//! JSON and form-encoded (`payload=`) bodies are both accepted.

use actix_web::{HttpRequest, HttpResponse, web};
use http_problem::Problem;
use prometheus::IntCounterVec;
use ring::hmac;

use crate::{
    inbox::{self, NewEvent, State, Stored},
    monitor::Monitor,
    ratelimit::RateLimiter,
    request::{BodyLimits, header, not_stored, read_body, unauthorized, unprocessable},
    routing::{self, EventFacts},
};

/// GitHub does not deliver payloads over 25 MB.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// What the GitHub receiver needs.
#[derive(Clone)]
pub struct GithubReceiver {
    pub pool: database::Pool,
    /// The webhook secret (`GITHUB_WEBHOOK_SECRET`); without it every delivery is refused.
    pub secret: Option<hmac::Key>,
    pub received: IntCounterVec,
    pub processing: prometheus::HistogramVec,
    pub monitor: Monitor,
    pub limiter: RateLimiter,
    /// How long a body may take (`WEBHOOK_BODY_TIMEOUT`); its size limit is GitHub's.
    pub body_timeout: std::time::Duration,
    /// This replica's dispatcher, woken when an event is stored.
    pub wake: crate::dispatch::Waker,
    /// The routing rules: an event none of them matches is stored as done.
    pub rules: std::sync::Arc<Vec<crate::routing::Rule>>,
}

pub(crate) const ROUTE: &str = "/api/v1/webhooks/github";

/// Checks `X-Hub-Signature-256`: `sha256=` and the hex HMAC-SHA256 of the raw body, compared in
/// constant time.
pub fn verify_signature(key: &hmac::Key, header: &str, body: &[u8]) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(signature) = decode_hex(hex) else {
        return false;
    };
    hmac::verify(key, body, &signature).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    // Hex digits only: `u8::from_str_radix` also takes a sign (`+f`), which would let one
    // signature be written several ways.
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The event's JSON text (the body itself, or the `payload` field of a form-encoded body) and the
/// event parsed.
fn payload_text(content_type: &str, body: &[u8]) -> Result<(String, serde_json::Value), String> {
    let text = if content_type.starts_with("application/x-www-form-urlencoded") {
        url::form_urlencoded::parse(body)
            .find(|(name, _)| name == "payload")
            .map(|(_, value)| value.into_owned())
            .ok_or("a form-encoded body must have a payload field")?
    } else {
        String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8")?
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| "the payload is not JSON")?;
    if !json.is_object() {
        return Err("the payload must be a JSON object".to_owned());
    }
    Ok((text, json))
}

/// The handler; every refusal or failure counts for the path's monitoring.
#[tracing::instrument(skip_all, fields(event, delivery))]
pub async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    receiver: web::Data<GithubReceiver>,
) -> Result<HttpResponse, Problem> {
    let _timer = receiver
        .processing
        .with_label_values(&["github"])
        .start_timer();
    let result = handle(&req, payload, &receiver).await;
    if result.is_err() {
        receiver.monitor.failure(req.path(), ROUTE);
    }
    result
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    receiver: &GithubReceiver,
) -> Result<HttpResponse, Problem> {
    let count = |outcome: &str| {
        receiver
            .received
            .with_label_values(&["github", outcome])
            .inc();
    };
    receiver
        .limiter
        .check(req)
        .await
        .inspect_err(|_| count("rate_limited"))?;
    let body = read_body(
        req,
        payload,
        BodyLimits {
            max_bytes: MAX_BODY_BYTES,
            timeout: receiver.body_timeout,
        },
    )
    .await
    .inspect_err(|_| count("refused"))?;
    let Some(key) = &receiver.secret else {
        tracing::error!(
            "a GitHub webhook arrived but GITHUB_WEBHOOK_SECRET is not set; it is refused"
        );
        count("unauthorized");
        return Err(unauthorized());
    };
    if !verify_signature(key, header(req, "x-hub-signature-256"), &body) {
        tracing::warn!("GitHub webhook refused: signature");
        count("unauthorized");
        return Err(unauthorized());
    }
    let (event, delivery, hook) = (
        header(req, "x-github-event"),
        header(req, "x-github-delivery"),
        header(req, "x-github-hook-id"),
    );
    tracing::Span::current().record("event", event);
    tracing::Span::current().record("delivery", delivery);
    let valid = |text: &str| {
        (1..=128).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !valid(event) || !valid(delivery) || !(hook.is_empty() || valid(hook)) {
        count("refused");
        return Err(Problem::invalid_request(
            "X-GitHub-Event and X-GitHub-Delivery are required: 1 to 128 letters, digits, '-', '_' or '.'.",
        ));
    }
    let delivery_id = format!("{hook}:{delivery}");
    let now = chrono::Utc::now();
    let path = req.path();
    match payload_text(header(req, "content-type"), &body) {
        Ok((text, json)) => {
            let event_type = match json["action"].as_str() {
                Some(action) => format!("{event}.{action}"),
                None => event.to_owned(),
            };
            // A ping only says the hook works, and an event no rule matches has nothing to run:
            // both are recorded as done.
            let facts = EventFacts {
                source: "github",
                event_type: &event_type,
                payload: &json,
            };
            let state = if event != "ping" && routing::has_work(&receiver.rules, &facts) {
                State::Received
            } else {
                State::Done
            };
            let stored = inbox::store(
                &receiver.pool,
                &NewEvent {
                    source: "github",
                    delivery_id: &delivery_id,
                    path,
                    subject_type: None,
                    subject_id: None,
                    event_type: Some(&event_type),
                    payload: &text,
                    state,
                    error: None,
                    tenant: None,
                },
                now,
            )
            .await
            .map_err(not_stored)?;
            Ok(match stored {
                Stored::New(id) => {
                    if state == State::Received {
                        receiver.wake.wake();
                    }
                    count("accepted");
                    tracing::info!(event_id = %id, event_type, "GitHub webhook stored");
                    HttpResponse::Ok()
                        .json(serde_json::json!({ "status": "accepted", "event_id": id }))
                }
                Stored::Duplicate => {
                    count("duplicate");
                    HttpResponse::Ok().json(serde_json::json!({ "status": "duplicate" }))
                }
            })
        }
        Err(problem) => {
            let detail = format!("The body is not a GitHub event: {problem}.");
            inbox::store(
                &receiver.pool,
                &NewEvent {
                    source: "github",
                    delivery_id: &delivery_id,
                    path,
                    subject_type: None,
                    subject_id: None,
                    event_type: Some(event),
                    payload: &String::from_utf8_lossy(&body),
                    state: State::Malformed,
                    error: Some(&detail),
                    tenant: None,
                },
                now,
            )
            .await
            .map_err(not_stored)?;
            count("malformed");
            Err(unprocessable(detail))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_published_vector_passes() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"It's a Secret to Everybody");
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_signature(&key, good, b"Hello, World!"));
        assert!(!verify_signature(&key, good, b"Hello, World?"));
        for bad in [
            "",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
            "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=é57107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
        ] {
            assert!(!verify_signature(&key, bad, b"Hello, World!"), "{bad}");
        }
    }

    #[test]
    fn json_and_form_bodies() {
        let json = r#"{"action":"labeled"}"#;
        assert_eq!(
            payload_text("application/json", json.as_bytes()).unwrap().0,
            json
        );
        let form = format!(
            "payload={}",
            url::form_urlencoded::byte_serialize(json.as_bytes()).collect::<String>()
        );
        assert_eq!(
            payload_text("application/x-www-form-urlencoded", form.as_bytes())
                .unwrap()
                .0,
            json
        );
        assert!(payload_text("application/x-www-form-urlencoded", b"other=1").is_err());
        assert!(payload_text("application/json", b"[1]").is_err());
        assert!(payload_text("application/json", b"\xff").is_err());
    }

    /// Properties over arbitrary input: `X-Hub-Signature-256` never panics, and only the genuine
    /// signature (in either case of hex) verifies. `PROPTEST_CASES` runs more.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn genuine(key: &hmac::Key, body: &[u8]) -> String {
            let tag = hmac::sign(key, body);
            let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256={hex}")
        }

        proptest! {
            #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_headers_never_verify(
                header in prop_oneof!["\\PC{0,100}", "sha256=[0-9a-fA-F+-]{60,68}", "sha256=\\PC{64}"],
                body in prop::collection::vec(any::<u8>(), 0..256),
            ) {
                let key = hmac::Key::new(hmac::HMAC_SHA256, b"It's a Secret to Everybody");
                prop_assert!(!verify_signature(&key, &header, &body) || header.eq_ignore_ascii_case(&genuine(&key, &body)));
            }

            #[test]
            fn only_the_genuine_signature_verifies(
                body in prop::collection::vec(any::<u8>(), 0..256),
                at in 7usize..71,
                with in prop_oneof![Just('+'), Just('-'), Just(' '), Just('x'), any::<char>(), "[0-9a-f]".prop_map(|s| s.chars().next().unwrap())],
            ) {
                let key = hmac::Key::new(hmac::HMAC_SHA256, b"It's a Secret to Everybody");
                let header = genuine(&key, &body);
                prop_assert!(verify_signature(&key, &header, &body));
                prop_assert!(verify_signature(&key, &header.to_ascii_uppercase().replacen("SHA256", "sha256", 1), &body));
                let mut chars: Vec<char> = header.chars().collect();
                chars[at] = with;
                let changed: String = chars.into_iter().collect();
                if !changed.eq_ignore_ascii_case(&header) {
                    prop_assert!(!verify_signature(&key, &changed, &body), "{changed} verified");
                }
            }
        }
    }
}
