//! Faults on a schedule, in two lanes that run side by side: processes and infrastructure
//! (`kill -9` of each service in turn, PostgreSQL restarted, Redis stopped), and the outside
//! world (the simulator dropping and duplicating webhooks and failing downloads, partners failing
//! and timing out, a network link cut). Each fault is kept with its window, so a failed request
//! can be explained by the fault it overlapped, and with the time the system took to recover.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use replicate_simulator::settings::Rate;
use test_support::receiver::Behavior;

use crate::{
    services::{Instance, Service},
    stack::{CHURN_PATHS, STEADY_PATHS, Stack},
    traffic::{Kind, Record},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then started again after `down`.
    Kill(Instance, Duration),
    /// `pg_ctl restart -m fast`.
    PostgresRestart,
    /// Redis killed, started again (empty) after the duration.
    RedisStop(Duration),
    /// The simulator loses a third of its webhooks, sends the others twice, and fails every
    /// file's first two downloads, for the duration.
    SimulatorMisbehaves(Duration),
    /// Partner endpoints answer 503 for the first half of the duration, then stall past the
    /// delivery timeout for the second.
    PartnersFail(Duration),
    /// gateway → tts-inference and webhook-ingest → audio-generation cut (the TCP proxy),
    /// restored after the duration.
    NetworkCut(Duration),
}

impl Fault {
    pub fn describe(&self) -> String {
        match self {
            Self::Kill(i, down) => format!("kill -9 {i}, restarted after {}s", down.as_secs()),
            Self::PostgresRestart => "PostgreSQL restart".into(),
            Self::RedisStop(d) => format!("Redis stopped {}s", d.as_secs()),
            Self::SimulatorMisbehaves(d) => format!(
                "simulator loses, duplicates webhooks, fails downloads {}s",
                d.as_secs()
            ),
            Self::PartnersFail(d) => {
                format!("partners answer 503, then time out, {}s", d.as_secs())
            }
            Self::NetworkCut(d) => {
                format!("network cut gateway→tts, ingest→audio {}s", d.as_secs())
            }
        }
    }

    /// Whether a failed request could be this fault's doing.
    pub fn explains(&self, record: &Record) -> bool {
        match self {
            Self::Kill(instance, _) => {
                let direct = match instance.service {
                    Service::Gateway | Service::WebhookIngest => record.target == *instance,
                    Service::TtsInference => record.kind.is_speech(),
                    Service::AudioGeneration => record.kind.is_job(),
                    // The gateway reaches the first replica of each for endpoints and sources.
                    Service::DeliveryWorker => {
                        instance.replica == 1
                            && matches!(record.kind, Kind::EndpointChange | Kind::EndpointRotation)
                    }
                };
                // Source rotations go to webhook-ingest's first replica, and so does an
                // endpoint change: the gateway asks it whether the inbound sources the endpoint
                // subscribes to exist.
                direct
                    || (instance.service == Service::WebhookIngest
                        && instance.replica == 1
                        && matches!(record.kind, Kind::SourceRotation | Kind::EndpointChange))
            }
            Self::PostgresRestart | Self::RedisStop(_) => true,
            Self::NetworkCut(_) => record.kind.is_speech(),
            Self::SimulatorMisbehaves(_) | Self::PartnersFail(_) => false,
        }
    }
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct FaultWindow {
    pub fault: Fault,
    /// From the start of the traffic.
    pub start: Duration,
    /// When the fault was lifted (the process started again, the link restored).
    pub lifted: Duration,
    /// From lifting until every instance answered `/ready` 200 again.
    pub recovery: Option<Duration>,
    pub error: Option<String>,
}

/// Failures this long after a fault's recovery are still put down to it: a client's request
/// started during the fault may end after it, and connection pools notice a restart late.
pub const GRACE: Duration = Duration::from_secs(5);

impl FaultWindow {
    pub fn covers(&self, record: &Record) -> bool {
        let end = self.lifted + self.recovery.unwrap_or(Duration::from_secs(60)) + GRACE;
        record.end >= self.start && record.start <= end && self.fault.explains(record)
    }
}

pub struct Lane {
    pub faults: Vec<Fault>,
}

/// The schedule: lane A (processes and infrastructure) and lane B (the outside world), spread
/// over the traffic's duration; `short` is the quick run of `scripts/test`.
pub fn schedule(short: bool, duration: Duration) -> (Lane, Lane) {
    let kill = |service, replica, secs| {
        Fault::Kill(Instance { service, replica }, Duration::from_secs(secs))
    };
    if short {
        (
            Lane {
                faults: vec![
                    kill(Service::TtsInference, 1, 3),
                    kill(Service::WebhookIngest, 1, 3),
                    Fault::PostgresRestart,
                    kill(Service::Gateway, 1, 3),
                    kill(Service::DeliveryWorker, 1, 3),
                    Fault::RedisStop(Duration::from_secs(8)),
                    kill(Service::AudioGeneration, 1, 3),
                ],
            },
            Lane {
                faults: vec![
                    Fault::SimulatorMisbehaves(Duration::from_secs(15)),
                    Fault::PartnersFail(Duration::from_secs(12)),
                    Fault::NetworkCut(Duration::from_secs(5)),
                ],
            },
        )
    } else {
        let mut a = Vec::new();
        let mut b = Vec::new();
        // Repeat the cycle for as long as the run lasts (each round takes about four minutes).
        let rounds = (duration.as_secs() / 240).max(1);
        for _ in 0..rounds {
            a.extend([
                kill(Service::TtsInference, 1, 5),
                kill(Service::WebhookIngest, 1, 5),
                kill(Service::Gateway, 1, 5),
                Fault::PostgresRestart,
                kill(Service::DeliveryWorker, 1, 5),
                kill(Service::AudioGeneration, 1, 5),
                Fault::RedisStop(Duration::from_secs(30)),
                kill(Service::Gateway, 2, 5),
                kill(Service::WebhookIngest, 2, 5),
                kill(Service::DeliveryWorker, 2, 5),
            ]);
            b.extend([
                Fault::SimulatorMisbehaves(Duration::from_secs(40)),
                Fault::PartnersFail(Duration::from_secs(40)),
                Fault::NetworkCut(Duration::from_secs(10)),
            ]);
        }
        (Lane { faults: a }, Lane { faults: b })
    }
}

/// Runs a lane: each fault at its slot (`first` after the start, then evenly until `last`),
/// one after the other; returns when all are done.
pub async fn run_lane(
    stack: Arc<Stack>,
    lane: Lane,
    started: Instant,
    first: Duration,
    last: Duration,
    windows: Arc<Mutex<Vec<FaultWindow>>>,
) {
    let n = lane.faults.len().max(1) as u32;
    let slot = last.saturating_sub(first) / n;
    for (i, fault) in lane.faults.into_iter().enumerate() {
        let at = started + first + slot * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let start = started.elapsed();
        eprintln!("chaos: {:>6.1}s  {}", start.as_secs_f64(), fault.describe());
        let result = inject(&stack, fault).await;
        let lifted = started.elapsed();
        let (recovery, error) = match result {
            Ok(()) => match all_ready(&stack, Duration::from_secs(120)).await {
                Ok(took) => (Some(took), None),
                Err(e) => (None, Some(e.to_string())),
            },
            Err(e) => (None, Some(e.to_string())),
        };
        if let Some(error) = &error {
            eprintln!("chaos: fault {} went wrong: {error}", fault.describe());
        }
        windows.lock().expect("not poisoned").push(FaultWindow {
            fault,
            start,
            lifted,
            recovery,
            error,
        });
    }
}

async fn inject(stack: &Stack, fault: Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Kill(instance, down) => {
            stack.processes.kill9(instance);
            tokio::time::sleep(down).await;
            stack.processes.start(instance)?;
        }
        Fault::PostgresRestart => {
            let took = tokio::task::block_in_place(|| stack.pg.restart())?;
            eprintln!(
                "chaos:         PostgreSQL was away {:.1}s",
                took.as_secs_f64()
            );
        }
        Fault::RedisStop(d) => {
            stack.redis.lock().await.down();
            tokio::time::sleep(d).await;
            let mut redis = stack.redis.lock().await;
            tokio::task::block_in_place(|| redis.up())?;
        }
        Fault::SimulatorMisbehaves(d) => {
            stack.simulator_knobs.update(|k| {
                k.lost_webhook_rate = Rate::of(0.3);
                k.duplicate_webhooks = true;
                k.download_failures = 2;
            });
            tokio::time::sleep(d).await;
            restore_simulator(stack);
        }
        Fault::PartnersFail(d) => {
            set_partners(stack, Behavior::status(503));
            tokio::time::sleep(d / 2).await;
            set_partners(
                stack,
                Behavior {
                    status: 200,
                    delay: Duration::from_secs(5),
                    retry_after: None,
                },
            );
            tokio::time::sleep(d / 2).await;
            set_partners(stack, Behavior::status(200));
        }
        Fault::NetworkCut(d) => {
            stack.tts_link.cut();
            stack.audio_link.cut();
            tokio::time::sleep(d).await;
            stack.tts_link.restore();
            stack.audio_link.restore();
        }
    }
    Ok(())
}

pub fn restore_simulator(stack: &Stack) {
    stack.simulator_knobs.update(|k| {
        k.lost_webhook_rate = Rate::NEVER;
        k.duplicate_webhooks = false;
        k.download_failures = 0;
    });
}

pub fn set_partners(stack: &Stack, behavior: Behavior) {
    for path in STEADY_PATHS.iter().chain(CHURN_PATHS.iter()) {
        stack.receiver.set(path, behavior.clone());
    }
}

/// Waits until every instance answers `/ready` 200; returns how long that took.
pub async fn all_ready(stack: &Stack, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for instance in stack.processes.instances() {
        let left = limit.saturating_sub(started.elapsed());
        stack
            .processes
            .wait_ready(&stack.client, instance, left)
            .await?;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{Outcome, Record};

    fn record(kind: Kind, target: Instance, start: u64, end: u64) -> Record {
        Record {
            kind,
            target,
            start: Duration::from_secs(start),
            end: Duration::from_secs(end),
            status: Some(502),
            outcome: Outcome::Failed,
            detail: String::new(),
        }
    }

    const GATEWAY_1: Instance = Instance {
        service: Service::Gateway,
        replica: 1,
    };
    const GATEWAY_2: Instance = Instance {
        service: Service::Gateway,
        replica: 2,
    };

    #[test]
    fn a_window_explains_only_what_its_fault_can_cause_while_it_lasts() {
        let tts_killed = FaultWindow {
            fault: Fault::Kill(
                Instance {
                    service: Service::TtsInference,
                    replica: 1,
                },
                Duration::from_secs(3),
            ),
            start: Duration::from_secs(10),
            lifted: Duration::from_secs(13),
            recovery: Some(Duration::from_secs(2)),
            error: None,
        };
        // Speech during the fault, or ending in it, or within the grace after recovery.
        assert!(tts_killed.covers(&record(Kind::Tts, GATEWAY_1, 11, 12)));
        assert!(tts_killed.covers(&record(Kind::OpenAi, GATEWAY_2, 5, 10)));
        assert!(tts_killed.covers(&record(Kind::TtsStream, GATEWAY_2, 19, 20)));
        // Not after the grace, not before the fault, not another kind of request.
        assert!(!tts_killed.covers(&record(Kind::Tts, GATEWAY_1, 21, 22)));
        assert!(!tts_killed.covers(&record(Kind::Tts, GATEWAY_1, 5, 9)));
        assert!(!tts_killed.covers(&record(Kind::SoundEffect, GATEWAY_1, 11, 12)));

        let gateway_killed = FaultWindow {
            fault: Fault::Kill(GATEWAY_1, Duration::from_secs(3)),
            ..tts_killed.clone()
        };
        assert!(gateway_killed.covers(&record(Kind::Music, GATEWAY_1, 11, 11)));
        assert!(
            !gateway_killed.covers(&record(Kind::Music, GATEWAY_2, 11, 11)),
            "the other replica was up"
        );

        let partners = FaultWindow {
            fault: Fault::PartnersFail(Duration::from_secs(10)),
            ..tts_killed
        };
        assert!(
            !partners.covers(&record(Kind::GitHub, GATEWAY_1, 11, 11)),
            "partners failing is invisible to clients"
        );
    }

    #[test]
    fn the_short_schedule_has_every_kind_of_fault_once() {
        let (a, b) = schedule(true, Duration::from_secs(90));
        let killed: Vec<Service> = a
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Kill(i, _) => Some(i.service),
                _ => None,
            })
            .collect();
        for service in Service::ALL {
            assert_eq!(
                killed.iter().filter(|s| **s == service).count(),
                1,
                "{service:?}"
            );
        }
        assert!(a.faults.contains(&Fault::PostgresRestart));
        assert!(a.faults.iter().any(|f| matches!(f, Fault::RedisStop(_))));
        assert_eq!(b.faults.len(), 3);
        let (long_a, _) = schedule(false, Duration::from_secs(600));
        assert!(long_a.faults.len() > a.faults.len());
    }
}
