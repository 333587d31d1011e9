//! The delivery metrics on `/metrics`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
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
