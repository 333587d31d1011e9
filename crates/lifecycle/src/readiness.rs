//! Readiness: can this replica serve right now, and what is degraded?
//!
//! Each component (database, redis, a gRPC peer, the loaded model) is a named check run on demand,
//! all at once and each within a time limit, so a hung dependency makes `/ready` answer "down"
//! quickly instead of hanging the probe. Nothing is cached: when a dependency comes back, the next
//! probe sees it.
//!
//! A component is either **required** (the replica cannot serve anything without it: take it out
//! of the load balancer) or a **degradation** (only some requests need it; they get a 503 with
//! `Retry-After` while the rest are served). Only required components make a replica not ready. A
//! dependency shared by every replica (Redis, a peer service) must not be required, or its outage
//! would take every replica out at once and refuse even the requests that never needed it.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

struct Component {
    name: String,
    required: bool,
    check: Check,
}

/// The set of readiness checks of one service. Cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<Vec<Component>>,
    draining: Arc<AtomicBool>,
    timeout: Duration,
    up: prometheus::IntGaugeVec,
    /// The last report made (by a probe, a scrape or the gRPC health loop), for `/health`,
    /// which must answer at once whatever the dependencies do.
    last: Arc<std::sync::Mutex<Option<ReadinessReport>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field(
                "components",
                &self.checks.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`Readiness`].
pub struct ReadinessBuilder {
    checks: Vec<Component>,
    timeout: Duration,
}

impl ReadinessBuilder {
    fn component<F, Fut, E>(mut self, name: impl Into<String>, required: bool, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let check: Check = Arc::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        self.checks.push(Component {
            name: name.into(),
            required,
            check,
        });
        self
    }

    /// Adds a required component: while its check fails, the replica is not ready. The error
    /// text is shown on `/ready`, so it must not hold secrets.
    pub fn check<F, Fut, E>(self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.component(name, true, check)
    }

    /// Adds a component whose absence degrades the service without making it unready: only the
    /// requests that need it are refused (503 with `Retry-After`).
    pub fn degraded_without<F, Fut, E>(self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.component(name, false, check)
    }

    /// How long one check may take before it counts as down (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn build(self) -> Readiness {
        let up = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "dependency_up",
                "1 when the component's last readiness check succeeded, 0 when it failed.",
            ),
            &["component", "required"],
        )
        .expect("valid metric");
        Readiness {
            checks: Arc::new(self.checks),
            draining: Arc::new(AtomicBool::new(false)),
            timeout: self.timeout,
            up,
            last: Arc::default(),
        }
    }
}

/// The state of one component.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ComponentReport {
    /// `up` or `down`.
    pub status: &'static str,
    /// Whether the replica is unready while this component is down (otherwise it is degraded).
    pub required: bool,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `/ready` answers.
#[derive(Debug, Clone, Serialize)]
pub struct ReadinessReport {
    /// `ready`, `degraded` (serving, but a component some requests need is down), `not_ready`
    /// (a required component is down) or `draining` (shutting down).
    pub status: &'static str,
    pub components: BTreeMap<String, ComponentReport>,
}

impl ReadinessReport {
    /// Whether the replica should receive traffic: ready or degraded.
    pub fn is_ready(&self) -> bool {
        matches!(self.status, "ready" | "degraded")
    }
}

impl Readiness {
    pub fn builder() -> ReadinessBuilder {
        ReadinessBuilder {
            checks: Vec::new(),
            timeout: Duration::from_secs(2),
        }
    }

    /// From now on the service reports itself not ready, so load balancers stop sending it work
    /// while it drains.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// `dependency_up{component,required}`, kept current by every report; register it in the
    /// service's registry.
    pub fn gauge(&self) -> prometheus::IntGaugeVec {
        self.up.clone()
    }

    /// Runs every check concurrently, each within the time limit.
    pub async fn report(&self) -> ReadinessReport {
        let timeout = self.timeout;
        let results = futures::future::join_all(self.checks.iter().map(|component| {
            let (name, required) = (&component.name, component.required);
            let fut = (component.check)();
            async move {
                let started = Instant::now();
                let outcome = match tokio::time::timeout(timeout, fut).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let report = match outcome {
                    Ok(()) => ComponentReport {
                        status: "up",
                        required,
                        latency_ms,
                        error: None,
                    },
                    Err(error) => ComponentReport {
                        status: "down",
                        required,
                        latency_ms,
                        error: Some(error),
                    },
                };
                (name.clone(), report)
            }
        }))
        .await;
        let components: BTreeMap<_, _> = results.into_iter().collect();
        for (name, component) in &components {
            let required = if component.required { "true" } else { "false" };
            self.up
                .with_label_values(&[name.as_str(), required])
                .set(i64::from(component.status == "up"));
        }
        let down = |required: bool| {
            components
                .values()
                .any(|c| c.required == required && c.status == "down")
        };
        let status = if self.is_draining() {
            "draining"
        } else if down(true) {
            "not_ready"
        } else if down(false) {
            "degraded"
        } else {
            "ready"
        };
        let report = ReadinessReport { status, components };
        *self.last.lock().expect("not poisoned") = Some(report.clone());
        report
    }

    /// The last report made, without checking anything now; `None` before the first.
    pub fn last_report(&self) -> Option<ReadinessReport> {
        self.last.lock().expect("not poisoned").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_degradation_keeps_the_replica_ready() {
        let readiness = Readiness::builder()
            .check("database", || async { Ok::<_, String>(()) })
            .degraded_without("redis", || async { Err::<(), _>("connection refused") })
            .build();
        let report = readiness.report().await;
        assert_eq!(report.status, "degraded");
        assert!(report.is_ready());
        assert!(!report.components["redis"].required);
        let text = {
            let registry = prometheus::Registry::new();
            registry.register(Box::new(readiness.gauge())).unwrap();
            prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .unwrap()
        };
        assert!(
            text.contains("dependency_up{component=\"redis\",required=\"false\"} 0"),
            "{text}"
        );
        let broken = Readiness::builder()
            .check("database", || async { Err::<(), _>("down") })
            .degraded_without("redis", || async { Ok::<_, String>(()) })
            .build();
        assert!(!broken.report().await.is_ready());
    }

    #[tokio::test]
    async fn reports_each_component_and_times_out_hung_ones() {
        let readiness = Readiness::builder()
            .timeout(Duration::from_millis(50))
            .check("fine", || async { Ok::<_, String>(()) })
            .check("broken", || async { Err::<(), _>("connection refused") })
            .check("hung", || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, String>(())
            })
            .build();
        let report = readiness.report().await;
        assert_eq!(report.status, "not_ready");
        assert_eq!(report.components["fine"].status, "up");
        assert_eq!(
            report.components["broken"].error.as_deref(),
            Some("connection refused")
        );
        assert_eq!(report.components["hung"].status, "down");
    }

    #[tokio::test]
    async fn draining_is_not_ready() {
        let readiness = Readiness::builder().build();
        assert!(readiness.report().await.is_ready());
        readiness.set_draining();
        assert_eq!(readiness.report().await.status, "draining");
    }
}
