//! The `WebhookIngest` gRPC API for the gateway: list the inbox, show one event with its
//! attempts, redrive dead letters.
//!
//! Tenant scoping: a call for an API client (the gateway acting for a key with the `webhooks`
//! scope) sees only the events the routing rules handed to the client's tenant, and of their
//! attempts only those of that tenant's rules (another tenant's rule names, errors and results
//! stay hidden); it may redrive a dead letter only when the event was handed to its tenant alone,
//! since a redrive runs every unfinished action of the event, and one tenant must not set off
//! another's. Replicate events (no rule, so no tenant) are seen by operators only. A call of the
//! gateway on its own (an operator's tool) sees and redrives everything, `tenant` filtering.
//!
//! The same holds for the monitor's alerts and the routing rules: a client sees the alerts of
//! its own sources' paths and the rules that concern its tenant; the built-in receivers' paths
//! and the operator's own rules are for operators.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use database::{DatabaseError, Pool};
use ids::EventId;
use internal_rpc::{Access, Policy, Scope, caller};
use sonora_proto::ingest::v1::{self as pb, SERVICE, webhook_ingest_server::WebhookIngest};
use tonic::{Request, Response, Status};

use crate::{
    inbox::{self, AttemptRow, EventFilter, EventRow},
    monitor::Monitor,
    routing::{Rule, RuleAction},
    sources::{self, SourceError, SourceRow, Sources},
};

/// Who may call which method: the gateway, for a client with the `webhooks` scope or on its own.
pub fn policy() -> Policy {
    const GATEWAY: &[&str] = &["gateway"];
    let access = Access::ServiceOrClient(Scope::Webhooks);
    Policy::new()
        .allow(SERVICE, "ListInboxEvents", GATEWAY, access)
        .allow(SERVICE, "GetInboxEvent", GATEWAY, access)
        .allow(SERVICE, "RedriveDeadLetters", GATEWAY, access)
        .allow(SERVICE, "CreateSource", GATEWAY, access)
        .allow(SERVICE, "ListSources", GATEWAY, access)
        .allow(SERVICE, "RotateSourceSecret", GATEWAY, access)
        .allow(SERVICE, "DeleteSource", GATEWAY, access)
        .allow(SERVICE, "ListWebhookAlerts", GATEWAY, access)
        .allow(SERVICE, "ListRoutingRules", GATEWAY, access)
}

/// The most routing rules one call returns.
pub const MAX_RULES: usize = 200;

/// The service.
#[derive(Clone)]
pub struct IngestApi {
    pub pool: Pool,
    /// The generic sources; none without `WEBHOOK_SECRET_ENCRYPTION_KEY`.
    pub sources: Option<Sources>,
    /// The failure monitor, whose alerts `ListWebhookAlerts` shows.
    pub monitor: Monitor,
    /// `ROUTING_RULES`, which `ListRoutingRules` shows.
    pub rules: Arc<Vec<Rule>>,
}

impl IngestApi {
    /// The sources of `tenant` (none without `WEBHOOK_SECRET_ENCRYPTION_KEY`, since then none
    /// can be registered or receive).
    async fn sources_of(&self, tenant: &str) -> Result<Vec<SourceRow>, Status> {
        match &self.sources {
            Some(sources) => sources.list(Some(tenant)).await.map_err(source_error),
            None => Ok(Vec::new()),
        }
    }

    fn sources(&self) -> Result<&Sources, Status> {
        self.sources.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "sources cannot be registered: webhook-ingest has no WEBHOOK_SECRET_ENCRYPTION_KEY to seal their secrets",
            )
        })
    }
}

fn source_error(error: SourceError) -> Status {
    match error {
        SourceError::Exists(name) => {
            Status::already_exists(format!("name: a source named {name} exists already"))
        }
        SourceError::Database(error) => unavailable(&error),
        SourceError::Sealed(error) => {
            tracing::error!(%error, "a source's secret cannot be opened");
            Status::internal("internal error; it has been logged")
        }
    }
}

fn source_name(name: &str) -> Result<&str, Status> {
    if !sources::valid_name(name) {
        return Err(Status::invalid_argument(
            "name: must be 1 to 64 characters of a-z, 0-9, '-' and '_'",
        ));
    }
    if sources::RESERVED.contains(&name) {
        return Err(Status::invalid_argument(format!(
            "name: {name} is the built-in receiver's; choose another"
        )));
    }
    Ok(name)
}

/// The generic source a monitored path belongs to, if it is one's.
fn source_of_path(path: &str) -> Option<&str> {
    path.strip_prefix(SOURCE_PATH)
        .filter(|name| sources::valid_name(name) && !sources::RESERVED.contains(name))
}

const SOURCE_PATH: &str = "/api/v1/webhooks/";

/// Whether a client of `tenant`, owning `own` sources, may see `rule`: the rules that hand
/// events to its tenant, and those on its own sources that hand them to no other tenant (an
/// agent run on its events). Rules for other tenants and the operator's own rules on the
/// built-in receivers stay hidden: their names, filters and prompts are other people's.
fn rule_visible(rule: &Rule, tenant: &str, own: &[SourceRow]) -> bool {
    match &rule.tenant {
        Some(to) => to.as_str() == tenant,
        None => own.iter().any(|s| s.name == rule.source),
    }
}

fn rule_message(rule: &Rule) -> pb::RoutingRule {
    pb::RoutingRule {
        name: rule.name.clone(),
        source: rule.source.clone(),
        event: rule.event.clone().unwrap_or_default(),
        action: rule.action.clone().unwrap_or_default(),
        repository: rule.repository.clone().unwrap_or_default(),
        label: rule.label.clone().unwrap_or_default(),
        tenant: rule
            .tenant
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        actions: rule
            .actions
            .iter()
            .map(|a| match a {
                RuleAction::Publish => "publish".to_owned(),
                RuleAction::AgentRun => "agent_run".to_owned(),
            })
            .collect(),
        prompt: rule
            .prompt
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

fn source_message(row: SourceRow) -> pb::Source {
    pb::Source {
        id: row.id.to_string(),
        name: row.name,
        tenant: row.tenant.unwrap_or_default(),
        created_at_unix_ms: row.created_at.timestamp_millis(),
        rotated_at_unix_ms: row.rotated_at.map_or(0, |t| t.timestamp_millis()),
    }
}

fn source_secret(row: SourceRow, secret: String) -> pb::SourceSecret {
    pb::SourceSecret {
        path: format!("/api/v1/webhooks/{}", row.name),
        source: Some(source_message(row)),
        secret,
    }
}

/// What a call may see: every tenant's events (an operator, optionally filtering on one), or one
/// tenant's (a client).
struct Scoped {
    tenant: Option<String>,
    client: bool,
}

fn scope<T>(request: &Request<T>, requested: &str) -> Result<Scoped, Status> {
    let caller = caller(request)?;
    Ok(Scoped {
        tenant: caller.optional_tenant(requested)?.map(|t| t.to_string()),
        client: caller.principal.is_some(),
    })
}

fn unavailable(error: &DatabaseError) -> Status {
    tracing::warn!(%error, "the inbox cannot be read");
    Status::unavailable("the inbox cannot be read right now; retry shortly")
}

fn time(field: &str, ms: i64) -> Result<Option<DateTime<Utc>>, Status> {
    match ms {
        0 => Ok(None),
        ms => DateTime::from_timestamp_millis(ms)
            .filter(|_| ms > 0)
            .map(Some)
            .ok_or_else(|| {
                Status::invalid_argument(format!("{field}: must be a time in Unix milliseconds"))
            }),
    }
}

fn source(text: &str) -> Result<Option<String>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    let valid = text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
    if valid {
        Ok(Some(text.to_owned()))
    } else {
        Err(Status::invalid_argument(
            "source: must be a source's name, such as github",
        ))
    }
}

fn event_id(field: &str, text: &str) -> Result<EventId, Status> {
    EventId::parse(text).map_err(|_| {
        Status::invalid_argument(format!(
            "{field}: must be an event id, evt_ and 32 hexadecimal digits"
        ))
    })
}

fn state_name(state: pb::InboxState) -> Option<&'static str> {
    use pb::InboxState as S;
    match state {
        S::Unspecified => None,
        S::Received => Some("received"),
        S::Dispatched => Some("dispatched"),
        S::Done => Some("done"),
        S::Failed => Some("failed"),
        S::DeadLetter => Some("dead_letter"),
        S::Malformed => Some("malformed"),
    }
}

fn state_of(name: &str) -> pb::InboxState {
    use pb::InboxState as S;
    match name {
        "received" => S::Received,
        "dispatched" => S::Dispatched,
        "done" => S::Done,
        "failed" => S::Failed,
        "dead_letter" => S::DeadLetter,
        "malformed" => S::Malformed,
        _ => S::Unspecified,
    }
}

fn event(row: EventRow, scoped: &Scoped) -> pb::InboxEvent {
    pb::InboxEvent {
        id: row.id.to_string(),
        source: row.source,
        delivery_id: row.delivery_id,
        event_type: row.event_type.unwrap_or_default(),
        state: state_of(&row.state).into(),
        attempts: row.attempts,
        last_error: row.last_error.unwrap_or_default(),
        received_at_unix_ms: row.received_at.timestamp_millis(),
        next_attempt_at_unix_ms: row.next_attempt_at.map_or(0, |t| t.timestamp_millis()),
        // A client learns only that the event is its own, not whom else it went to.
        tenants: if scoped.client {
            scoped.tenant.iter().cloned().collect()
        } else {
            row.tenants
        },
    }
}

fn attempt(row: AttemptRow) -> pb::Attempt {
    pb::Attempt {
        attempt: row.attempt,
        action: row.action,
        outcome: row.outcome,
        error: row.error.unwrap_or_default(),
        result_json: row.result.unwrap_or_default(),
        duration_ms: u32::try_from(row.duration_ms).unwrap_or(0),
        at_unix_ms: row.at.timestamp_millis(),
    }
}

#[tonic::async_trait]
impl WebhookIngest for IngestApi {
    async fn list_inbox_events(
        &self,
        request: Request<pb::ListInboxEventsRequest>,
    ) -> Result<Response<pb::ListInboxEventsResponse>, Status> {
        let scoped = scope(&request, &request.get_ref().tenant)?;
        let req = request.into_inner();
        let page_size = match req.page_size {
            0 => 50,
            n @ 1..=100 => i64::from(n),
            _ => {
                return Err(Status::invalid_argument(
                    "page_size: must be between 1 and 100",
                ));
            }
        };
        let after_id = match req.page_token.as_str() {
            "" => None,
            token => Some(event_id("page_token", token)?),
        };
        let filter = EventFilter {
            tenant: scoped.tenant.clone(),
            source: source(&req.source)?,
            state: state_name(req.state()).map(str::to_owned),
            after: time("after_unix_ms", req.after_unix_ms)?,
            before: time("before_unix_ms", req.before_unix_ms)?,
            ..EventFilter::default()
        };
        let rows = inbox::list(&self.pool, &filter, after_id, page_size + 1)
            .await
            .map_err(|e| unavailable(&e))?;
        let more = rows.len() > usize::try_from(page_size).unwrap_or(usize::MAX);
        let events: Vec<pb::InboxEvent> = rows
            .into_iter()
            .take(usize::try_from(page_size).unwrap_or(usize::MAX))
            .map(|row| event(row, &scoped))
            .collect();
        let next_page_token = match (more, events.last()) {
            (true, Some(last)) => last.id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListInboxEventsResponse {
            events,
            next_page_token,
        }))
    }

    async fn get_inbox_event(
        &self,
        request: Request<pb::GetInboxEventRequest>,
    ) -> Result<Response<pb::InboxEventDetail>, Status> {
        let scoped = scope(&request, &request.get_ref().tenant)?;
        let id = event_id("id", &request.get_ref().id)?;
        let filter = EventFilter {
            tenant: scoped.tenant.clone(),
            id: Some(id),
            ..EventFilter::default()
        };
        let (row, payload) = inbox::get(&self.pool, &filter)
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| Status::not_found(format!("id: no event {id}")))?;
        let attempts = inbox::attempts(
            &self.pool,
            id,
            scoped.client.then_some(()).and(scoped.tenant.as_deref()),
        )
        .await
        .map_err(|e| unavailable(&e))?;
        Ok(Response::new(pb::InboxEventDetail {
            event: Some(event(row, &scoped)),
            payload,
            attempts: attempts.into_iter().map(attempt).collect(),
        }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::RedriveDeadLettersResponse>, Status> {
        let scoped = scope(&request, &request.get_ref().tenant)?;
        let req = request.into_inner();
        let id = match req.id.as_str() {
            "" => None,
            text => Some(event_id("id", text)?),
        };
        let filter = EventFilter {
            tenant: scoped.tenant.clone().filter(|_| !scoped.client),
            only_tenant: scoped.tenant.clone().filter(|_| scoped.client),
            id,
            source: source(&req.source)?,
            after: time("after_unix_ms", req.after_unix_ms)?,
            before: time("before_unix_ms", req.before_unix_ms)?,
            ..EventFilter::default()
        };
        let redriven = inbox::redrive(&self.pool, &filter)
            .await
            .map_err(|e| unavailable(&e))?;
        if let (0, Some(id)) = (redriven, id) {
            // Say why the one event asked for was not redriven.
            let visible = EventFilter {
                tenant: scoped.tenant.clone(),
                id: Some(id),
                ..EventFilter::default()
            };
            let found = inbox::list(&self.pool, &visible, None, 1)
                .await
                .map_err(|e| unavailable(&e))?;
            return Err(match found.first() {
                None => Status::not_found(format!("id: no event {id}")),
                Some(row) if row.state != "dead_letter" => Status::failed_precondition(format!(
                    "id: the event is {}, not a dead letter",
                    row.state
                )),
                Some(_) => Status::permission_denied(
                    "id: the event was handed to other tenants too; an operator can redrive it",
                ),
            });
        }
        if redriven > 0 {
            tracing::info!(redriven, tenant = ?scoped.tenant, "dead letters redriven");
        }
        Ok(Response::new(pb::RedriveDeadLettersResponse {
            redriven: u32::try_from(redriven).unwrap_or(u32::MAX),
        }))
    }

    async fn create_source(
        &self,
        request: Request<pb::CreateSourceRequest>,
    ) -> Result<Response<pb::SourceSecret>, Status> {
        let scoped = scope(&request, &request.get_ref().tenant)?;
        let name = source_name(&request.get_ref().name)?;
        let (row, secret) = self
            .sources()?
            .create(name, scoped.tenant.as_deref(), Utc::now())
            .await
            .map_err(source_error)?;
        tracing::info!(source = name, tenant = ?scoped.tenant, "source registered");
        Ok(Response::new(source_secret(row, secret)))
    }

    async fn list_sources(
        &self,
        request: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        let scoped = scope(&request, &request.get_ref().tenant)?;
        let rows = self
            .sources()?
            .list(scoped.tenant.as_deref())
            .await
            .map_err(source_error)?;
        Ok(Response::new(pb::ListSourcesResponse {
            sources: rows.into_iter().map(source_message).collect(),
        }))
    }

    async fn rotate_source_secret(
        &self,
        request: Request<pb::RotateSourceSecretRequest>,
    ) -> Result<Response<pb::SourceSecret>, Status> {
        let scoped = scope(&request, &request.get_ref().tenant)?;
        let name = source_name(&request.get_ref().name)?;
        let keep = match request.get_ref().old_secret_ttl_seconds {
            0 => 24 * 3600,
            n @ 1..=604_800 => i64::from(n),
            _ => {
                return Err(Status::invalid_argument(
                    "old_secret_ttl_seconds: must be at most 604800 (7 days)",
                ));
            }
        };
        let (row, secret) = self
            .sources()?
            .rotate(
                name,
                scoped.tenant.as_deref(),
                chrono::Duration::seconds(keep),
                Utc::now(),
            )
            .await
            .map_err(source_error)?
            .ok_or_else(|| Status::not_found(format!("name: no source {name}")))?;
        tracing::info!(source = name, "source secret rotated");
        Ok(Response::new(source_secret(row, secret)))
    }

    async fn list_webhook_alerts(
        &self,
        request: Request<pb::ListWebhookAlertsRequest>,
    ) -> Result<Response<pb::ListWebhookAlertsResponse>, Status> {
        let scoped = scope(&request, &request.get_ref().tenant)?;
        // A tenant's paths are its sources'; an alert counts for a source only from when it
        // was registered, so a name deleted and taken again does not bring its past along.
        let paths = match &scoped.tenant {
            Some(tenant) => Some(
                self.sources_of(tenant)
                    .await?
                    .into_iter()
                    .map(|s| (format!("{SOURCE_PATH}{}", s.name), s.created_at))
                    .collect::<Vec<_>>(),
            ),
            None => None,
        };
        let alerts = self
            .monitor
            .alerts(Utc::now(), paths.as_deref())
            .await
            .map_err(|error| {
                tracing::warn!(%error, "webhook alerts cannot be read");
                Status::unavailable(
                    "webhook alerts cannot be read right now (Redis); retry shortly",
                )
            })?;
        let settings = self.monitor.settings();
        Ok(Response::new(pb::ListWebhookAlertsResponse {
            monitoring_enabled: settings.enabled,
            failure_threshold: settings.threshold,
            alerts: alerts
                .into_iter()
                .map(|a| pb::WebhookAlert {
                    source: source_of_path(&a.path).unwrap_or_default().to_owned(),
                    raised_at_unix_ms: a.raised_at.timestamp_millis(),
                    failures_last_hour: a.failures_last_hour,
                    path: a.path,
                })
                .collect(),
        }))
    }

    async fn list_routing_rules(
        &self,
        request: Request<pb::ListRoutingRulesRequest>,
    ) -> Result<Response<pb::ListRoutingRulesResponse>, Status> {
        let scoped = scope(&request, &request.get_ref().tenant)?;
        let own = match &scoped.tenant {
            Some(tenant) => Some((tenant.as_str(), self.sources_of(tenant).await?)),
            None => None,
        };
        let rules = self
            .rules
            .iter()
            .filter(|rule| {
                own.as_ref()
                    .is_none_or(|(tenant, sources)| rule_visible(rule, tenant, sources))
            })
            .take(MAX_RULES)
            .map(rule_message)
            .collect();
        Ok(Response::new(pb::ListRoutingRulesResponse { rules }))
    }

    async fn delete_source(
        &self,
        request: Request<pb::DeleteSourceRequest>,
    ) -> Result<Response<pb::DeleteSourceResponse>, Status> {
        let scoped = scope(&request, &request.get_ref().tenant)?;
        let name = source_name(&request.get_ref().name)?;
        if !self
            .sources()?
            .delete(name, scoped.tenant.as_deref())
            .await
            .map_err(source_error)?
        {
            return Err(Status::not_found(format!("name: no source {name}")));
        }
        tracing::info!(source = name, "source deleted");
        Ok(Response::new(pb::DeleteSourceResponse {}))
    }
}
