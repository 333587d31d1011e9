//! The `sonora.delivery.v1.DeliveryService` gRPC API: requests are parsed and checked here, at the
//! edge; the store only ever sees valid values. Each store error maps once to a status.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone as _, Utc};
use database::DatabaseError;
use ids::{AttemptId, DeliveryId, EndpointId, IdError, MessageId};
use internal_rpc::{Caller, caller};
use sonora_proto::delivery::v1::{self as pb, delivery_service_server::DeliveryService as Api};
use tonic::{Request, Response, Status};
use webhook_signature::SigningKey;

use crate::{
    clock::Clock,
    model::{DeliveryStatus, Signing},
    policy::AddressPolicy,
    retry::RetrySchedule,
    store::{
        AttemptRow, DeliveryFilter, DeliveryRow, EndpointChanges, EndpointRow, MessageRow,
        NewEndpoint, NewMessage, Store, StoreError,
    },
};

pub use sonora_proto::delivery::v1::{MAX_BATCH_EVENTS, MAX_PAYLOAD_BYTES};
const MAX_SECRET_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_SECRET_TTL: Duration = Duration::from_secs(24 * 3600);
/// The most endpoints one tenant may have. Each endpoint has its own
/// `webhooks_delivered_total` series, so without a bound one tenant could add series (and
/// rows, and per-endpoint gates in every worker) without end.
pub const MAX_ENDPOINTS_PER_TENANT: i64 = 1000;

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(_) => Status::not_found(error.to_string()),
            StoreError::Limit { .. } => Status::resource_exhausted(error.to_string()),
            StoreError::Database(DatabaseError::Timeout(_) | DatabaseError::Connect(_)) => {
                tracing::warn!(%error, "database unavailable");
                Status::unavailable("the database is not reachable; retry later")
            }
            other => {
                tracing::error!(error = %other, "store failure");
                Status::internal("internal error; it has been logged")
            }
        }
    }
}

fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

fn token_chars(
    field: &str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.len() > max {
        return Err(invalid(field, format!("is longer than {max} characters")));
    }
    if !value.chars().all(allowed) {
        return Err(invalid(field, "has characters outside the allowed set"));
    }
    Ok(())
}

fn event_type(field: &str, value: &str) -> Result<(), Status> {
    token_chars(field, value, 128, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)
    })
}

fn list(
    field: &str,
    values: &[String],
    check: impl Fn(&str, &str) -> Result<(), Status>,
) -> Result<Option<Vec<String>>, Status> {
    if values.len() > 64 {
        return Err(invalid(field, "has more than 64 entries"));
    }
    for v in values {
        check(field, v)?;
    }
    Ok((!values.is_empty()).then(|| values.to_vec()))
}

fn channel(field: &str, value: &str) -> Result<(), Status> {
    token_chars(field, value, 128, |c| {
        c.is_ascii_alphanumeric() || "-_.:".contains(c)
    })
}

fn description(value: &str) -> Result<(), Status> {
    if value.len() > 1024 {
        return Err(invalid("description", "is longer than 1024 characters"));
    }
    Ok(())
}

fn metadata(map: &std::collections::HashMap<String, String>) -> Result<serde_json::Value, Status> {
    if map.len() > 50 || map.iter().any(|(k, v)| k.len() > 128 || v.len() > 1024) {
        return Err(invalid(
            "metadata",
            "allows at most 50 keys of 128 characters with values of 1024",
        ));
    }
    let sorted: BTreeMap<_, _> = map.iter().collect();
    Ok(serde_json::to_value(sorted).expect("strings serialize"))
}

fn rate_limit(value: u32) -> Result<Option<i32>, Status> {
    match value {
        0 => Ok(None),
        1..=10_000 => Ok(Some(i32::try_from(value).expect("in range"))),
        _ => Err(invalid("rate_limit_per_second", "must be at most 10000")),
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(field: &str, ms: i64) -> Result<Option<DateTime<Utc>>, Status> {
    if ms == 0 {
        return Ok(None);
    }
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(Some)
        .ok_or_else(|| invalid(field, "is not a valid time"))
}

/// A required id of its kind: the message names the field and the rule, never the value.
fn id<T: std::str::FromStr<Err = IdError>>(field: &str, text: &str) -> Result<T, Status> {
    if text.is_empty() {
        return Err(invalid(field, "is required"));
    }
    text.parse().map_err(|e| invalid(field, e))
}

/// An optional id filter: empty means none.
fn optional_id<T: std::str::FromStr<Err = IdError>>(
    field: &str,
    text: &str,
) -> Result<Option<T>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    id(field, text).map(Some)
}

/// A page token: empty for the first page, otherwise the last id of the previous page, which is
/// what `next_token` hands out. Anything else was not given out by this API.
fn page_token<T: std::str::FromStr<Err = IdError>>(token: &str) -> Result<Option<T>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .parse()
        .map(Some)
        .map_err(|_| invalid("page_token", "is not a token this API gave out"))
}

fn status_filter(status: i32) -> Result<Option<DeliveryStatus>, Status> {
    Ok(
        match pb::DeliveryStatus::try_from(status).map_err(|_| invalid("status", "is unknown"))? {
            pb::DeliveryStatus::Unspecified => None,
            pb::DeliveryStatus::Pending => Some(DeliveryStatus::Pending),
            pb::DeliveryStatus::Delivered => Some(DeliveryStatus::Delivered),
            pb::DeliveryStatus::Failed => Some(DeliveryStatus::Failed),
            pb::DeliveryStatus::DeadLetter => Some(DeliveryStatus::DeadLetter),
        },
    )
}

fn status_to_proto(status: DeliveryStatus) -> pb::DeliveryStatus {
    match status {
        DeliveryStatus::Pending => pb::DeliveryStatus::Pending,
        DeliveryStatus::Delivered => pb::DeliveryStatus::Delivered,
        DeliveryStatus::Failed => pb::DeliveryStatus::Failed,
        DeliveryStatus::DeadLetter => pb::DeliveryStatus::DeadLetter,
    }
}

fn endpoint_to_proto(row: EndpointRow) -> pb::Endpoint {
    let signing = match row.signing {
        Signing::Hmac => pb::SigningScheme::HmacSha256,
        Signing::Ed25519 => pb::SigningScheme::Ed25519,
    };
    pb::Endpoint {
        metadata: row
            .metadata
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        id: row.id.to_string(),
        tenant: row.tenant.to_string(),
        url: row.url,
        description: row.description,
        event_types: row.event_types.unwrap_or_default(),
        channels: row.channels.unwrap_or_default(),
        enabled: !row.disabled,
        disabled_reason: row.disabled_reason.unwrap_or_default(),
        rate_limit_per_second: row
            .rate_limit_per_second
            .map_or(0, |r| u32::try_from(r).unwrap_or(0)),
        signing: signing.into(),
        created_at_unix_ms: millis(row.created_at),
        updated_at_unix_ms: millis(row.updated_at),
    }
}

fn message_to_proto(row: MessageRow) -> pb::Message {
    pb::Message {
        id: row.id.to_string(),
        tenant: row.tenant.to_string(),
        event_id: row.event_id,
        event_type: row.event_type,
        payload_json: row.payload,
        channels: row.channels,
        created_at_unix_ms: millis(row.created_at),
    }
}

fn delivery_to_proto(row: DeliveryRow) -> pb::Delivery {
    pb::Delivery {
        id: row.id.to_string(),
        message_id: row.message_id.to_string(),
        endpoint_id: row.endpoint_id.to_string(),
        status: status_to_proto(row.status).into(),
        attempt_count: u32::try_from(row.attempt_count).unwrap_or(0),
        max_attempts: u32::try_from(row.max_attempts).unwrap_or(0),
        next_retry_at_unix_ms: millis(row.next_retry_at),
        last_response_status: row
            .last_response_status
            .map_or(0, |s| u32::try_from(s).unwrap_or(0)),
        last_error: row.last_error.unwrap_or_default(),
        created_at_unix_ms: millis(row.created_at),
        delivered_at_unix_ms: row.delivered_at.map_or(0, millis),
    }
}

fn attempt_to_proto(row: AttemptRow) -> pb::Attempt {
    pb::Attempt {
        id: row.id.to_string(),
        delivery_id: row.delivery_id.to_string(),
        message_id: row.message_id.to_string(),
        endpoint_id: row.endpoint_id.to_string(),
        attempted_at_unix_ms: millis(row.attempted_at),
        duration_ms: u32::try_from(row.duration_ms).unwrap_or(0),
        request_headers: row
            .request_headers
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        response_status: row
            .response_status
            .map_or(0, |s| u32::try_from(s).unwrap_or(0)),
        response_body: row.response_body.unwrap_or_default(),
        error: row.error.unwrap_or_default(),
        outcome: row.outcome.as_str().to_owned(),
    }
}

/// The service.
pub struct DeliveryApi {
    pub database: database::Database,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub policy: Arc<AddressPolicy>,
    pub schedule: RetrySchedule,
}

impl DeliveryApi {
    /// Calls that arrive before the schema exists get a retryable answer, not an internal error.
    fn ready(&self) -> Result<(), Status> {
        if self.database.is_migrated() {
            Ok(())
        } else {
            Err(Status::unavailable(
                "starting: the database migrations are being applied; retry shortly",
            ))
        }
    }

    /// An endpoint URL the policy allows, as written and, for a host name, as it resolves now.
    /// The message names the rule, never the URL (its path or query may carry a token).
    async fn check_url(&self, url: &str) -> Result<String, Status> {
        if url.len() > 2048 {
            return Err(invalid("url", "is longer than 2048 characters"));
        }
        let url = self
            .policy
            .check_url(url)
            .map_err(|refused| invalid("url", refused))?;
        self.policy
            .check_destination(&url)
            .await
            .map_err(|refused| invalid("url", refused))?;
        Ok(url.to_string())
    }
}

fn signing_key(scheme: Signing, secret: &str) -> Result<SigningKey, Status> {
    if secret.is_empty() {
        let generated = match scheme {
            Signing::Hmac => SigningKey::generate_hmac(),
            Signing::Ed25519 => SigningKey::generate_ed25519(),
        };
        return Ok(SigningKey::parse(&generated).expect("generated keys parse"));
    }
    let key = SigningKey::parse(secret).map_err(|e| invalid("secret", e))?;
    match (scheme, &key) {
        (Signing::Hmac, SigningKey::Hmac(..)) | (Signing::Ed25519, SigningKey::Ed25519(..)) => {
            Ok(key)
        }
        _ => Err(invalid(
            "secret",
            "does not match the endpoint's signing scheme",
        )),
    }
}

/// Checks one event to publish, at the edge.
fn new_message(caller: &Caller, r: pb::PublishRequest) -> Result<NewMessage, Status> {
    let tenant = caller.tenant(&r.tenant)?;
    token_chars("event_id", &r.event_id, 256, |c| !c.is_control())?;
    event_type("event_type", &r.event_type)?;
    if r.payload_json.len() > MAX_PAYLOAD_BYTES {
        return Err(invalid(
            "payload_json",
            format!("is larger than {MAX_PAYLOAD_BYTES} bytes"),
        ));
    }
    let parsed: serde_json::Value = serde_json::from_str(&r.payload_json)
        .map_err(|e| invalid("payload_json", format!("is not JSON: {e}")))?;
    if !parsed.is_object() {
        return Err(invalid("payload_json", "must be a JSON object"));
    }
    let channels = list("channels", &r.channels, channel)?.unwrap_or_default();
    Ok(NewMessage {
        tenant,
        event_id: r.event_id,
        event_type: r.event_type,
        payload: r.payload_json,
        channels,
        traceparent: telemetry::propagation::valid_traceparent(&r.traceparent),
    })
}

fn published_to_proto(published: crate::store::Published) -> pb::PublishResponse {
    pb::PublishResponse {
        message_id: published.message_id.to_string(),
        duplicate: published.duplicate,
        deliveries: published.deliveries,
    }
}

/// The token of the next page: the last id of a full page (the store pages by id), or empty
/// when this page is the last.
fn next_token<T, Id: std::fmt::Display>(
    rows: &[T],
    page_size: u32,
    last: impl Fn(&T) -> Id,
) -> String {
    let full = rows.len() >= usize::try_from(page_size.clamp(1, 500)).unwrap_or(500);
    match rows.last() {
        Some(row) if full => last(row).to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl Api for DeliveryApi {
    #[tracing::instrument(skip_all, fields(event_type = %request.get_ref().event_type))]
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let message = new_message(&caller, request.into_inner())?;
        let published = self
            .store
            .publish(&message, self.schedule.max_attempts(), self.clock.now())
            .await?;
        Ok(Response::new(published_to_proto(published)))
    }

    #[tracing::instrument(skip_all, fields(events = request.get_ref().events.len()))]
    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let events = request.into_inner().events;
        if events.len() > MAX_BATCH_EVENTS {
            return Err(invalid(
                "events",
                format!("has more than {MAX_BATCH_EVENTS} events"),
            ));
        }
        let messages = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                new_message(&caller, event).map_err(|status| {
                    Status::invalid_argument(format!("events[{i}].{}", status.message()))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let published = self
            .store
            .publish_batch(&messages, self.schedule.max_attempts(), self.clock.now())
            .await?;
        Ok(Response::new(pb::PublishBatchResponse {
            results: published.into_iter().map(published_to_proto).collect(),
        }))
    }

    async fn create_endpoint(
        &self,
        request: Request<pb::CreateEndpointRequest>,
    ) -> Result<Response<pb::CreateEndpointResponse>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let url = self.check_url(&r.url).await?;
        description(&r.description)?;
        let scheme = match pb::SigningScheme::try_from(r.signing)
            .map_err(|_| invalid("signing", "is unknown"))?
        {
            pb::SigningScheme::Unspecified | pb::SigningScheme::HmacSha256 => Signing::Hmac,
            pb::SigningScheme::Ed25519 => Signing::Ed25519,
        };
        let key = signing_key(scheme, &r.secret)?;
        let row = self
            .store
            .create_endpoint(
                NewEndpoint {
                    tenant,
                    url,
                    description: r.description,
                    event_types: list("event_types", &r.event_types, event_type)?,
                    channels: list("channels", &r.channels, channel)?,
                    rate_limit_per_second: rate_limit(r.rate_limit_per_second)?,
                    metadata: metadata(&r.metadata)?,
                    signing: scheme,
                },
                &key,
                MAX_ENDPOINTS_PER_TENANT,
                self.clock.now(),
            )
            .await?;
        Ok(Response::new(pb::CreateEndpointResponse {
            endpoint: Some(endpoint_to_proto(row)),
            verification_key: key.verification_key(),
        }))
    }

    async fn get_endpoint(
        &self,
        request: Request<pb::GetEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let id = id("id", &r.id)?;
        Ok(Response::new(endpoint_to_proto(
            self.store.get_endpoint(&tenant, id).await?,
        )))
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let page_size = if r.page_size == 0 { 100 } else { r.page_size };
        let rows = self
            .store
            .list_endpoints(&tenant, page_token(&r.page_token)?, page_size)
            .await?;
        let next_page_token = next_token(&rows, page_size, |row| row.id);
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints: rows.into_iter().map(endpoint_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_endpoint(
        &self,
        request: Request<pb::UpdateEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let id = id("id", &r.id)?;
        let url = match r.url.as_deref() {
            Some(url) => Some(self.check_url(url).await?),
            None => None,
        };
        if let Some(d) = &r.description {
            description(d)?;
        }
        let changes = EndpointChanges {
            url,
            description: r.description,
            event_types: r
                .event_types
                .map(|l| list("event_types", &l.values, event_type))
                .transpose()?,
            channels: r
                .channels
                .map(|l| list("channels", &l.values, channel))
                .transpose()?,
            enabled: r.enabled,
            rate_limit_per_second: r.rate_limit_per_second.map(rate_limit).transpose()?,
            metadata: if r.replace_metadata {
                Some(metadata(&r.metadata)?)
            } else {
                None
            },
        };
        let row = self
            .store
            .update_endpoint(&tenant, id, changes, self.clock.now())
            .await?;
        Ok(Response::new(endpoint_to_proto(row)))
    }

    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let id = id("id", &r.id)?;
        self.store
            .delete_endpoint(&tenant, id, self.clock.now())
            .await?;
        Ok(Response::new(pb::DeleteEndpointResponse {}))
    }

    async fn get_endpoint_secret(
        &self,
        request: Request<pb::GetEndpointSecretRequest>,
    ) -> Result<Response<pb::EndpointSecret>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let id = id("id", &r.id)?;
        let key = self
            .store
            .current_key(&tenant, id, self.clock.now())
            .await?;
        Ok(Response::new(pb::EndpointSecret {
            key: key.verification_key(),
        }))
    }

    async fn rotate_endpoint_secret(
        &self,
        request: Request<pb::RotateEndpointSecretRequest>,
    ) -> Result<Response<pb::EndpointSecret>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let id = id("id", &r.id)?;
        let endpoint = self.store.get_endpoint(&tenant, id).await?;
        let key = signing_key(endpoint.signing, &r.secret)?;
        let ttl = match r.old_secret_ttl_seconds {
            0 => DEFAULT_SECRET_TTL,
            s => Duration::from_secs(u64::from(s)),
        };
        if ttl > MAX_SECRET_TTL {
            return Err(invalid("old_secret_ttl_seconds", "must be at most 7 days"));
        }
        let ttl = chrono::Duration::from_std(ttl).expect("bounded");
        self.store
            .rotate_secret(&tenant, id, &key, ttl, self.clock.now())
            .await?;
        Ok(Response::new(pb::EndpointSecret {
            key: key.verification_key(),
        }))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        if !r.event_type.is_empty() {
            event_type("event_type", &r.event_type)?;
        }
        let page_size = if r.page_size == 0 { 100 } else { r.page_size };
        let rows = self
            .store
            .list_messages(
                &tenant,
                (!r.event_type.is_empty()).then_some(r.event_type.as_str()),
                from_millis("after_unix_ms", r.after_unix_ms)?,
                from_millis("before_unix_ms", r.before_unix_ms)?,
                page_token::<MessageId>(&r.page_token)?,
                page_size,
            )
            .await?;
        let next_page_token = next_token(&rows, page_size, |row| row.id);
        Ok(Response::new(pb::ListMessagesResponse {
            messages: rows.into_iter().map(message_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let page_size = if r.page_size == 0 { 100 } else { r.page_size };
        if !r.event_id.is_empty() {
            token_chars("event_id", &r.event_id, 256, |c| !c.is_control())?;
        }
        let rows = self
            .store
            .list_deliveries(
                &tenant,
                DeliveryFilter {
                    endpoint_id: optional_id::<EndpointId>("endpoint_id", &r.endpoint_id)?,
                    message_id: optional_id::<MessageId>("message_id", &r.message_id)?,
                    event_id: (!r.event_id.is_empty()).then_some(r.event_id.as_str()),
                    status: status_filter(r.status)?,
                },
                page_token::<DeliveryId>(&r.page_token)?,
                page_size,
            )
            .await?;
        let next_page_token = next_token(&rows, page_size, |row| row.id);
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: rows.into_iter().map(delivery_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn list_attempts(
        &self,
        request: Request<pb::ListAttemptsRequest>,
    ) -> Result<Response<pb::ListAttemptsResponse>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let page_size = if r.page_size == 0 { 100 } else { r.page_size };
        let rows = self
            .store
            .list_attempts(
                &tenant,
                optional_id::<EndpointId>("endpoint_id", &r.endpoint_id)?,
                optional_id::<MessageId>("message_id", &r.message_id)?,
                optional_id::<DeliveryId>("delivery_id", &r.delivery_id)?,
                page_token::<AttemptId>(&r.page_token)?,
                page_size,
            )
            .await?;
        let next_page_token = next_token(&rows, page_size, |row| row.id);
        Ok(Response::new(pb::ListAttemptsResponse {
            attempts: rows.into_iter().map(attempt_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn retry_delivery(
        &self,
        request: Request<pb::RetryDeliveryRequest>,
    ) -> Result<Response<pb::Delivery>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let row = self
            .store
            .retry_delivery(
                &tenant,
                id("delivery_id", &r.delivery_id)?,
                self.schedule.max_attempts(),
                self.clock.now(),
            )
            .await?;
        Ok(Response::new(delivery_to_proto(row)))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::RedriveDeadLettersResponse>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let count = self
            .store
            .redrive(
                &tenant,
                id("endpoint_id", &r.endpoint_id)?,
                from_millis("since_unix_ms", r.since_unix_ms)?,
                from_millis("until_unix_ms", r.until_unix_ms)?,
                self.schedule.max_attempts(),
                self.clock.now(),
            )
            .await?;
        Ok(Response::new(pb::RedriveDeadLettersResponse {
            redriven: u32::try_from(count).unwrap_or(u32::MAX),
        }))
    }

    async fn get_queue_stats(
        &self,
        request: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::QueueStats>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.optional_tenant(&r.tenant)?;
        let stats = self.store.queue_stats(tenant.as_ref()).await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(Response::new(pb::QueueStats {
            pending: count(stats.pending),
            delivered: count(stats.delivered),
            failed: count(stats.failed),
            dead_letter: count(stats.dead_letter),
            oldest_pending_unix_ms: stats.oldest_pending.map_or(0, millis),
            average_attempts: stats.average_attempts.unwrap_or(0.0),
        }))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        self.ready()?;
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let tenant = caller.tenant(&r.tenant)?;
        let day = |field: &str, text: &str| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| invalid(field, "must be a date written YYYY-MM-DD"))
        };
        let (from, to) = (day("from", &r.from)?, day("to", &r.to)?);
        if to < from || (to - from).num_days() > 366 {
            return Err(invalid(
                "to",
                "must be on or after from, at most 366 days later",
            ));
        }
        let days = self.store.usage(&tenant, from, to).await?;
        Ok(Response::new(pb::GetUsageResponse {
            days: days
                .into_iter()
                .map(|(day, delivered)| pb::DailyDeliveries {
                    day: day.format("%Y-%m-%d").to_string(),
                    delivered: u64::try_from(delivered).unwrap_or(0),
                })
                .collect(),
        }))
    }

    async fn cleanup_delivered(
        &self,
        request: Request<pb::CleanupDeliveredRequest>,
    ) -> Result<Response<pb::CleanupDeliveredResponse>, Status> {
        self.ready()?;
        let r = request.into_inner();
        if r.older_than_days == 0 || r.older_than_days > 3650 {
            return Err(invalid("older_than_days", "must be between 1 and 3650"));
        }
        let before = self.clock.now() - chrono::Duration::days(i64::from(r.older_than_days));
        let deleted = self.store.cleanup_delivered(before).await?;
        Ok(Response::new(pb::CleanupDeliveredResponse { deleted }))
    }
}
