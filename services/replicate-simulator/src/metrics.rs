//! What the simulator did, on `/metrics`, so that a benchmark or a misbehaving test can see
//! how many predictions finished how, and what became of their webhooks and downloads. Every
//! label value is one of a few fixed words.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct SimulatorMetrics {
    created: IntCounter,
    finished: IntCounterVec,
    webhooks: IntCounterVec,
    downloads: IntCounterVec,
}

impl SimulatorMetrics {
    pub fn register(registry: &Registry) -> Self {
        let created = IntCounter::new(
            "simulator_predictions_created_total",
            "Predictions created.",
        )
        .expect("valid metric");
        let finished = IntCounterVec::new(
            Opts::new(
                "simulator_predictions_finished_total",
                "Predictions finished, by status.",
            ),
            &["status"],
        )
        .expect("valid metric");
        let webhooks = IntCounterVec::new(
            Opts::new(
                "simulator_webhook_attempts_total",
                "Webhook attempts by outcome (delivered, refused, failed), and webhooks lost on \
                 purpose (lost) or given up (gave_up).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let downloads = IntCounterVec::new(
            Opts::new(
                "simulator_downloads_total",
                "Output file downloads, served whole or broken on purpose.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(created.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(finished.clone()),
            Box::new(webhooks.clone()),
            Box::new(downloads.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        Self {
            created,
            finished,
            webhooks,
            downloads,
        }
    }

    pub fn created(&self) {
        self.created.inc();
    }

    /// `status` is the prediction status's wire name.
    pub fn finished(&self, status: &'static str) {
        self.finished.with_label_values(&[status]).inc();
    }

    pub fn webhook(&self, outcome: &'static str) {
        self.webhooks.with_label_values(&[outcome]).inc();
    }

    pub fn download(&self, outcome: &'static str) {
        self.downloads.with_label_values(&[outcome]).inc();
    }
}
