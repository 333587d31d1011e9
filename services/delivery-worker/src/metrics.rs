//! The delivery metrics on `/metrics`.
//!
//! `webhooks_delivered_total{tenant,endpoint}` has a series per endpoint, which operators rely
//! on. Its label values are typed (a tenant slug and an endpoint id, from the claimed row), so
//! nothing a client writes becomes a label; and the series of deleted endpoints are dropped
//! ([`DeliveryMetrics::delivered_endpoints`], [`DeliveryMetrics::forget_deleted`]), so the
//! series follow the endpoints that exist instead of growing for as long as the process runs.

use std::collections::HashMap;

use ids::{EndpointId, Tenant};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    core::Collector as _,
};

use crate::{model::DeliveryStatus, store::Outcome};

#[derive(Clone)]
pub struct DeliveryMetrics {
    delivered: IntCounterVec,
    attempts: IntCounterVec,
    dead_letters: IntCounter,
    latency: Histogram,
    pub queue_size: IntGaugeVec,
}

impl DeliveryMetrics {
    pub fn register(registry: &Registry) -> Self {
        let delivered = IntCounterVec::new(
            Opts::new(
                "webhooks_delivered_total",
                "Webhooks delivered (2xx), by tenant and endpoint.",
            ),
            &["tenant", "endpoint"],
        )
        .expect("valid metric");
        let attempts = IntCounterVec::new(
            Opts::new("webhook_attempts_total", "Delivery attempts, by outcome."),
            &["outcome"],
        )
        .expect("valid metric");
        let dead_letters = IntCounter::new(
            "webhook_dead_letters_total",
            "Deliveries that used their last attempt without success.",
        )
        .expect("valid metric");
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "webhook_delivery_latency_seconds",
                "From enqueue to the first successful attempt.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0, 36000.0,
            ]),
        )
        .expect("valid metric");
        let queue_size = IntGaugeVec::new(
            Opts::new("webhook_queue_size", "Deliveries in the queue, by status."),
            &["status"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(delivered.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(attempts.clone()),
            Box::new(dead_letters.clone()),
            Box::new(latency.clone()),
            Box::new(queue_size.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        Self {
            delivered,
            attempts,
            dead_letters,
            latency,
            queue_size,
        }
    }

    /// The (tenant, endpoint) label values of every `webhooks_delivered_total` series.
    pub fn delivered_series(&self) -> Vec<(String, String)> {
        self.delivered
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|metric| {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|pair| pair.name() == name)
                        .map(|pair| pair.value().to_owned())
                        .unwrap_or_default()
                };
                (label("tenant"), label("endpoint"))
            })
            .collect()
    }

    /// The endpoints `webhooks_delivered_total` has series for, to ask the store which exist.
    pub fn delivered_endpoints(&self) -> Vec<EndpointId> {
        self.delivered_series()
            .iter()
            .filter_map(|(_, endpoint)| EndpointId::parse(endpoint).ok())
            .collect()
    }

    /// Drops the `webhooks_delivered_total` series of every endpoint not in `existing` (the
    /// endpoints that still exist, with their tenants), and any series whose labels are not an
    /// endpoint of that tenant. Returns how many were dropped.
    pub fn forget_deleted(&self, existing: &HashMap<EndpointId, Tenant>) -> usize {
        let mut dropped = 0;
        for (tenant, endpoint) in self.delivered_series() {
            let live = EndpointId::parse(&endpoint)
                .ok()
                .and_then(|id| existing.get(&id))
                .is_some_and(|owner| owner.as_str() == tenant);
            if !live
                && self
                    .delivered
                    .remove_label_values(&[tenant.as_str(), endpoint.as_str()])
                    .is_ok()
            {
                dropped += 1;
            }
        }
        dropped
    }

    /// Counts one recorded outcome.
    pub fn observe(&self, outcome: &Outcome) {
        self.attempts
            .with_label_values(&[outcome.attempt_outcome.as_str()])
            .inc();
        match outcome.status {
            DeliveryStatus::Delivered => {
                self.delivered
                    .with_label_values(&[
                        outcome.tenant.as_str(),
                        outcome.endpoint_id.to_string().as_str(),
                    ])
                    .inc();
                let waited = (outcome.attempted_at - outcome.enqueued_at).num_milliseconds();
                self.latency.observe(waited.max(0) as f64 / 1000.0);
            }
            DeliveryStatus::DeadLetter => self.dead_letters.inc(),
            DeliveryStatus::Pending | DeliveryStatus::Failed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_of_deleted_endpoints_are_forgotten() {
        let metrics = DeliveryMetrics::register(&Registry::new());
        let (kept, deleted, moved) = (EndpointId::new(), EndpointId::new(), EndpointId::new());
        let acme = Tenant::parse("acme").unwrap();
        for (tenant, endpoint) in [("acme", kept), ("acme", deleted), ("beta", moved)] {
            metrics
                .delivered
                .with_label_values(&[tenant, endpoint.to_string().as_str()])
                .inc();
        }
        // A label that is no endpoint id at all goes too.
        metrics.delivered.with_label_values(&["acme", "junk"]).inc();
        let mut labelled = metrics.delivered_endpoints();
        labelled.sort();
        let mut expected = vec![kept, deleted, moved];
        expected.sort();
        assert_eq!(labelled, expected);

        // `moved` exists, but not for the tenant its series names.
        let existing = HashMap::from([(kept, acme.clone()), (moved, acme)]);
        assert_eq!(metrics.forget_deleted(&existing), 3);
        assert_eq!(
            metrics.delivered_series(),
            [("acme".to_owned(), kept.to_string())]
        );
        assert_eq!(metrics.forget_deleted(&existing), 0);
    }
}
