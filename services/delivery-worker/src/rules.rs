//! The delivery rules, as pure functions: what one attempt means for its delivery and its
//! endpoint ([`decide`]), when an endpoint is disabled, and which operational events a recorded
//! batch raises, with their ids and payloads.
//!
//! No IO and no clock of their own (callers pass `now` and the jitter), so the rules are read in
//! one place and tested by calling them. The store applies them inside the transaction that
//! records a batch, so an outcome, the endpoint's health and the events it raises commit together.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ids::{EndpointId, Tenant};
use uuid::Uuid;

use crate::{
    model::{AttemptOutcome, DeliveryStatus},
    retry::{RetrySchedule, bounded_retry_after},
    sender::AttemptResult,
    store::{Claimed, NewMessage, Outcome},
};

/// What does not change while the worker runs.
#[derive(Debug, Clone)]
pub struct Policy {
    pub lease: Duration,
    pub schedule: RetrySchedule,
    /// An endpoint failing with no success for this long is disabled.
    pub disable_after: Duration,
    /// `message.attempt.failing` is published after this many failed attempts.
    pub failing_after_attempts: i32,
    /// How long a 502/504/timeout/429 without `Retry-After` holds an endpoint back.
    pub throttle: Duration,
}

pub(crate) fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Decides what one attempt means for its delivery and its endpoint. Pure, so the rules can be
/// read and tested in one place.
pub fn decide(
    claimed: &Claimed,
    claim_id: Uuid,
    result: &AttemptResult,
    policy: &Policy,
    now: DateTime<Utc>,
    jitter_unit: f64,
) -> Outcome {
    let attempt = claimed.attempt_count + 1;
    let status_code = result.status;
    let mut throttle_until = None;
    let mut disable_reason = None;
    let mut error = result.error.clone();
    let (status, next_retry_at) = if result.succeeded() {
        (DeliveryStatus::Delivered, now)
    } else {
        if let Some(code) = status_code {
            if (300..400).contains(&code) {
                error.get_or_insert_with(|| format!("redirect {code} not followed"));
            }
            if code == 410 {
                disable_reason = Some(GONE_REASON.to_owned());
            }
        }
        let retry_after = match status_code {
            Some(429 | 503) => result.retry_after.map(bounded_retry_after),
            _ => None,
        };
        let slow_down = matches!(status_code, Some(429 | 502 | 503 | 504)) || result.timed_out;
        if slow_down {
            let hold = retry_after
                .unwrap_or(policy.throttle)
                .min(Duration::from_secs(3600));
            throttle_until = Some(now + chrono(hold));
        }
        if disable_reason.is_some() {
            // The endpoint is disabled; the delivery waits, due, for it to be enabled again.
            (DeliveryStatus::Failed, now)
        } else if attempt >= claimed.max_attempts {
            (DeliveryStatus::DeadLetter, now)
        } else {
            // A receiver that says when to come back is believed, within bounds.
            // Otherwise the schedule, indexed from where the delivery's current run started
            // (redrive and retry start it over), so every run waits as the schedule says.
            let delay = retry_after.unwrap_or_else(|| {
                policy
                    .schedule
                    .delay_in_run(attempt - claimed.schedule_offset, jitter_unit)
            });
            (DeliveryStatus::Failed, now + chrono(delay))
        }
    };
    Outcome {
        delivery_id: claimed.id,
        claim_id,
        message_id: claimed.message_id,
        endpoint_id: claimed.endpoint_id,
        schedule_offset: claimed.schedule_offset,
        tenant: claimed.tenant.clone(),
        event_type: claimed.event_type.clone(),
        status,
        attempt_count: attempt,
        next_retry_at,
        attempted_at: now,
        enqueued_at: claimed.enqueued_at,
        duration_ms: i32::try_from(result.duration.as_millis()).unwrap_or(i32::MAX),
        request_headers: result.request_headers.clone(),
        response_status: status_code.map(i32::from),
        response_body: result.body.clone(),
        error,
        attempt_outcome: if result.succeeded() {
            AttemptOutcome::Success
        } else if result.timed_out {
            AttemptOutcome::Timeout
        } else {
            AttemptOutcome::Failure
        },
        throttle_until,
        disable_reason,
    }
}

/// Why an endpoint disabled through the API is disabled.
pub const OPERATOR_REASON: &str = "disabled by an operator";

/// Why an endpoint that answered 410 Gone is disabled.
pub const GONE_REASON: &str = "the endpoint answered 410 Gone";

/// Event types the worker itself publishes; their own failures raise no further events.
pub fn is_operational(event_type: &str) -> bool {
    event_type.starts_with("endpoint.") || event_type.starts_with("message.attempt.")
}

/// Why an endpoint failing since `since` with no success is disabled.
pub fn failing_reason(since: DateTime<Utc>) -> String {
    format!(
        "failing with no success since {}",
        since.format("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// An enabled endpoint touched by a failed attempt, as it stands once the batch's failures and
/// successes have been applied to its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    pub id: EndpointId,
    /// The start of its current run of failures; `None` when a success in the batch ended it.
    pub failing_since: Option<DateTime<Utc>>,
}

/// Which endpoints to disable after a batch, and why, each once: at once for an answer that asks
/// for it (410 Gone), in the order of the outcomes, then those failing with no success for
/// `disable_after` or longer. Only endpoints in `health` (enabled ones) are considered.
pub fn endpoints_to_disable(
    applied: &[&Outcome],
    health: &[EndpointHealth],
    disable_after: chrono::Duration,
    now: DateTime<Utc>,
) -> Vec<(EndpointId, String)> {
    let enabled = |id: EndpointId| health.iter().any(|h| h.id == id);
    let mut chosen: Vec<(EndpointId, String)> = Vec::new();
    let mut choose = |id: EndpointId, reason: String| {
        if !chosen.iter().any(|(c, _)| *c == id) {
            chosen.push((id, reason));
        }
    };
    for o in applied {
        if let Some(reason) = &o.disable_reason
            && enabled(o.endpoint_id)
        {
            choose(o.endpoint_id, reason.clone());
        }
    }
    for h in health {
        if let Some(since) = h.failing_since
            && since <= now - disable_after
        {
            choose(h.id, failing_reason(since));
        }
    }
    chosen
}

/// An endpoint the store has just disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledEndpoint {
    pub id: EndpointId,
    pub tenant: Tenant,
    pub url: String,
    pub reason: String,
}

/// An operational event raised while recording outcomes, published to the tenant's own
/// endpoints like any other event.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationalEvent {
    pub tenant: Tenant,
    pub event_type: &'static str,
    /// Stable for what happened, so recording the same thing twice publishes it once.
    pub event_id: String,
    pub payload: serde_json::Value,
}

impl OperationalEvent {
    /// The event as a message to publish.
    pub fn message(&self) -> NewMessage {
        NewMessage {
            tenant: self.tenant.clone(),
            event_id: self.event_id.clone(),
            event_type: self.event_type.to_owned(),
            payload: self.payload.to_string(),
            channels: Vec::new(),
            traceparent: telemetry::propagation::current_traceparent(),
        }
    }
}

/// `endpoint.disabled`, once per endpoint and moment.
pub fn endpoint_disabled(endpoint: &DisabledEndpoint, now: DateTime<Utc>) -> OperationalEvent {
    OperationalEvent {
        tenant: endpoint.tenant.clone(),
        event_type: "endpoint.disabled",
        event_id: format!(
            "endpoint.disabled:{}:{}",
            endpoint.id,
            now.timestamp_millis()
        ),
        payload: serde_json::json!({
            "type": "endpoint.disabled",
            "data": {
                "endpointId": endpoint.id,
                "url": endpoint.url,
                "reason": endpoint.reason,
                "disabledAt": now,
            },
        }),
    }
}

/// `message.attempt.exhausted` when a delivery is dead-lettered, `message.attempt.failing` when
/// it has failed `failing_after_attempts` times in its current run of the schedule (so a
/// redriven delivery that keeps failing is reported again); nothing for other outcomes, nor for
/// the deliveries of operational events themselves (no event about an event).
pub fn attempt_event(outcome: &Outcome, failing_after_attempts: i32) -> Option<OperationalEvent> {
    if is_operational(&outcome.event_type) {
        return None;
    }
    let event_type = match outcome.status {
        DeliveryStatus::DeadLetter => "message.attempt.exhausted",
        DeliveryStatus::Failed
            if outcome.attempt_count - outcome.schedule_offset == failing_after_attempts =>
        {
            "message.attempt.failing"
        }
        _ => return None,
    };
    Some(OperationalEvent {
        tenant: outcome.tenant.clone(),
        event_type,
        event_id: format!(
            "{event_type}:{}:{}",
            outcome.delivery_id, outcome.attempt_count
        ),
        payload: serde_json::json!({
            "type": event_type,
            "data": {
                "messageId": outcome.message_id,
                "endpointId": outcome.endpoint_id,
                "eventType": outcome.event_type,
                "attempts": outcome.attempt_count,
                "lastResponseStatus": outcome.response_status,
                "lastError": outcome.error,
            },
        }),
    })
}

/// Every operational event a recorded batch raises: the disabled endpoints first, then the
/// attempts' events in the order of the outcomes.
pub fn operational_events(
    disabled: &[DisabledEndpoint],
    applied: &[&Outcome],
    failing_after_attempts: i32,
    now: DateTime<Utc>,
) -> Vec<OperationalEvent> {
    disabled
        .iter()
        .map(|endpoint| endpoint_disabled(endpoint, now))
        .chain(
            applied
                .iter()
                .filter_map(|o| attempt_event(o, failing_after_attempts)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use ids::{DeliveryId, MessageId};

    use super::*;

    fn endpoint(n: u8) -> EndpointId {
        EndpointId::parse(&format!("ep_{n:032x}")).unwrap()
    }

    fn delivery() -> DeliveryId {
        DeliveryId::parse(&format!("dlv_{:032x}", 7)).unwrap()
    }

    fn message() -> MessageId {
        MessageId::parse(&format!("msg_{:032x}", 1)).unwrap()
    }

    fn acme() -> Tenant {
        Tenant::parse("acme").unwrap()
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            lease: Duration::from_secs(15),
            schedule: RetrySchedule {
                delays: vec![Duration::from_secs(10), Duration::from_secs(60)],
                jitter: 0.0,
            },
            disable_after: Duration::from_secs(3600),
            failing_after_attempts: 2,
            throttle: Duration::from_secs(5),
        }
    }

    fn claimed(attempt_count: i32) -> Claimed {
        Claimed {
            id: delivery(),
            message_id: message(),
            endpoint_id: endpoint(1),
            attempt_count,
            max_attempts: 3,
            schedule_offset: 0,
            enqueued_at: t0(),
            tenant: acme(),
            event_type: "order.paid".into(),
            payload: "{}".into(),
            url: "https://example.com/hook".into(),
            rate_limit_per_second: None,
            sealed_secrets: None,
            traceparent: None,
        }
    }

    fn answered(status: u16) -> AttemptResult {
        AttemptResult {
            status: Some(status),
            body: Some(String::new()),
            error: None,
            timed_out: false,
            duration: Duration::from_millis(12),
            retry_after: None,
            request_headers: serde_json::json!({}),
        }
    }

    fn outcome_of(claimed: &Claimed, result: &AttemptResult) -> Outcome {
        decide(claimed, Uuid::nil(), result, &policy(), t0(), 0.5)
    }

    #[test]
    fn success_is_delivered() {
        let o = outcome_of(&claimed(0), &answered(204));
        assert_eq!(
            (o.status, o.attempt_outcome),
            (DeliveryStatus::Delivered, AttemptOutcome::Success)
        );
        assert_eq!((o.attempt_count, o.next_retry_at), (1, t0()));
        assert_eq!((o.throttle_until, o.disable_reason), (None, None));
    }

    #[test]
    fn failures_follow_the_schedule_then_dead_letter() {
        let first = outcome_of(&claimed(0), &answered(500));
        assert_eq!(
            (first.status, first.attempt_outcome),
            (DeliveryStatus::Failed, AttemptOutcome::Failure)
        );
        assert_eq!(first.next_retry_at, t0() + chrono::Duration::seconds(10));
        assert_eq!(first.throttle_until, None);
        let second = outcome_of(&claimed(1), &answered(500));
        assert_eq!(second.next_retry_at, t0() + chrono::Duration::seconds(60));
        let last = outcome_of(&claimed(2), &answered(500));
        assert_eq!(
            (last.status, last.attempt_count),
            (DeliveryStatus::DeadLetter, 3)
        );
    }

    #[test]
    fn a_redriven_run_follows_the_schedule_from_its_start() {
        // Dead-lettered after 3 attempts, then redriven: 3 more attempts, counted from 3.
        let mut redriven = claimed(3);
        redriven.max_attempts = 6;
        redriven.schedule_offset = 3;
        let first = outcome_of(&redriven, &answered(500));
        assert_eq!(
            (first.status, first.attempt_count),
            (DeliveryStatus::Failed, 4)
        );
        assert_eq!(first.next_retry_at, t0() + chrono::Duration::seconds(10));
        redriven.attempt_count = 4;
        let second = outcome_of(&redriven, &answered(500));
        assert_eq!(second.next_retry_at, t0() + chrono::Duration::seconds(60));
        // A run longer than the schedule (one shortened since) keeps its last delay, never none.
        let mut long = claimed(5);
        long.max_attempts = 20;
        long.schedule_offset = 1;
        let past = outcome_of(&long, &answered(500));
        assert_eq!(past.next_retry_at, t0() + chrono::Duration::seconds(60));
    }

    #[test]
    fn the_failing_notice_counts_attempts_in_the_current_run() {
        let mut redriven = claimed(4);
        redriven.max_attempts = 6;
        redriven.schedule_offset = 3;
        // The second failure of the run (the fifth in all) is the notice's.
        let event = attempt_event(&outcome_of(&redriven, &answered(500)), 2).unwrap();
        assert_eq!(event.event_type, "message.attempt.failing");
        assert_eq!(
            event.event_id,
            format!("message.attempt.failing:{}:5", delivery())
        );
        redriven.attempt_count = 3;
        assert_eq!(
            attempt_event(&outcome_of(&redriven, &answered(500)), 2),
            None
        );
    }

    #[test]
    fn retry_after_is_believed_and_holds_the_endpoint() {
        let mut busy = answered(429);
        busy.retry_after = Some(120);
        let o = outcome_of(&claimed(0), &busy);
        assert_eq!(o.next_retry_at, t0() + chrono::Duration::seconds(120));
        assert_eq!(
            o.throttle_until,
            Some(t0() + chrono::Duration::seconds(120))
        );
        // A gateway error holds the endpoint back for the default throttle.
        let o = outcome_of(&claimed(0), &answered(502));
        assert_eq!(o.throttle_until, Some(t0() + chrono::Duration::seconds(5)));
    }

    #[test]
    fn a_timeout_is_its_own_outcome_and_slows_down() {
        let result = AttemptResult {
            status: None,
            body: None,
            error: Some("timed out".into()),
            timed_out: true,
            duration: Duration::from_secs(15),
            retry_after: None,
            request_headers: serde_json::json!({}),
        };
        let o = outcome_of(&claimed(0), &result);
        assert_eq!(
            (o.status, o.attempt_outcome),
            (DeliveryStatus::Failed, AttemptOutcome::Timeout)
        );
        assert!(o.throttle_until.is_some());
    }

    #[test]
    fn gone_disables_and_keeps_the_delivery_due() {
        let o = outcome_of(&claimed(2), &answered(410));
        assert_eq!((o.status, o.next_retry_at), (DeliveryStatus::Failed, t0()));
        assert_eq!(o.disable_reason.as_deref(), Some(GONE_REASON));
        let redirect = outcome_of(&claimed(0), &answered(302));
        assert_eq!(redirect.error.as_deref(), Some("redirect 302 not followed"));
    }

    #[test]
    fn endpoints_are_disabled_when_gone_or_failing_too_long_each_once() {
        let gone = outcome_of(&claimed(0), &answered(410));
        let mut other = outcome_of(&claimed(0), &answered(500));
        other.endpoint_id = endpoint(2);
        let health = [
            EndpointHealth {
                id: endpoint(1),
                failing_since: Some(t0() - chrono::Duration::hours(5)),
            },
            EndpointHealth {
                id: endpoint(2),
                failing_since: Some(t0() - chrono::Duration::hours(1)),
            },
            EndpointHealth {
                id: endpoint(3),
                failing_since: Some(t0() - chrono::Duration::minutes(59)),
            },
            // A success in the same batch ended its failing run.
            EndpointHealth {
                id: endpoint(4),
                failing_since: None,
            },
        ];
        let chosen = endpoints_to_disable(
            &[&gone, &gone, &other],
            &health,
            chrono::Duration::hours(1),
            t0(),
        );
        assert_eq!(
            chosen,
            [
                (endpoint(1), GONE_REASON.to_owned()),
                (
                    endpoint(2),
                    "failing with no success since 2029-12-31T23:00:00Z".to_owned()
                ),
            ]
        );
        // An endpoint already disabled is not in `health` and is left alone.
        assert!(endpoints_to_disable(&[&gone], &[], chrono::Duration::hours(1), t0()).is_empty());
    }

    #[test]
    fn attempt_events_on_the_failing_attempt_and_at_exhaustion() {
        assert_eq!(
            attempt_event(&outcome_of(&claimed(0), &answered(500)), 2),
            None
        );
        let failing = attempt_event(&outcome_of(&claimed(1), &answered(500)), 2).unwrap();
        assert_eq!(failing.event_type, "message.attempt.failing");
        assert_eq!(
            failing.event_id,
            format!("message.attempt.failing:{}:2", delivery())
        );
        assert_eq!(failing.tenant, acme());
        assert_eq!(
            failing.payload,
            serde_json::json!({
                "type": "message.attempt.failing",
                "data": {
                    "messageId": message(),
                    "endpointId": endpoint(1),
                    "eventType": "order.paid",
                    "attempts": 2,
                    "lastResponseStatus": 500,
                    "lastError": null,
                },
            })
        );
        let exhausted = attempt_event(&outcome_of(&claimed(2), &answered(500)), 2).unwrap();
        assert_eq!(
            (exhausted.event_type, exhausted.event_id),
            (
                "message.attempt.exhausted",
                format!("message.attempt.exhausted:{}:3", delivery())
            )
        );
        assert_eq!(
            attempt_event(&outcome_of(&claimed(1), &answered(200)), 2),
            None
        );
    }

    #[test]
    fn no_event_about_an_operational_event() {
        let mut event_delivery = claimed(2);
        event_delivery.event_type = "message.attempt.exhausted".into();
        assert_eq!(
            attempt_event(&outcome_of(&event_delivery, &answered(500)), 2),
            None
        );
        assert!(is_operational("endpoint.disabled"));
        assert!(!is_operational("order.paid"));
    }

    #[test]
    fn endpoint_disabled_event_names_the_endpoint_and_reason() {
        let disabled = DisabledEndpoint {
            id: endpoint(1),
            tenant: acme(),
            url: "https://example.com/hook".into(),
            reason: GONE_REASON.into(),
        };
        let event = endpoint_disabled(&disabled, t0());
        assert_eq!(
            event.event_id,
            format!(
                "endpoint.disabled:{}:{}",
                endpoint(1),
                t0().timestamp_millis()
            )
        );
        assert_eq!(event.payload["data"]["reason"], GONE_REASON);
        assert_eq!(event.payload["data"]["disabledAt"], "2030-01-01T00:00:00Z");
        let message = event.message();
        assert_eq!(
            (message.event_type.as_str(), message.tenant.as_str()),
            ("endpoint.disabled", "acme")
        );
        let all = operational_events(
            &[disabled],
            &[&outcome_of(&claimed(2), &answered(500))],
            2,
            t0(),
        );
        let types: Vec<_> = all.iter().map(|e| e.event_type).collect();
        assert_eq!(types, ["endpoint.disabled", "message.attempt.exhausted"]);
    }
}
