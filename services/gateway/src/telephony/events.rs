//! Call events to partners: `call.started`, `call.dtmf`, `call.utterance.played` and
//! `call.completed`, published to delivery-worker (`Publish`, as the gateway itself, naming the
//! number's tenant), which signs and delivers them to every subscribed endpoint.
//!
//! Calls live in a replica's memory and change no table, so there is no transaction for an
//! outbox row to join: events are handed over by one task per replica, in the order they
//! happened, each under an event id made once (`evt_…`) and kept across retries, so a retry after
//! a lost answer is a duplicate delivery-worker ignores. delivery-worker away: each event is
//! retried with backoff for [`RETRY_FOR`], then dropped with a log line; at most [`QUEUE`]
//! events wait (beyond, new ones are dropped and logged) so a long outage cannot grow memory.

use std::time::Duration;

use ids::Tenant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::webhooks::Client;

/// Events waiting to be published, at most.
pub const QUEUE: usize = 4096;
/// How long one event is retried.
pub const RETRY_FOR: Duration = Duration::from_secs(120);

/// One event for a tenant's partners.
#[derive(Debug, Clone)]
pub struct CallEvent {
    pub tenant: Tenant,
    pub event_type: &'static str,
    pub payload: serde_json::Value,
}

/// The sending end; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Queued>,
}

impl Events {
    pub fn spawn(client: Client, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(client, rx, shutdown));
        Self { tx }
    }

    /// Queues `event` under a fresh event id, with the current span's trace.
    pub fn publish(&self, event: CallEvent) {
        let queued = Queued {
            event_id: ids::EventId::new().to_string(),
            traceparent: telemetry::propagation::current_traceparent().unwrap_or_default(),
            event,
        };
        if let Err(error) = self.tx.try_send(queued) {
            tracing::warn!(%error, "the call event queue is full; an event was dropped");
        }
    }
}

async fn run(client: Client, mut rx: mpsc::Receiver<Queued>, shutdown: CancellationToken) {
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            // Events already queued still go out during the drain.
            () = shutdown.cancelled() => match rx.try_recv() {
                Ok(next) => Some(next),
                Err(_) => return,
            },
        };
        let Some(queued) = next else {
            return;
        };
        publish(&client, &queued).await;
    }
}

/// An event waiting to be published: its id and the trace it belongs to.
struct Queued {
    event_id: String,
    traceparent: String,
    event: CallEvent,
}

async fn publish(client: &Client, queued: &Queued) {
    let Queued {
        event_id,
        traceparent,
        event,
    } = queued;
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let request = sonora_proto::delivery::v1::PublishRequest {
            tenant: event.tenant.to_string(),
            event_id: event_id.clone(),
            event_type: event.event_type.to_owned(),
            payload_json: event.payload.to_string(),
            channels: Vec::new(),
            traceparent: traceparent.clone(),
        };
        match client.clone().publish(request).await {
            Ok(_) => return,
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::error!(code = ?status.code(), message = status.message(), event_type = event.event_type, "delivery-worker refused a call event");
                return;
            }
            Err(status) if started.elapsed() > RETRY_FOR => {
                tracing::error!(code = ?status.code(), event_type = event.event_type, %event_id, "a call event could not be published and is dropped");
                return;
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
