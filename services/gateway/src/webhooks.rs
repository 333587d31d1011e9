//! Partner webhooks, proxied to delivery-worker for the caller's tenant (`webhooks` scope): the
//! tenant's endpoints (create, list, read, change, delete), their signing secrets (read,
//! rotate), their deliveries and attempts, a retry of one delivery, a redrive of an endpoint's
//! dead letters, and a test event sent through the real queue.
//!
//! The bodies are checked here, at the edge, so a client hears which field broke which rule
//! before anything reaches the backend; delivery-worker checks them again (and resolves the URL
//! against its address policy), and its refusals come back as 400 with its words, which name
//! the field and the rule. Another tenant's ids are 404 like ids that never existed: the
//! backends take the tenant from the internal token, never from the request.

use std::collections::HashMap;

use actix_web::{
    HttpResponse,
    http::{StatusCode, header},
    web,
};
use chrono::{DateTime, Utc};
use http_problem::Problem;
use internal_rpc::{PeerChannel, Principal, Scope, on_behalf};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sonora_proto::{
    delivery::v1::{self as pb, delivery_service_client::DeliveryServiceClient},
    ingest::v1::{ListSourcesRequest, webhook_ingest_client::WebhookIngestClient},
};

use utoipa::{IntoParams, ToSchema};

use crate::{
    auth::Caller,
    openapi::{self, tag},
    routes::resource,
};

/// delivery-worker's API.
pub type Client = DeliveryServiceClient<PeerChannel>;
/// webhook-ingest's API, asked for the tenant's inbound sources when an endpoint subscribes to
/// the events they forward.
pub type IngestClient = WebhookIngestClient<PeerChannel>;

/// What the endpoint rules depend on outside the request.
#[derive(Debug, Clone, Copy)]
pub struct EndpointRules {
    /// In production an endpoint's URL must be https.
    pub production: bool,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/webhook-endpoints", "GET, POST")
            .route(web::get().to(list_endpoints))
            .route(web::post().to(create_endpoint)),
    )
    .service(
        resource("/v1/webhook-endpoints/{id}", "GET, PATCH, DELETE")
            .route(web::get().to(get_endpoint))
            .route(web::patch().to(update_endpoint))
            .route(web::delete().to(delete_endpoint)),
    )
    .service(resource("/v1/webhook-endpoints/{id}/secret", "GET").route(web::get().to(get_secret)))
    .service(
        resource("/v1/webhook-endpoints/{id}/secret/rotate", "POST")
            .route(web::post().to(rotate_secret)),
    )
    .service(
        resource("/v1/webhook-endpoints/{id}/deliveries", "GET")
            .route(web::get().to(list_deliveries)),
    )
    .service(
        resource("/v1/webhook-endpoints/{id}/attempts", "GET").route(web::get().to(list_attempts)),
    )
    .service(resource("/v1/webhook-endpoints/{id}/redrive", "POST").route(web::post().to(redrive)))
    .service(resource("/v1/webhook-endpoints/{id}/test", "POST").route(web::post().to(send_test)))
    .service(resource("/v1/deliveries/{id}/retry", "POST").route(web::post().to(retry_delivery)));
}

/// The most entries `event_types` and `channels` may have (delivery-worker's bound).
const MAX_LIST_ENTRIES: usize = 64;
/// The longest `url` (delivery-worker's bound).
const MAX_URL_BYTES: usize = 2048;
/// The longest `description` (delivery-worker's bound).
const MAX_DESCRIPTION_BYTES: usize = 1024;
/// The highest `rate_limit_per_second` (delivery-worker's bound).
const MAX_RATE_LIMIT: u32 = 10_000;
/// The longest an old secret may keep signing after a rotation: 7 days.
pub const MAX_OLD_SECRET_TTL_SECONDS: u32 = 7 * 24 * 3600;
/// Inbound sources whose events routing rules forward to partners without being registered.
const BUILT_IN_SOURCES: &[&str] = &["github"];

/// Maps a backend's refusal to the client's problem, once for every route of the webhook APIs.
/// `missing` says what was not found ("No webhook endpoint with this id exists for this
/// tenant."); the backend's own words reach the client only for refusals of the request itself,
/// which name the field and the rule.
pub(crate) fn backend_problem(backend: &str, missing: &str, status: &tonic::Status) -> Problem {
    match status.code() {
        tonic::Code::InvalidArgument if status.message().starts_with("page_token") => {
            Problem::invalid_request("cursor: is not one this API gave out")
        }
        tonic::Code::InvalidArgument => Problem::invalid_request(status.message()),
        tonic::Code::NotFound => Problem::not_found().detail(missing),
        tonic::Code::PermissionDenied => {
            Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(status.message())
        }
        tonic::Code::AlreadyExists => {
            Problem::new(StatusCode::CONFLICT, "conflict", "Conflict").detail(status.message())
        }
        _ if internal_rpc::client::unreachable(status) => {
            tracing::warn!(backend, code = ?status.code(), message = status.message(), "backend unavailable");
            Problem::unavailable(format!(
                "The {backend} service is not available right now; retry later."
            ))
            .retry_after(5)
        }
        _ => {
            tracing::warn!(backend, code = ?status.code(), message = status.message(), "backend call failed");
            Problem::bad_gateway(format!(
                "The {backend} service failed to answer; it has been logged."
            ))
        }
    }
}

const NO_ENDPOINT: &str = "No webhook endpoint with this id exists for this tenant.";
const NO_DELIVERY: &str = "No delivery with this id exists for this tenant.";

fn problem(status: &tonic::Status) -> Problem {
    match status.code() {
        tonic::Code::ResourceExhausted => Problem::new(
            StatusCode::CONFLICT,
            "endpoint-limit-reached",
            "Endpoint Limit Reached",
        )
        .detail("This tenant has as many webhook endpoints as it may (1000); delete one first."),
        _ => backend_problem("delivery", NO_ENDPOINT, status),
    }
}

/// A JSON object body that may be left out entirely (an empty body is the type's default);
/// unknown fields and wrong types are refused as `JsonObject` refuses them.
pub(crate) fn optional_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| Problem::invalid_request(http_problem::serde_message(&e)))?;
    serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| Problem::invalid_request(http_problem::serde_message(&e)))
}

/// A page size given as `limit`, within `max`.
pub(crate) fn limit(limit: Option<u32>, max: u32) -> Result<u32, Problem> {
    match limit {
        None => Ok(0),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(Problem::invalid_request(format!(
            "limit: must be between 1 and {max}"
        ))),
    }
}

/// A path id of its kind; a malformed one names no resource, so it is 404 like a missing one.
fn path_id<T: std::str::FromStr>(text: &str, missing: &str) -> Result<String, Problem> {
    text.parse::<T>()
        .map(|_| text.to_owned())
        .map_err(|_| Problem::not_found().detail(missing))
}

fn endpoint_id(text: &str) -> Result<String, Problem> {
    path_id::<ids::EndpointId>(text, NO_ENDPOINT)
}

/// An optional RFC 3339 time given as `field`; the refusal names the field and the form.
pub(crate) fn rfc3339(field: &str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, Problem> {
    text.map(|text| {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                Problem::invalid_request(format!(
                    "{field}: must be an RFC 3339 time, such as 2026-12-02T10:00:00Z"
                ))
            })
    })
    .transpose()
}

pub(crate) fn time(ms: i64) -> Option<DateTime<Utc>> {
    (ms != 0)
        .then(|| DateTime::from_timestamp_millis(ms))
        .flatten()
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

// --- Checks of the bodies ---------------------------------------------------------------------

/// `url`: http(s), and https in production. The message names the rule, never the URL (its
/// path or query may carry a token).
fn check_url(url: &str, rules: EndpointRules) -> Result<(), Problem> {
    if url.len() > MAX_URL_BYTES {
        return Err(Problem::invalid_request(format!(
            "url: must be at most {MAX_URL_BYTES} bytes"
        )));
    }
    let parsed = url::Url::parse(url)
        .map_err(|_| Problem::invalid_request("url: must be an absolute http or https URL"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if !rules.production => {}
        "http" => {
            return Err(Problem::invalid_request(
                "url: must use https in production",
            ));
        }
        _ => {
            return Err(Problem::invalid_request(
                "url: must be an absolute http or https URL",
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Problem::invalid_request("url: must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Problem::invalid_request(
            "url: must not carry a user name or password",
        ));
    }
    Ok(())
}

fn check_description(description: &str) -> Result<(), Problem> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(Problem::invalid_request(format!(
            "description: must be at most {MAX_DESCRIPTION_BYTES} bytes"
        )));
    }
    if description.chars().any(char::is_control) {
        return Err(Problem::invalid_request(
            "description: must not contain control characters",
        ));
    }
    Ok(())
}

fn check_rate_limit(rate: u32) -> Result<(), Problem> {
    if rate > MAX_RATE_LIMIT {
        return Err(Problem::invalid_request(format!(
            "rate_limit_per_second: must be at most {MAX_RATE_LIMIT} (0 for no limit)"
        )));
    }
    Ok(())
}

fn check_channels(channels: &[String]) -> Result<(), Problem> {
    if channels.len() > MAX_LIST_ENTRIES {
        return Err(Problem::invalid_request(format!(
            "channels: must have at most {MAX_LIST_ENTRIES} entries"
        )));
    }
    for (i, channel) in channels.iter().enumerate() {
        if !pb::is_channel(channel) {
            return Err(Problem::invalid_request(format!(
                "channels[{i}]: must be 1 to 128 letters, digits, '-', '_', '.' and ':'"
            )));
        }
    }
    Ok(())
}

fn catalogued(event_type: &str) -> bool {
    sonora_proto::events::CATALOGUE
        .iter()
        .any(|(known, _)| *known == event_type)
}

/// The source an inbound event type is forwarded from (`github` of `github.issues.labeled`),
/// when the type is not one of Sonora's own.
fn forwarded_source(event_type: &str) -> Option<&str> {
    event_type
        .split_once('.')
        .map(|(source, _)| source)
        .filter(|_| pb::is_event_type(event_type))
}

/// `event_types` as the client wrote it, checked and as delivery-worker takes it (empty: every
/// type). A type must be `*` alone, one of the catalogue (`GET /v1/event-types`), or a type
/// routing rules forward from an inbound source: `github.…`, or `<name>.…` of one of the
/// tenant's own sources (asked of webhook-ingest only when such a type is given).
async fn check_event_types(
    types: Vec<String>,
    ingest: &IngestClient,
    principal: &Principal,
) -> Result<Vec<String>, Problem> {
    if types.is_empty() {
        return Err(Problem::invalid_request(
            "event_types: must name at least one type, or be [\"*\"] for every type",
        ));
    }
    if types.iter().any(|t| t == "*") {
        return if types.len() == 1 {
            Ok(Vec::new())
        } else {
            Err(Problem::invalid_request(
                "event_types: \"*\" means every type and must be the only entry",
            ))
        };
    }
    if types.len() > MAX_LIST_ENTRIES {
        return Err(Problem::invalid_request(format!(
            "event_types: must have at most {MAX_LIST_ENTRIES} entries"
        )));
    }
    let mut sources: Option<Vec<String>> = None;
    for (i, event_type) in types.iter().enumerate() {
        if catalogued(event_type) {
            continue;
        }
        let unknown = || {
            Problem::invalid_request(format!(
                "event_types[{i}]: {event_type:?} is not a known event type (see GET /v1/event-types), \
                 a type forwarded from an inbound source (github.… or <source>.…), or \"*\""
            ))
        };
        let source = forwarded_source(event_type).ok_or_else(unknown)?;
        if BUILT_IN_SOURCES.contains(&source) {
            continue;
        }
        if sources.is_none() {
            let listed = ingest
                .clone()
                .list_sources(on_behalf(ListSourcesRequest::default(), principal))
                .await;
            sources = Some(match listed {
                Ok(response) => response
                    .into_inner()
                    .sources
                    .into_iter()
                    .map(|s| s.name)
                    .collect(),
                // Without sealed secrets webhook-ingest has no sources at all.
                Err(status) if status.code() == tonic::Code::FailedPrecondition => Vec::new(),
                Err(status) => {
                    return Err(backend_problem(
                        "inbound webhook",
                        "No such inbound source.",
                        &status,
                    ));
                }
            });
        }
        if !sources.iter().flatten().any(|name| name == source) {
            return Err(unknown());
        }
    }
    Ok(types)
}

/// `signing`: how deliveries are signed.
fn signing(name: Option<&str>) -> Result<pb::SigningScheme, Problem> {
    match name {
        None | Some("hmac-sha256") => Ok(pb::SigningScheme::HmacSha256),
        Some("ed25519") => Ok(pb::SigningScheme::Ed25519),
        Some(_) => Err(Problem::invalid_request(
            "signing: must be hmac-sha256 or ed25519",
        )),
    }
}

// --- Bodies out -------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
#[schema(as = Endpoint)]
struct EndpointBody {
    /// `ep_…`.
    id: String,
    url: String,
    description: String,
    /// `["*"]`: every type.
    event_types: Vec<String>,
    /// Empty: every channel.
    channels: Vec<String>,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    /// Null: no limit.
    rate_limit_per_second: Option<u32>,
    metadata: HashMap<String, String>,
    /// `hmac-sha256` or `ed25519`.
    signing: &'static str,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
}

impl From<pb::Endpoint> for EndpointBody {
    fn from(e: pb::Endpoint) -> Self {
        let signing = match e.signing() {
            pb::SigningScheme::Ed25519 => "ed25519",
            pb::SigningScheme::Unspecified | pb::SigningScheme::HmacSha256 => "hmac-sha256",
        };
        Self {
            event_types: if e.event_types.is_empty() {
                vec!["*".to_owned()]
            } else {
                e.event_types
            },
            id: e.id,
            url: e.url,
            description: e.description,
            channels: e.channels,
            enabled: e.enabled,
            disabled_reason: non_empty(e.disabled_reason),
            rate_limit_per_second: (e.rate_limit_per_second != 0)
                .then_some(e.rate_limit_per_second),
            metadata: e.metadata,
            signing,
            created_at: time(e.created_at_unix_ms),
            updated_at: time(e.updated_at_unix_ms),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = Delivery)]
struct DeliveryBody {
    id: String,
    message_id: String,
    endpoint_id: String,
    /// `pending`, `delivered`, `failed` or `dead_letter`.
    status: &'static str,
    attempt_count: u32,
    max_attempts: u32,
    next_retry_at: Option<DateTime<Utc>>,
    last_response_status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    created_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
}

pub(crate) fn status_name(status: pb::DeliveryStatus) -> &'static str {
    match status {
        pb::DeliveryStatus::Pending => "pending",
        pb::DeliveryStatus::Delivered => "delivered",
        pb::DeliveryStatus::Failed => "failed",
        pb::DeliveryStatus::DeadLetter => "dead_letter",
        pb::DeliveryStatus::Unspecified => "unknown",
    }
}

impl From<pb::Delivery> for DeliveryBody {
    fn from(d: pb::Delivery) -> Self {
        let delivered = d.status() == pb::DeliveryStatus::Delivered;
        Self {
            status: status_name(d.status()),
            id: d.id,
            message_id: d.message_id,
            endpoint_id: d.endpoint_id,
            attempt_count: d.attempt_count,
            max_attempts: d.max_attempts,
            next_retry_at: time(d.next_retry_at_unix_ms).filter(|_| !delivered),
            last_response_status: (d.last_response_status != 0).then_some(d.last_response_status),
            last_error: non_empty(d.last_error),
            created_at: time(d.created_at_unix_ms),
            delivered_at: time(d.delivered_at_unix_ms),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = DeliveryAttempt)]
struct AttemptBody {
    id: String,
    delivery_id: String,
    message_id: String,
    endpoint_id: String,
    attempted_at: Option<DateTime<Utc>>,
    duration_ms: u32,
    /// success, failure or timeout.
    outcome: String,
    response_status: Option<u32>,
    /// The first 20 KiB of the partner's answer.
    response_body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// As sent, without the signature.
    request_headers: HashMap<String, String>,
}

impl From<pb::Attempt> for AttemptBody {
    fn from(a: pb::Attempt) -> Self {
        Self {
            id: a.id,
            delivery_id: a.delivery_id,
            message_id: a.message_id,
            endpoint_id: a.endpoint_id,
            attempted_at: time(a.attempted_at_unix_ms),
            duration_ms: a.duration_ms,
            outcome: a.outcome,
            response_status: (a.response_status != 0).then_some(a.response_status),
            response_body: a.response_body,
            error: non_empty(a.error),
            request_headers: a.request_headers,
        }
    }
}

/// A page of a list; `next_cursor` is absent on the last.
#[derive(Serialize, ToSchema)]
struct Page<T> {
    data: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

impl<T> Page<T> {
    fn new(data: Vec<T>, next: String) -> Self {
        Self {
            data,
            next_cursor: non_empty(next),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = EndpointSecret)]
struct SecretBody {
    endpoint_id: String,
    /// `whsec_…` (HMAC) to verify with, or `whpk_…`, the public key of an Ed25519 endpoint.
    key: String,
}

// --- Handlers ---------------------------------------------------------------------------------

#[derive(Deserialize, ToSchema)]
#[schema(as = CreateEndpoint)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// http or https (https in production), at most 2,048 bytes, without a user or password.
    url: String,
    /// At most 1,024 bytes, no control characters.
    #[serde(default)]
    description: Option<String>,
    /// Types of `GET /v1/event-types`, types forwarded from inbound sources (`github.…`, or
    /// `<name>.…` of one of the tenant's sources), or `["*"]` (the default) for every type; at
    /// most 64.
    #[serde(default)]
    event_types: Option<Vec<String>>,
    /// At most 64; every channel when absent or empty.
    #[serde(default)]
    channels: Option<Vec<String>>,
    /// At most 10,000; no limit when absent or 0.
    #[serde(default)]
    #[schema(maximum = 10000)]
    rate_limit_per_second: Option<u32>,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
    /// `hmac-sha256` (the default) or `ed25519`.
    #[serde(default)]
    signing: Option<String>,
}

/// A partner's webhook endpoint.
///
/// 201 with the endpoint and its `Location`, never its secret, which is read at
/// `GET /v1/webhook-endpoints/{id}/secret`. At most 1,000 endpoints per tenant (409 beyond).
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints",
    tag = tag::PARTNER_WEBHOOKS,
    request_body = CreateBody,
    responses(
        (status = 201, description = "The endpoint.", body = EndpointBody,
            headers(("Location" = String, description = "The endpoint: `/v1/webhook-endpoints/{id}`."))),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
async fn create_endpoint(
    caller: Caller,
    client: web::Data<Client>,
    ingest: web::Data<IngestClient>,
    rules: web::Data<EndpointRules>,
    body: http_problem::JsonObject<CreateBody>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let body = body.0;
    check_url(&body.url, **rules)?;
    let description = body.description.unwrap_or_default();
    check_description(&description)?;
    let event_types = match body.event_types {
        None => Vec::new(),
        Some(types) => check_event_types(types, &ingest, &principal).await?,
    };
    let channels = body.channels.unwrap_or_default();
    check_channels(&channels)?;
    let rate = body.rate_limit_per_second.unwrap_or(0);
    check_rate_limit(rate)?;
    let signing = signing(body.signing.as_deref())?;
    let created = client
        .get_ref()
        .clone()
        .create_endpoint(on_behalf(
            pb::CreateEndpointRequest {
                url: body.url,
                description,
                event_types,
                channels,
                rate_limit_per_second: rate,
                metadata: body.metadata.unwrap_or_default(),
                signing: signing.into(),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    let endpoint = created.endpoint.ok_or_else(|| {
        Problem::bad_gateway("The delivery service answered without the endpoint.")
    })?;
    tracing::info!(endpoint = %endpoint.id, "webhook endpoint created");
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/webhook-endpoints/{}", endpoint.id),
        ))
        .json(EndpointBody::from(endpoint)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// 1 to 500.
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The last page's `next_cursor`.
    #[serde(default)]
    cursor: Option<String>,
}

/// The tenant's webhook endpoints, oldest first.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints",
    tag = tag::PARTNER_WEBHOOKS,
    params(PageQuery),
    responses(
        (status = 200, description = "A page of endpoints.", body = Page<EndpointBody>),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_endpoints(
    caller: Caller,
    client: web::Data<Client>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let query = query.into_inner();
    let page = client
        .get_ref()
        .clone()
        .list_endpoints(on_behalf(
            pb::ListEndpointsRequest {
                page_size: limit(query.limit, 500)?,
                page_token: query.cursor.unwrap_or_default(),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    Ok(HttpResponse::Ok().json(Page::new(
        page.endpoints.into_iter().map(EndpointBody::from).collect(),
        page.next_page_token,
    )))
}

async fn fetch_endpoint(
    client: &Client,
    principal: &Principal,
    id: String,
) -> Result<pb::Endpoint, Problem> {
    Ok(client
        .clone()
        .get_endpoint(on_behalf(
            pb::GetEndpointRequest {
                id,
                ..Default::default()
            },
            principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner())
}

/// One webhook endpoint.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}",
    tag = tag::PARTNER_WEBHOOKS,
    params(("id" = String, Path, description = "The endpoint's id, `ep_…`.")),
    responses(
        (status = 200, description = "The endpoint.", body = EndpointBody),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(endpoint = %id))]
pub(crate) async fn get_endpoint(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let endpoint = fetch_endpoint(&client, &principal, endpoint_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(EndpointBody::from(endpoint)))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = UpdateEndpoint)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    /// As on creation.
    #[serde(default)]
    url: Option<String>,
    /// As on creation.
    #[serde(default)]
    description: Option<String>,
    /// As on creation; replaces the whole list.
    #[serde(default)]
    event_types: Option<Vec<String>>,
    /// An empty list: every channel.
    #[serde(default)]
    channels: Option<Vec<String>>,
    /// `true` re-enables an endpoint that was disabled after failing too long.
    #[serde(default)]
    enabled: Option<bool>,
    /// 0: no limit.
    #[serde(default)]
    rate_limit_per_second: Option<u32>,
    /// Replaces the whole map.
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
}

/// Changes the fields given of a webhook endpoint.
#[utoipa::path(
    patch,
    path = "/v1/webhook-endpoints/{id}",
    tag = tag::PARTNER_WEBHOOKS,
    params(("id" = String, Path, description = "The endpoint's id, `ep_…`.")),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The endpoint as it now is.", body = EndpointBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(endpoint = %id))]
async fn update_endpoint(
    caller: Caller,
    client: web::Data<Client>,
    ingest: web::Data<IngestClient>,
    rules: web::Data<EndpointRules>,
    id: web::Path<String>,
    body: http_problem::JsonObject<UpdateBody>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let id = endpoint_id(&id)?;
    let body = body.0;
    if let Some(url) = &body.url {
        check_url(url, **rules)?;
    }
    if let Some(description) = &body.description {
        check_description(description)?;
    }
    let event_types = match body.event_types {
        None => None,
        Some(types) => Some(pb::StringList {
            values: check_event_types(types, &ingest, &principal).await?,
        }),
    };
    if let Some(channels) = &body.channels {
        check_channels(channels)?;
    }
    if let Some(rate) = body.rate_limit_per_second {
        check_rate_limit(rate)?;
    }
    let endpoint = client
        .get_ref()
        .clone()
        .update_endpoint(on_behalf(
            pb::UpdateEndpointRequest {
                id,
                url: body.url,
                description: body.description,
                event_types,
                channels: body.channels.map(|values| pb::StringList { values }),
                enabled: body.enabled,
                rate_limit_per_second: body.rate_limit_per_second,
                replace_metadata: body.metadata.is_some(),
                metadata: body.metadata.unwrap_or_default(),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    Ok(HttpResponse::Ok().json(EndpointBody::from(endpoint)))
}

/// Deletes a webhook endpoint.
///
/// Its pending deliveries are dropped.
#[utoipa::path(
    delete,
    path = "/v1/webhook-endpoints/{id}",
    tag = tag::PARTNER_WEBHOOKS,
    params(("id" = String, Path, description = "The endpoint's id, `ep_…`.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(endpoint = %id))]
async fn delete_endpoint(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    client
        .get_ref()
        .clone()
        .delete_endpoint(on_behalf(
            pb::DeleteEndpointRequest {
                id: endpoint_id(&id)?,
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?;
    tracing::info!("webhook endpoint deleted");
    Ok(HttpResponse::NoContent().finish())
}

fn secret_response(endpoint_id: String, secret: pb::EndpointSecret) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(SecretBody {
            endpoint_id,
            key: secret.key,
        })
}

/// The key a partner verifies an endpoint's deliveries with.
///
/// The `whsec_` secret (the `whpk_` public key of an Ed25519 endpoint). The only route, with the
/// rotation, that shows it.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}/secret",
    tag = tag::PARTNER_WEBHOOKS,
    params(("id" = String, Path, description = "The endpoint's id, `ep_…`.")),
    responses(
        (status = 200, description = "The key.", body = SecretBody),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(endpoint = %id))]
async fn get_secret(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let id = endpoint_id(&id)?;
    let secret = client
        .get_ref()
        .clone()
        .get_endpoint_secret(on_behalf(
            pb::GetEndpointSecretRequest {
                id: id.clone(),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    Ok(secret_response(id, secret))
}

#[derive(Deserialize, Default, ToSchema)]
#[schema(as = RotateEndpointSecret)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the old secret keeps signing beside the new one; default 24 h, at most 7 days.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    old_secret_ttl_seconds: Option<u32>,
}

/// Rotates a webhook endpoint's secret.
///
/// A new secret signs from now on; the old one signs beside it for `old_secret_ttl_seconds`.
/// Answers the new key. The body may be left out.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/secret/rotate",
    tag = tag::PARTNER_WEBHOOKS,
    params(("id" = String, Path, description = "The endpoint's id, `ep_…`.")),
    request_body(content = Option<RotateBody>),
    responses(
        (status = 200, description = "The new key.", body = SecretBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(endpoint = %id))]
async fn rotate_secret(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let id = endpoint_id(&id)?;
    let body: RotateBody = optional_body(&body)?;
    let ttl = match body.old_secret_ttl_seconds {
        None => 0,
        Some(seconds) if (1..=MAX_OLD_SECRET_TTL_SECONDS).contains(&seconds) => seconds,
        Some(_) => {
            return Err(Problem::invalid_request(format!(
                "old_secret_ttl_seconds: must be between 1 and {MAX_OLD_SECRET_TTL_SECONDS} (7 days)"
            )));
        }
    };
    let secret = client
        .get_ref()
        .clone()
        .rotate_endpoint_secret(on_behalf(
            pb::RotateEndpointSecretRequest {
                id: id.clone(),
                old_secret_ttl_seconds: ttl,
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    tracing::info!("webhook endpoint secret rotated");
    Ok(secret_response(id, secret))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveriesQuery {
    /// `pending`, `delivered`, `failed` or `dead_letter`.
    #[serde(default)]
    status: Option<String>,
    /// Only the deliveries of this message.
    #[serde(default)]
    message_id: Option<String>,
    /// 1 to 500.
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The last page's `next_cursor`.
    #[serde(default)]
    cursor: Option<String>,
}

/// A webhook endpoint's deliveries.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}/deliveries",
    tag = tag::PARTNER_WEBHOOKS,
    params(("id" = String, Path, description = "The endpoint's id, `ep_…`."), DeliveriesQuery),
    responses(
        (status = 200, description = "A page of deliveries.", body = Page<DeliveryBody>),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(endpoint = %id))]
pub(crate) async fn list_deliveries(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
    query: web::Query<DeliveriesQuery>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let id = endpoint_id(&id)?;
    let query = query.into_inner();
    let status = match query.status.as_deref() {
        None => pb::DeliveryStatus::Unspecified,
        Some("pending") => pb::DeliveryStatus::Pending,
        Some("delivered") => pb::DeliveryStatus::Delivered,
        Some("failed") => pb::DeliveryStatus::Failed,
        Some("dead_letter") => pb::DeliveryStatus::DeadLetter,
        Some(_) => {
            return Err(Problem::invalid_request(
                "status: must be one of pending, delivered, failed, dead_letter",
            ));
        }
    };
    let page = client
        .get_ref()
        .clone()
        .list_deliveries(on_behalf(
            pb::ListDeliveriesRequest {
                endpoint_id: id,
                message_id: query.message_id.unwrap_or_default(),
                status: status.into(),
                page_size: limit(query.limit, 500)?,
                page_token: query.cursor.unwrap_or_default(),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    Ok(HttpResponse::Ok().json(Page::new(
        page.deliveries
            .into_iter()
            .map(DeliveryBody::from)
            .collect(),
        page.next_page_token,
    )))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttemptsQuery {
    /// Only the attempts of this delivery.
    #[serde(default)]
    delivery_id: Option<String>,
    /// Only the attempts of this message.
    #[serde(default)]
    message_id: Option<String>,
    /// 1 to 500.
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The last page's `next_cursor`.
    #[serde(default)]
    cursor: Option<String>,
}

/// Every HTTP attempt made to a webhook endpoint.
///
/// With the request headers (without signatures), the partner's status and the first 20 KiB of
/// its answer.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}/attempts",
    tag = tag::PARTNER_WEBHOOKS,
    params(("id" = String, Path, description = "The endpoint's id, `ep_…`."), AttemptsQuery),
    responses(
        (status = 200, description = "A page of attempts.", body = Page<AttemptBody>),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(endpoint = %id))]
pub(crate) async fn list_attempts(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
    query: web::Query<AttemptsQuery>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let id = endpoint_id(&id)?;
    let query = query.into_inner();
    let page = client
        .get_ref()
        .clone()
        .list_attempts(on_behalf(
            pb::ListAttemptsRequest {
                endpoint_id: id,
                delivery_id: query.delivery_id.unwrap_or_default(),
                message_id: query.message_id.unwrap_or_default(),
                page_size: limit(query.limit, 500)?,
                page_token: query.cursor.unwrap_or_default(),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    Ok(HttpResponse::Ok().json(Page::new(
        page.attempts.into_iter().map(AttemptBody::from).collect(),
        page.next_page_token,
    )))
}

/// Retries a delivery now.
///
/// 202: the delivery is due now, with a full run of the retry schedule from there (a delivered
/// one is sent again).
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/retry",
    tag = tag::PARTNER_WEBHOOKS,
    params(("id" = String, Path, description = "The delivery's id.")),
    responses(
        (status = 202, description = "The delivery, due now.", body = DeliveryBody),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(delivery = %id))]
async fn retry_delivery(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let id = path_id::<ids::DeliveryId>(&id, NO_DELIVERY)?;
    let delivery = client
        .get_ref()
        .clone()
        .retry_delivery(on_behalf(
            pb::RetryDeliveryRequest {
                delivery_id: id,
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => Problem::not_found().detail(NO_DELIVERY),
            _ => problem(&s),
        })?
        .into_inner();
    Ok(HttpResponse::Accepted().json(DeliveryBody::from(delivery)))
}

#[derive(Deserialize, Default, ToSchema)]
#[schema(as = RedriveEndpoint)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    /// Only dead letters created at or after this time (RFC 3339).
    #[serde(default)]
    #[schema(format = DateTime)]
    since: Option<String>,
    /// Only dead letters created before this time.
    #[serde(default)]
    #[schema(format = DateTime)]
    until: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = RedrivenDeliveries)]
struct RedrivenBody {
    /// How many dead letters went back in the queue.
    redriven: u32,
}

/// Sends a webhook endpoint's dead letters again.
///
/// 202: the endpoint's dead letters go back in the queue, optionally only those made between
/// `since` and `until`. The body may be left out.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/redrive",
    tag = tag::PARTNER_WEBHOOKS,
    operation_id = "redrive_endpoint",
    params(("id" = String, Path, description = "The endpoint's id, `ep_…`.")),
    request_body(content = Option<RedriveBody>),
    responses(
        (status = 202, description = "How many went back in the queue.", body = RedrivenBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(endpoint = %id))]
async fn redrive(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let id = endpoint_id(&id)?;
    let body: RedriveBody = optional_body(&body)?;
    let since = rfc3339("since", body.since.as_deref())?;
    let until = rfc3339("until", body.until.as_deref())?;
    if let (Some(since), Some(until)) = (since, until)
        && until <= since
    {
        return Err(Problem::invalid_request("until: must be later than since"));
    }
    let redriven = client
        .get_ref()
        .clone()
        .redrive_dead_letters(on_behalf(
            pb::RedriveDeadLettersRequest {
                endpoint_id: id,
                since_unix_ms: since.map_or(0, |t| t.timestamp_millis()),
                until_unix_ms: until.map_or(0, |t| t.timestamp_millis()),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner()
        .redriven;
    tracing::info!(redriven, "dead letters redriven");
    Ok(HttpResponse::Accepted().json(RedrivenBody { redriven }))
}

#[derive(Deserialize, Default, ToSchema)]
#[schema(as = SendTest)]
#[serde(deny_unknown_fields)]
struct TestBody {
    /// A type of the catalogue the endpoint subscribes to; the first such type when absent.
    #[serde(default)]
    event_type: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = TestSent)]
struct TestSentBody {
    message_id: String,
    event_id: String,
    event_type: String,
    /// How many endpoints the example was enqueued for (see the route's documentation).
    deliveries: u32,
}

/// The catalogue's example of `event_type`.
fn example(event_type: &str) -> Option<String> {
    let (_, document) = sonora_proto::events::CATALOGUE
        .iter()
        .find(|(known, _)| *known == event_type)?;
    let document: serde_json::Value = serde_json::from_str(document).ok()?;
    serde_json::to_string(document.get("example")?).ok()
}

/// Sends a test event to a webhook endpoint.
///
/// 202 with the message: the catalogue's example of a type the endpoint subscribes to
/// (`event_type`, else the first) is published as a new event (fresh id) on the endpoint's
/// channels and delivered, signed, through the real queue. Like any event it reaches every
/// enabled endpoint of the tenant subscribed to that type and channel, not this one alone. A
/// disabled endpoint is 409. The body may be left out.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/test",
    tag = tag::PARTNER_WEBHOOKS,
    params(("id" = String, Path, description = "The endpoint's id, `ep_…`.")),
    request_body(content = Option<TestBody>),
    responses(
        (status = 202, description = "The message published.", body = TestSentBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(endpoint = %id))]
async fn send_test(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Webhooks)?.principal();
    let id = endpoint_id(&id)?;
    let body: TestBody = optional_body(&body)?;
    let endpoint = fetch_endpoint(&client, &principal, id).await?;
    if !endpoint.enabled {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "endpoint-disabled",
            "Endpoint Disabled",
        )
        .detail("The endpoint is disabled; enable it (PATCH enabled: true) before testing it."));
    }
    let subscribed =
        |t: &str| endpoint.event_types.is_empty() || endpoint.event_types.iter().any(|s| s == t);
    let event_type = match body.event_type {
        Some(event_type) if !catalogued(&event_type) => {
            return Err(Problem::invalid_request(format!(
                "event_type: {event_type:?} is not a type of the catalogue (GET /v1/event-types)"
            )));
        }
        Some(event_type) if !subscribed(&event_type) => {
            return Err(Problem::invalid_request(format!(
                "event_type: the endpoint does not subscribe to {event_type}"
            )));
        }
        Some(event_type) => event_type,
        None => sonora_proto::events::CATALOGUE
            .iter()
            .map(|(known, _)| *known)
            .find(|t| subscribed(t))
            .map(str::to_owned)
            .ok_or_else(|| {
                Problem::new(StatusCode::CONFLICT, "no-example", "No Example")
                    .detail("The endpoint subscribes to no event type of the catalogue, so there is no example to send.")
            })?,
    };
    let payload_json = example(&event_type).ok_or_else(Problem::internal)?;
    let event_id = ids::EventId::new().to_string();
    let published = client
        .get_ref()
        .clone()
        .publish(on_behalf(
            pb::PublishRequest {
                event_id: event_id.clone(),
                event_type: event_type.clone(),
                payload_json,
                channels: endpoint.channels,
                traceparent: telemetry::propagation::current_traceparent().unwrap_or_default(),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    tracing::info!(message = %published.message_id, %event_type, "test event published");
    Ok(HttpResponse::Accepted().json(TestSentBody {
        message_id: published.message_id,
        event_id,
        event_type,
        deliveries: published.deliveries,
    }))
}

impl PageQuery {
    /// The first page of at most `limit` (the console's lists).
    pub(crate) fn first(limit: u32) -> Self {
        Self {
            limit: Some(limit),
            cursor: None,
        }
    }
}

impl DeliveriesQuery {
    /// The first page of at most `limit`, every status.
    pub(crate) fn first(limit: u32) -> Self {
        Self {
            status: None,
            message_id: None,
            limit: Some(limit),
            cursor: None,
        }
    }
}

impl AttemptsQuery {
    /// The first page of at most `limit`, every delivery.
    pub(crate) fn first(limit: u32) -> Self {
        Self {
            delivery_id: None,
            message_id: None,
            limit: Some(limit),
            cursor: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(result: Result<(), Problem>) -> String {
        result.unwrap_err().detail.unwrap_or_default()
    }

    #[test]
    fn urls_must_be_http_and_https_in_production() {
        let dev = EndpointRules { production: false };
        let prod = EndpointRules { production: true };
        assert!(check_url("http://127.0.0.1:9000/hook", dev).is_ok());
        assert!(check_url("https://partner.example/hook", prod).is_ok());
        assert_eq!(
            detail(check_url("http://partner.example/hook", prod)),
            "url: must use https in production"
        );
        assert_eq!(
            detail(check_url("ftp://partner.example/hook", dev)),
            "url: must be an absolute http or https URL"
        );
        assert_eq!(
            detail(check_url("/hook", dev)),
            "url: must be an absolute http or https URL"
        );
        assert_eq!(
            detail(check_url("https://user:pw@partner.example/", dev)),
            "url: must not carry a user name or password"
        );
    }

    #[test]
    fn every_catalogue_type_has_an_example() {
        for (event_type, _) in sonora_proto::events::CATALOGUE {
            let example = example(event_type).expect("an example");
            assert!(example.starts_with('{'), "{event_type}");
        }
    }

    #[test]
    fn backend_codes_map_to_problems_without_backend_words() {
        let cap = problem(&tonic::Status::resource_exhausted(
            "tenant acme has 1000 endpoints",
        ));
        assert_eq!(
            (cap.status, cap.kind.as_str()),
            (409, "/problems/endpoint-limit-reached")
        );
        let missing = problem(&tonic::Status::not_found("endpoint ep_1 of tenant beta"));
        assert_eq!(
            (missing.status, missing.detail.as_deref()),
            (404, Some(NO_ENDPOINT))
        );
        let down = problem(&tonic::Status::unavailable("connection refused"));
        assert_eq!((down.status, down.retry_after), (503, Some(5)));
        let broken = problem(&tonic::Status::internal("panic at store.rs:12"));
        assert_eq!(broken.status, 502);
        assert!(!broken.detail.unwrap_or_default().contains("store.rs"));
        let token = problem(&tonic::Status::invalid_argument(
            "page_token: is not a token",
        ));
        assert_eq!(
            token.detail.as_deref(),
            Some("cursor: is not one this API gave out")
        );
    }

    #[test]
    fn forwarded_types_name_their_source() {
        assert_eq!(forwarded_source("github.issues.labeled"), Some("github"));
        assert_eq!(forwarded_source("acme.order"), Some("acme"));
        assert_eq!(forwarded_source("nodots"), None);
        assert_eq!(forwarded_source("Bad.Type"), None);
    }
}
