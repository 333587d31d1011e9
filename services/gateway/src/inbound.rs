//! Inbound webhooks, proxied to webhook-ingest's `sonora.ingest.v1` API for the caller's tenant:
//! the tenant's generic sources (register one and see its secret once, list, rotate the secret,
//! delete), the inbound events its routing rules handed to it with their attempts, and the
//! redrive of its dead letters.
//!
//! These routes need the `admin` scope (registering a source hands out a signing secret, and a
//! redrive sets actions off again) and the `webhooks` scope, which webhook-ingest checks on the
//! token of every call. webhook-ingest decides what a tenant sees: only the events routed to it,
//! only its own rules' attempts, and a redrive only of events routed to it alone. Another
//! tenant's source or event is 404, as one that never existed.
//!
//! The `WEBHOOK ALERT`s of the last hour on the tenant's own sources' paths, and the routing
//! rules that concern the tenant, are shown read-only: the alerts are raised by webhook-ingest's
//! failure monitoring, and the rules are its `ROUTING_RULES` setting, which its API offers no
//! call to change. The built-in receivers' paths (Replicate, GitHub) and the operator's own rules
//! belong to no tenant and are not shown to any key, `admin` included (see ARCHITECTURE.md).

use actix_web::{
    HttpResponse,
    http::{StatusCode, header},
    web,
};
use chrono::{DateTime, Utc};
use http_problem::Problem;
use internal_rpc::{PeerChannel, Principal, Scope, on_behalf};
use serde::{Deserialize, Serialize};
use sonora_proto::ingest::v1::{self as pb, webhook_ingest_client::WebhookIngestClient};
use utoipa::{IntoParams, ToSchema};

use crate::{
    auth::Caller,
    openapi::{self, tag},
    routes::resource,
    webhooks::{backend_problem, limit, optional_body, rfc3339, time},
};

type Client = WebhookIngestClient<PeerChannel>;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/inbound/sources", "GET, POST")
            .route(web::get().to(list_sources))
            .route(web::post().to(create_source)),
    )
    .service(
        resource("/v1/inbound/sources/{name}", "DELETE").route(web::delete().to(delete_source)),
    )
    .service(
        resource("/v1/inbound/sources/{name}/secret/rotate", "POST")
            .route(web::post().to(rotate_source_secret)),
    )
    .service(resource("/v1/inbound/events", "GET").route(web::get().to(list_events)))
    .service(resource("/v1/inbound/events/{id}", "GET").route(web::get().to(get_event)))
    .service(resource("/v1/inbound/dead-letters/redrive", "POST").route(web::post().to(redrive)))
    .service(
        resource("/v1/inbound/webhook-alerts", "GET").route(web::get().to(list_webhook_alerts)),
    )
    .service(resource("/v1/inbound/routing-rules", "GET").route(web::get().to(list_routing_rules)));
}

const BACKEND: &str = "inbound webhook";
const NO_SOURCE: &str = "No inbound source with this name exists for this tenant.";
const NO_EVENT: &str = "No inbound event with this id exists for this tenant.";

/// The caller, if its key has both scopes these routes need.
fn principal(caller: &Caller) -> Result<Principal, Problem> {
    caller.require(Scope::Admin)?;
    Ok(caller.require(Scope::Webhooks)?.principal())
}

fn source_problem(status: &tonic::Status) -> Problem {
    match status.code() {
        // webhook-ingest has no key to seal source secrets with: an installation's choice, not
        // a passing outage, so no Retry-After.
        tonic::Code::FailedPrecondition => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-configured",
            "Not Configured",
        )
        .detail("This installation cannot register inbound sources (webhook-ingest has no key to seal their secrets with); ask its operator."),
        _ => backend_problem(BACKEND, NO_SOURCE, status),
    }
}

fn event_problem(status: &tonic::Status) -> Problem {
    match status.code() {
        tonic::Code::FailedPrecondition => Problem::new(
            StatusCode::CONFLICT,
            "not-a-dead-letter",
            "Not a Dead Letter",
        )
        .detail(status.message()),
        _ => backend_problem(BACKEND, NO_EVENT, status),
    }
}

/// A source's name in a path: webhook-ingest's rule, so that a malformed one is 404 like a
/// missing one rather than a refusal naming a field the client did not send.
fn source_name(name: &str) -> Result<String, Problem> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(Problem::not_found().detail(NO_SOURCE))
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = InboundSource)]
struct SourceBody {
    id: String,
    name: String,
    /// Where senders post its webhooks, on webhook-ingest's public address.
    path: String,
    created_at: Option<DateTime<Utc>>,
    rotated_at: Option<DateTime<Utc>>,
}

impl From<pb::Source> for SourceBody {
    fn from(s: pb::Source) -> Self {
        Self {
            path: format!("/api/v1/webhooks/{}", s.name),
            id: s.id,
            name: s.name,
            created_at: time(s.created_at_unix_ms),
            rotated_at: time(s.rotated_at_unix_ms),
        }
    }
}

/// A source with its current secret: only in the answers of creating and rotating.
#[derive(Serialize, ToSchema)]
#[schema(as = InboundSourceWithSecret)]
struct SourceSecretBody {
    #[serde(flatten)]
    source: SourceBody,
    /// The `whsec_` secret senders sign with (Standard Webhooks). Shown only here.
    secret: String,
}

fn with_secret(secret: pb::SourceSecret) -> Result<SourceSecretBody, Problem> {
    let source = secret.source.ok_or_else(|| {
        Problem::bad_gateway("The inbound webhook service answered without the source.")
    })?;
    Ok(SourceSecretBody {
        source: SourceBody::from(source),
        secret: secret.secret,
    })
}

#[derive(Deserialize, ToSchema)]
#[schema(as = CreateInboundSource)]
#[serde(deny_unknown_fields)]
struct CreateSourceBody {
    /// 1 to 64 of a-z, 0-9, `-` and `_`; `github` and `replicate` are taken.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    name: String,
}

/// Registers an inbound webhook source.
///
/// 201 with the source, the path senders post to, and its `whsec_` secret, shown this once. A
/// name in use is 409.
#[utoipa::path(
    post,
    path = "/v1/inbound/sources",
    tag = tag::INBOUND_WEBHOOKS,
    request_body = CreateSourceBody,
    responses(
        (status = 201, description = "The source, with its secret.", body = SourceSecretBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
async fn create_source(
    caller: Caller,
    client: web::Data<Client>,
    body: http_problem::JsonObject<CreateSourceBody>,
) -> Result<HttpResponse, Problem> {
    let principal = principal(&caller)?;
    let created = client
        .get_ref()
        .clone()
        .create_source(on_behalf(
            pb::CreateSourceRequest {
                name: body.0.name,
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| source_problem(&s))?
        .into_inner();
    let body = with_secret(created)?;
    tracing::info!(source = %body.source.name, "inbound source registered");
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

#[derive(Serialize, ToSchema)]
#[schema(as = InboundSources)]
struct SourcesBody {
    data: Vec<SourceBody>,
}

/// The tenant's inbound webhook sources.
///
/// Without their secrets.
#[utoipa::path(
    get,
    path = "/v1/inbound/sources",
    tag = tag::INBOUND_WEBHOOKS,
    responses(
        (status = 200, description = "The sources.", body = SourcesBody),
        (status = 403, response = openapi::Forbidden),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_sources(
    caller: Caller,
    client: web::Data<Client>,
) -> Result<HttpResponse, Problem> {
    let principal = principal(&caller)?;
    let sources = client
        .get_ref()
        .clone()
        .list_sources(on_behalf(pb::ListSourcesRequest::default(), &principal))
        .await
        .map_err(|s| source_problem(&s))?
        .into_inner()
        .sources;
    Ok(HttpResponse::Ok().json(SourcesBody {
        data: sources.into_iter().map(SourceBody::from).collect(),
    }))
}

/// Deletes an inbound webhook source.
///
/// Its webhooks are refused from now on.
#[utoipa::path(
    delete,
    path = "/v1/inbound/sources/{name}",
    tag = tag::INBOUND_WEBHOOKS,
    params(("name" = String, Path, description = "The source's name.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(source = %name))]
async fn delete_source(
    caller: Caller,
    client: web::Data<Client>,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let principal = principal(&caller)?;
    client
        .get_ref()
        .clone()
        .delete_source(on_behalf(
            pb::DeleteSourceRequest {
                name: source_name(&name)?,
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| source_problem(&s))?;
    tracing::info!("inbound source deleted");
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, Default, ToSchema)]
#[schema(as = RotateInboundSourceSecret)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the old secret is still accepted; default 24 h, at most 7 days.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    old_secret_ttl_seconds: Option<u32>,
}

/// Rotates an inbound webhook source's secret.
///
/// The new secret, shown this once; the old one is still accepted for
/// `old_secret_ttl_seconds`. The body may be left out.
#[utoipa::path(
    post,
    path = "/v1/inbound/sources/{name}/secret/rotate",
    tag = tag::INBOUND_WEBHOOKS,
    params(("name" = String, Path, description = "The source's name.")),
    request_body(content = Option<RotateBody>),
    responses(
        (status = 200, description = "The source, with its new secret.", body = SourceSecretBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(source = %name))]
async fn rotate_source_secret(
    caller: Caller,
    client: web::Data<Client>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let principal = principal(&caller)?;
    let name = source_name(&name)?;
    let body: RotateBody = optional_body(&body)?;
    let max = crate::webhooks::MAX_OLD_SECRET_TTL_SECONDS;
    let ttl = match body.old_secret_ttl_seconds {
        None => 0,
        Some(seconds) if (1..=max).contains(&seconds) => seconds,
        Some(_) => {
            return Err(Problem::invalid_request(format!(
                "old_secret_ttl_seconds: must be between 1 and {max} (7 days)"
            )));
        }
    };
    let rotated = client
        .get_ref()
        .clone()
        .rotate_source_secret(on_behalf(
            pb::RotateSourceSecretRequest {
                name,
                old_secret_ttl_seconds: ttl,
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| source_problem(&s))?
        .into_inner();
    tracing::info!("inbound source secret rotated");
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(with_secret(rotated)?))
}

fn state_name(state: pb::InboxState) -> &'static str {
    use pb::InboxState as S;
    match state {
        S::Received => "received",
        S::Dispatched => "dispatched",
        S::Done => "done",
        S::Failed => "failed",
        S::DeadLetter => "dead_letter",
        S::Malformed => "malformed",
        S::Unspecified => "unknown",
    }
}

const STATES: &str = "received, dispatched, done, failed, dead_letter, malformed";

fn state_of(name: &str) -> Result<pb::InboxState, Problem> {
    use pb::InboxState as S;
    Ok(match name {
        "received" => S::Received,
        "dispatched" => S::Dispatched,
        "done" => S::Done,
        "failed" => S::Failed,
        "dead_letter" => S::DeadLetter,
        "malformed" => S::Malformed,
        _ => {
            return Err(Problem::invalid_request(format!(
                "state: must be one of {STATES}"
            )));
        }
    })
}

#[derive(Serialize, ToSchema)]
#[schema(as = InboundEvent)]
struct EventBody {
    id: String,
    /// `replicate`, `github`, or a registered source's name.
    source: String,
    /// The sender's id of the delivery.
    delivery_id: String,
    event_type: String,
    /// `received`, `dispatched`, `done`, `failed`, `dead_letter` or `malformed`.
    state: &'static str,
    attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    received_at: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
}

impl From<pb::InboxEvent> for EventBody {
    fn from(e: pb::InboxEvent) -> Self {
        Self {
            state: state_name(e.state()),
            id: e.id,
            source: e.source,
            delivery_id: e.delivery_id,
            event_type: e.event_type,
            attempts: e.attempts,
            last_error: (!e.last_error.is_empty()).then_some(e.last_error),
            received_at: time(e.received_at_unix_ms),
            next_attempt_at: time(e.next_attempt_at_unix_ms),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = InboundAttempt)]
struct AttemptBody {
    attempt: i32,
    /// `publish:<rule>`, `agent_run:<rule>`.
    action: String,
    /// `succeeded`, `failed`, `rejected` or `throttled`.
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// What the action produced (an agent run's id and URL, an outbox event's id).
    result: Option<serde_json::Value>,
    duration_ms: u32,
    at: Option<DateTime<Utc>>,
}

impl From<pb::Attempt> for AttemptBody {
    fn from(a: pb::Attempt) -> Self {
        Self {
            attempt: a.attempt,
            action: a.action,
            outcome: a.outcome,
            error: (!a.error.is_empty()).then_some(a.error),
            result: serde_json::from_str(&a.result_json).ok(),
            duration_ms: a.duration_ms,
            at: time(a.at_unix_ms),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = InboundEventDetail)]
struct EventDetailBody {
    #[serde(flatten)]
    event: EventBody,
    /// The body as received: JSON when it is JSON, else the text.
    payload: serde_json::Value,
    attempts: Vec<AttemptBody>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = InboundEvents)]
struct EventsBody {
    data: Vec<EventBody>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// `replicate`, `github`, or a registered source's name.
    #[serde(default)]
    source: Option<String>,
    /// `received`, `dispatched`, `done`, `failed`, `dead_letter` or `malformed`.
    #[serde(default)]
    state: Option<String>,
    /// RFC 3339: events received at or after.
    #[serde(default)]
    #[param(format = DateTime)]
    after: Option<String>,
    /// RFC 3339: events received before.
    #[serde(default)]
    #[param(format = DateTime)]
    before: Option<String>,
    /// 1 to 100.
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The last page's `next_cursor`.
    #[serde(default)]
    cursor: Option<String>,
}

fn millis(t: Option<DateTime<Utc>>) -> i64 {
    t.map_or(0, |t| t.timestamp_millis())
}

/// The inbound events routed to the tenant, newest first.
#[utoipa::path(
    get,
    path = "/v1/inbound/events",
    tag = tag::INBOUND_WEBHOOKS,
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of events.", body = EventsBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_events(
    caller: Caller,
    client: web::Data<Client>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, Problem> {
    let principal = principal(&caller)?;
    let query = query.into_inner();
    let state = match query.state.as_deref() {
        None => pb::InboxState::Unspecified,
        Some(name) => state_of(name)?,
    };
    let page = client
        .get_ref()
        .clone()
        .list_inbox_events(on_behalf(
            pb::ListInboxEventsRequest {
                source: query.source.unwrap_or_default(),
                state: state.into(),
                after_unix_ms: millis(rfc3339("after", query.after.as_deref())?),
                before_unix_ms: millis(rfc3339("before", query.before.as_deref())?),
                page_size: limit(query.limit, 100)?,
                page_token: query.cursor.unwrap_or_default(),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| event_problem(&s))?
        .into_inner();
    Ok(HttpResponse::Ok().json(EventsBody {
        data: page.events.into_iter().map(EventBody::from).collect(),
        next_cursor: (!page.next_page_token.is_empty()).then_some(page.next_page_token),
    }))
}

/// One inbound event.
///
/// With its payload (JSON when it is JSON) and the attempts of the tenant's own rules.
#[utoipa::path(
    get,
    path = "/v1/inbound/events/{id}",
    tag = tag::INBOUND_WEBHOOKS,
    params(("id" = String, Path, description = "The event's id, `evt_…`.")),
    responses(
        (status = 200, description = "The event.", body = EventDetailBody),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(event = %id))]
async fn get_event(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let principal = principal(&caller)?;
    let id = id.into_inner();
    if ids::EventId::parse(&id).is_err() {
        return Err(Problem::not_found().detail(NO_EVENT));
    }
    let detail = client
        .get_ref()
        .clone()
        .get_inbox_event(on_behalf(
            pb::GetInboxEventRequest {
                id,
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| event_problem(&s))?
        .into_inner();
    let event = detail.event.ok_or_else(|| {
        Problem::bad_gateway("The inbound webhook service answered without the event.")
    })?;
    let payload =
        serde_json::from_str(&detail.payload).unwrap_or(serde_json::Value::String(detail.payload));
    Ok(HttpResponse::Ok().json(EventDetailBody {
        event: EventBody::from(event),
        payload,
        attempts: detail.attempts.into_iter().map(AttemptBody::from).collect(),
    }))
}

#[derive(Deserialize, Default, ToSchema)]
#[schema(as = RedriveInboundDeadLetters)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    /// One event; when absent, every dead letter matching the filters.
    #[serde(default)]
    id: Option<String>,
    /// Only this source's dead letters.
    #[serde(default)]
    source: Option<String>,
    /// Only events received at or after this time (RFC 3339).
    #[serde(default)]
    #[schema(format = DateTime)]
    after: Option<String>,
    /// Only events received before this time (RFC 3339).
    #[serde(default)]
    #[schema(format = DateTime)]
    before: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = RedrivenEvents)]
struct RedrivenBody {
    /// How many dead letters went back to the dispatcher.
    redriven: u32,
}

/// Sends inbound dead letters back to the dispatcher.
///
/// 202: one dead letter (`id`), or every one matching `source`, `after` and `before`, goes back
/// to the dispatcher with a full run of the retry schedule; actions that succeeded before are
/// not run again. An event also routed to another tenant is for an operator to redrive (403);
/// one that is not a dead letter is 409. The body may be left out.
#[utoipa::path(
    post,
    path = "/v1/inbound/dead-letters/redrive",
    tag = tag::INBOUND_WEBHOOKS,
    operation_id = "redrive_inbound_dead_letters",
    request_body(content = Option<RedriveBody>),
    responses(
        (status = 202, description = "How many went back to the dispatcher.", body = RedrivenBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
async fn redrive(
    caller: Caller,
    client: web::Data<Client>,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let principal = principal(&caller)?;
    let body: RedriveBody = optional_body(&body)?;
    if body.id.is_some() && (body.source.is_some() || body.after.is_some() || body.before.is_some())
    {
        return Err(Problem::invalid_request(
            "id: names one event; leave source, after and before out with it",
        ));
    }
    if let Some(id) = &body.id
        && ids::EventId::parse(id).is_err()
    {
        return Err(Problem::invalid_request(
            "id: must be an inbound event's id, evt_ and 32 hexadecimal digits",
        ));
    }
    let redriven = client
        .get_ref()
        .clone()
        .redrive_dead_letters(on_behalf(
            pb::RedriveDeadLettersRequest {
                id: body.id.unwrap_or_default(),
                source: body.source.unwrap_or_default(),
                after_unix_ms: millis(rfc3339("after", body.after.as_deref())?),
                before_unix_ms: millis(rfc3339("before", body.before.as_deref())?),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| event_problem(&s))?
        .into_inner()
        .redriven;
    tracing::info!(redriven, "inbound dead letters redriven");
    Ok(HttpResponse::Accepted().json(RedrivenBody { redriven }))
}

impl EventsQuery {
    /// The newest `limit` events (the console's inbox).
    pub(crate) fn recent(limit: u32) -> Self {
        Self {
            source: None,
            state: None,
            after: None,
            before: None,
            limit: Some(limit),
            cursor: None,
        }
    }

    /// The newest 100 events in `state`.
    pub(crate) fn state(state: &str) -> Self {
        Self {
            state: Some(state.to_owned()),
            ..Self::recent(100)
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = WebhookAlert)]
struct AlertBody {
    /// The path on webhook-ingest that failed, such as `/api/v1/webhooks/orders`.
    path: String,
    /// The tenant's source the path belongs to.
    source: String,
    /// When the path last reached the failure threshold within the hour.
    raised_at: Option<DateTime<Utc>>,
    /// Its failures within the last hour, now.
    failures_last_hour: u64,
}

#[derive(Serialize, ToSchema)]
#[schema(as = WebhookAlerts)]
struct AlertsBody {
    /// `enabled`, or `disabled` when the installation counts no failures (and so raises no
    /// alert).
    monitoring: &'static str,
    /// The failures within an hour that raise an alert.
    failure_threshold: u32,
    /// The alerts of the last hour, newest first, at most 100.
    data: Vec<AlertBody>,
}

/// The `WEBHOOK ALERT`s of the last hour on the tenant's sources.
///
/// A source's path raises one when it fails (a refused signature, a malformed body, an action
/// that did not succeed) `failure_threshold` times within an hour; each is listed for the hour
/// after it was last raised, with the path's failures within the hour now. Alerts on the
/// built-in Replicate and GitHub receivers are for the installation's operator, not listed here.
#[utoipa::path(
    get,
    path = "/v1/inbound/webhook-alerts",
    tag = tag::INBOUND_WEBHOOKS,
    responses(
        (status = 200, description = "The alerts.", body = AlertsBody),
        (status = 403, response = openapi::Forbidden),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_webhook_alerts(
    caller: Caller,
    client: web::Data<Client>,
) -> Result<HttpResponse, Problem> {
    let principal = principal(&caller)?;
    let listed = client
        .get_ref()
        .clone()
        .list_webhook_alerts(on_behalf(
            pb::ListWebhookAlertsRequest::default(),
            &principal,
        ))
        .await
        .map_err(|s| backend_problem(BACKEND, NO_SOURCE, &s))?
        .into_inner();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(AlertsBody {
            monitoring: if listed.monitoring_enabled {
                "enabled"
            } else {
                "disabled"
            },
            failure_threshold: listed.failure_threshold,
            data: listed
                .alerts
                .into_iter()
                .map(|a| AlertBody {
                    path: a.path,
                    source: a.source,
                    raised_at: time(a.raised_at_unix_ms),
                    failures_last_hour: a.failures_last_hour,
                })
                .collect(),
        }))
}

#[derive(Serialize, ToSchema)]
#[schema(as = RoutingRule)]
struct RuleBody {
    /// The rule's name, as in an attempt's `action` (`publish:<name>`).
    name: String,
    /// `github`, `replicate`, or a source's name.
    source: String,
    /// The event type (before its first `.`) the rule matches; absent for every one.
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    /// The payload's `action` (after the first `.`) the rule matches; absent for every one.
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    /// A glob (`*`, `?`) over the repository's full name; absent for every repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    repository: Option<String>,
    /// A label the issue or pull request must have; absent for any.
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    /// `publish` (to this tenant's partner endpoints) and/or `agent_run`.
    actions: Vec<String>,
    /// The agent run's prompt template.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = RoutingRules)]
struct RulesBody {
    /// In the order they are set, at most 200.
    data: Vec<RuleBody>,
}

fn given(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// The routing rules that concern the tenant.
///
/// Read-only: rules are the installation's `ROUTING_RULES` setting. Listed are the rules that
/// hand events to the tenant's partners (`publish`), on any source, and the rules on the
/// tenant's own sources that hand their events to no other tenant.
#[utoipa::path(
    get,
    path = "/v1/inbound/routing-rules",
    tag = tag::INBOUND_WEBHOOKS,
    responses(
        (status = 200, description = "The rules.", body = RulesBody),
        (status = 403, response = openapi::Forbidden),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_routing_rules(
    caller: Caller,
    client: web::Data<Client>,
) -> Result<HttpResponse, Problem> {
    let principal = principal(&caller)?;
    let rules = client
        .get_ref()
        .clone()
        .list_routing_rules(on_behalf(
            pb::ListRoutingRulesRequest::default(),
            &principal,
        ))
        .await
        .map_err(|s| backend_problem(BACKEND, NO_SOURCE, &s))?
        .into_inner()
        .rules;
    Ok(HttpResponse::Ok().json(RulesBody {
        data: rules
            .into_iter()
            .map(|r| RuleBody {
                name: r.name,
                source: r.source,
                event: given(r.event),
                action: given(r.action),
                repository: given(r.repository),
                label: given(r.label),
                actions: r.actions,
                prompt: given(r.prompt),
            })
            .collect(),
    }))
}
