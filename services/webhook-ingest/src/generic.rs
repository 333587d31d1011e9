//! `POST /api/v1/webhooks/{source}`: any registered source signing Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`) with its `whsec_` secret, verified
//! with a 5-minute tolerance, stored in the inbox before the 200, once per `webhook-id`. The
//! event's type is the payload's `type` (the Standard Webhooks convention), `webhook` without
//! one; rules route it as `<source>.<type>`.

use actix_web::{HttpRequest, HttpResponse, web};
use http_problem::Problem;
use prometheus::IntCounterVec;
use webhook_signature::{DEFAULT_TOLERANCE_SECS, SignedHeaders, verify};

use crate::{
    inbox::{self, NewEvent, State, Stored},
    monitor::Monitor,
    ratelimit::RateLimiter,
    request::{BodyLimits, header, not_stored, read_body, unauthorized, unprocessable},
    routing::{self, EventFacts},
    sources::{self, Sources},
};

/// The route, under which the monitor counts failures on too many distinct paths.
pub(crate) const ROUTE: &str = "/api/v1/webhooks/{source}";

/// What the generic receiver needs.
#[derive(Clone)]
pub struct GenericReceiver {
    pub pool: database::Pool,
    /// The registered sources; none without `WEBHOOK_SECRET_ENCRYPTION_KEY`.
    pub sources: Option<Sources>,
    pub body: BodyLimits,
    pub received: IntCounterVec,
    pub processing: prometheus::HistogramVec,
    pub monitor: Monitor,
    pub limiter: RateLimiter,
    /// This replica's dispatcher, woken when an event is stored.
    pub wake: crate::dispatch::Waker,
    /// The routing rules: an event none of them matches is stored as done.
    pub rules: std::sync::Arc<Vec<crate::routing::Rule>>,
}

/// An event type as the payload names it, if it can name one.
fn event_type(payload: &serde_json::Value) -> String {
    payload["type"]
        .as_str()
        .filter(|t| {
            (1..=100).contains(&t.len())
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
        .unwrap_or("webhook")
        .to_owned()
}

/// The handler; every refusal or failure counts for the path's monitoring.
#[tracing::instrument(skip_all, fields(source = %path))]
pub async fn receive(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    receiver: web::Data<GenericReceiver>,
) -> Result<HttpResponse, Problem> {
    let _timer = receiver
        .processing
        .with_label_values(&["generic"])
        .start_timer();
    let result = handle(&req, &path, payload, &receiver).await;
    if result.is_err() {
        receiver.monitor.failure(req.path(), ROUTE);
    }
    result
}

async fn handle(
    req: &HttpRequest,
    name: &str,
    payload: web::Payload,
    receiver: &GenericReceiver,
) -> Result<HttpResponse, Problem> {
    // Sources are counted together: their names are chosen by tenants.
    let count = |outcome: &str| {
        receiver
            .received
            .with_label_values(&["generic", outcome])
            .inc();
    };
    receiver
        .limiter
        .check(req)
        .await
        .inspect_err(|_| count("rate_limited"))?;
    let no_source = || Problem::not_found().detail("No such source.");
    let Some(sources) = receiver
        .sources
        .as_ref()
        .filter(|_| sources::valid_name(name))
    else {
        count("refused");
        return Err(no_source());
    };
    let now = chrono::Utc::now();
    let verifying = sources.verifying(name, now).await.map_err(|error| {
        tracing::error!(%error, "the source cannot be read");
        Problem::unavailable("The event could not be stored; retry later.").retry_after(5)
    })?;
    let Some(verifying) = verifying else {
        count("refused");
        return Err(no_source());
    };
    let body = read_body(req, payload, receiver.body)
        .await
        .inspect_err(|_| count("refused"))?;
    let headers = SignedHeaders {
        id: header(req, webhook_signature::HEADER_ID),
        timestamp: header(req, webhook_signature::HEADER_TIMESTAMP),
        signature: header(req, webhook_signature::HEADER_SIGNATURE),
    };
    if let Err(error) = verify(
        &verifying.keys,
        headers,
        &body,
        now.timestamp(),
        DEFAULT_TOLERANCE_SECS,
    ) {
        tracing::warn!(%error, "webhook refused");
        count("unauthorized");
        return Err(unauthorized());
    }
    let text = String::from_utf8_lossy(&body);
    let parsed = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .filter(serde_json::Value::is_object);
    let event_type = parsed.as_ref().map(event_type);
    let state = match &parsed {
        None => State::Malformed,
        Some(payload) => {
            let facts = EventFacts {
                source: name,
                event_type: event_type.as_deref().unwrap_or_default(),
                payload,
            };
            // An event no rule matches has nothing to run: recorded as done.
            if routing::has_work(&receiver.rules, &facts) {
                State::Received
            } else {
                State::Done
            }
        }
    };
    let stored = inbox::store(
        &receiver.pool,
        &NewEvent {
            source: name,
            delivery_id: headers.id,
            path: req.path(),
            subject_type: None,
            subject_id: None,
            event_type: event_type.as_deref(),
            payload: &text,
            state,
            error: parsed.is_none().then_some("The body is not a JSON object."),
            tenant: verifying.tenant.as_deref(),
        },
        now,
    )
    .await
    .map_err(not_stored)?;
    if parsed.is_none() {
        count("malformed");
        return Err(unprocessable("The body is not a JSON object."));
    }
    Ok(match stored {
        Stored::New(id) => {
            if state == State::Received {
                receiver.wake.wake();
            }
            count("accepted");
            tracing::info!(event_id = %id, "webhook stored");
            HttpResponse::Ok().json(serde_json::json!({ "status": "accepted", "event_id": id }))
        }
        Stored::Duplicate => {
            count("duplicate");
            HttpResponse::Ok().json(serde_json::json!({ "status": "duplicate" }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payloads_type_names_the_event() {
        assert_eq!(
            event_type(&serde_json::json!({"type": "invoice.paid"})),
            "invoice.paid"
        );
        for other in [
            serde_json::json!({}),
            serde_json::json!({"type": 3}),
            serde_json::json!({"type": "Invoice Paid"}),
        ] {
            assert_eq!(event_type(&other), "webhook", "{other}");
        }
    }
}
