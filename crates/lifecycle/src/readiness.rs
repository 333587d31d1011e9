//! Readiness: is every dependency this service needs reachable right now?
//!
//! Each component (database, redis, a gRPC peer, the loaded model) is a named check run on demand,
//! all at once and each within a time limit, so a hung dependency makes `/ready` answer "down"
//! quickly instead of hanging the probe. Nothing is cached: when a dependency comes back, the next
//! probe sees it.

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

/// The set of readiness checks of one service. Cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<Vec<(String, Check)>>,
    draining: Arc<AtomicBool>,
    timeout: Duration,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field(
                "components",
                &self.checks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`Readiness`].
pub struct ReadinessBuilder {
    checks: Vec<(String, Check)>,
    timeout: Duration,
}

impl ReadinessBuilder {
    /// Adds a component whose check succeeds when the dependency is usable. The error text is
    /// shown on `/ready`, so it must not hold secrets.
    pub fn check<F, Fut, E>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let check: Check = Arc::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        self.checks.push((name.into(), check));
        self
    }

    /// How long one check may take before it counts as down (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn build(self) -> Readiness {
        Readiness {
            checks: Arc::new(self.checks),
            draining: Arc::new(AtomicBool::new(false)),
            timeout: self.timeout,
        }
    }
}

/// The state of one component.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ComponentReport {
    /// `up` or `down`.
    pub status: &'static str,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `/ready` answers.
#[derive(Debug, Clone, Serialize)]
pub struct ReadinessReport {
    /// `ready`, `not_ready` (a component is down) or `draining` (shutting down).
    pub status: &'static str,
    pub components: BTreeMap<String, ComponentReport>,
}

impl ReadinessReport {
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
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

    /// Runs every check concurrently, each within the time limit.
    pub async fn report(&self) -> ReadinessReport {
        let timeout = self.timeout;
        let results = futures::future::join_all(self.checks.iter().map(|(name, check)| {
            let fut = check();
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
                        latency_ms,
                        error: None,
                    },
                    Err(error) => ComponentReport {
                        status: "down",
                        latency_ms,
                        error: Some(error),
                    },
                };
                (name.clone(), report)
            }
        }))
        .await;
        let components: BTreeMap<_, _> = results.into_iter().collect();
        let status = if self.is_draining() {
            "draining"
        } else if components.values().all(|c| c.status == "up") {
            "ready"
        } else {
            "not_ready"
        };
        ReadinessReport { status, components }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
