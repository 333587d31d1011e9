//! The delivery loop: claim due rows in batches, send them concurrently within global and
//! per-endpoint limits, decide each outcome, and record the outcomes in batches.
//!
//! The worker wakes on `LISTEN delivery_queue` (publishers `NOTIFY` on commit) and polls every
//! `WORKER_POLL_INTERVAL` as a backstop. Its limits come from a watch channel, so SIGHUP can change
//! them while it runs. On shutdown it stops claiming, lets in-flight deliveries finish within the
//! grace period, and records them; rows it could not finish keep their lease and come back to some
//! worker when the lease expires.
//!
//! Leases are short (`WORKER_LEASE`, 15 s by default) so that a killed worker's rows come back
//! soon, and a heartbeat keeps a live worker's rows: every third of the lease, one `UPDATE`
//! extends the lease of every row this instance holds, from its claim until its outcome is
//! recorded. A delivery slower than the lease is therefore never sent twice by a live worker.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ids::{DeliveryId, EndpointId};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;
use webhook_signature::SigningKey;

use crate::{
    clock::Clock,
    metrics::DeliveryMetrics,
    rules::{Policy, chrono, decide},
    sender::Sender,
    store::{Claimed, Outcome, QUEUE_CHANNEL, Store},
};

/// The limits SIGHUP may change while the worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub batch_size: usize,
    pub poll_interval: Duration,
    pub max_concurrent: usize,
    pub per_endpoint: usize,
}

/// A random number in [0, 1) for retry jitter.
fn unit_random() -> f64 {
    let bytes: [u8; 8] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .map(|r| r.expose())
        .unwrap_or([0x80, 0, 0, 0, 0, 0, 0, 0]);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The rows this instance holds, from their claim until their outcome is recorded (or given up),
/// with the claim that holds each: what the heartbeat renews.
#[derive(Default)]
struct Held {
    rows: Mutex<HashMap<DeliveryId, Uuid>>,
}

impl Held {
    fn hold(&self, claim_id: Uuid, rows: &[Claimed]) {
        let mut held = self.rows.lock().expect("not poisoned");
        held.extend(rows.iter().map(|c| (c.id, claim_id)));
    }

    fn release(&self, rows: impl IntoIterator<Item = DeliveryId>) {
        let mut held = self.rows.lock().expect("not poisoned");
        for id in rows {
            held.remove(&id);
        }
    }

    fn snapshot(&self) -> Vec<(DeliveryId, Uuid)> {
        let held = self.rows.lock().expect("not poisoned");
        held.iter().map(|(id, claim)| (*id, *claim)).collect()
    }
}

/// A delivery task's hold on its row. Once the outcome reaches the recorder, the recorder
/// releases the row when it is recorded; a task that ends before that (aborted after the
/// grace period, or panicking) releases it here, so the heartbeat stops renewing a lease no one
/// will ever finish with and the row comes back to the queue when the lease expires.
struct Holding {
    worker: Arc<Worker>,
    id: DeliveryId,
    handed_over: bool,
}

impl Drop for Holding {
    fn drop(&mut self) {
        if !self.handed_over {
            self.worker.held.release([self.id]);
        }
    }
}

/// Per-endpoint concurrency and rate limits, local to this worker instance.
#[derive(Default)]
struct EndpointGates {
    gates: Mutex<HashMap<EndpointId, Arc<Gate>>>,
}

struct Gate {
    concurrency: Arc<Semaphore>,
    /// The earliest moment the next request may start, for `rate_limit_per_second`.
    next_slot: tokio::sync::Mutex<tokio::time::Instant>,
}

impl EndpointGates {
    fn gate(&self, endpoint: EndpointId, per_endpoint: usize) -> Arc<Gate> {
        let mut gates = self.gates.lock().expect("not poisoned");
        Arc::clone(gates.entry(endpoint).or_insert_with(|| {
            Arc::new(Gate {
                concurrency: Arc::new(Semaphore::new(per_endpoint.max(1))),
                next_slot: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            })
        }))
    }

    /// Drops the gates no delivery is using and whose rate limit holds nothing back, so the map
    /// follows the endpoints in flight, not every endpoint this instance ever delivered to
    /// (deleted ones included), for as long as it runs.
    fn forget_idle(&self) {
        let now = tokio::time::Instant::now();
        let mut gates = self.gates.lock().expect("not poisoned");
        gates.retain(|_, gate| {
            Arc::strong_count(gate) > 1
                || gate.next_slot.try_lock().map_or(true, |next| *next > now)
        });
    }
}

impl Gate {
    async fn pass(&self, rate_limit_per_second: Option<i32>) -> OwnedSemaphorePermit {
        let permit = Arc::clone(&self.concurrency)
            .acquire_owned()
            .await
            .expect("never closed");
        if let Some(rate) = rate_limit_per_second.filter(|r| *r > 0) {
            let interval = Duration::from_secs(1) / u32::try_from(rate).unwrap_or(1);
            let wait_until = {
                let mut next = self.next_slot.lock().await;
                let now = tokio::time::Instant::now();
                let slot = (*next).max(now);
                *next = slot + interval;
                slot
            };
            tokio::time::sleep_until(wait_until).await;
        }
        permit
    }
}

/// One worker instance.
pub struct Worker {
    store: Store,
    sender: Sender,
    clock: Arc<dyn Clock>,
    metrics: DeliveryMetrics,
    policy: Policy,
    tuning: watch::Receiver<Tuning>,
    capacity: Arc<Semaphore>,
    capacity_total: Mutex<usize>,
    gates: EndpointGates,
    held: Held,
    wake: Arc<Notify>,
}

impl Worker {
    pub fn new(
        store: Store,
        sender: Sender,
        clock: Arc<dyn Clock>,
        metrics: DeliveryMetrics,
        policy: Policy,
        tuning: watch::Receiver<Tuning>,
    ) -> Arc<Self> {
        let max = tuning.borrow().max_concurrent;
        Arc::new(Self {
            store,
            sender,
            clock,
            metrics,
            policy,
            tuning,
            capacity: Arc::new(Semaphore::new(max)),
            capacity_total: Mutex::new(max),
            gates: EndpointGates::default(),
            held: Held::default(),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Wakes the claim loop (a `NOTIFY` arrived, or a test wants it to look now).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Applies a changed `max_concurrent` to the semaphore without dropping work.
    fn apply_tuning(&self) -> Tuning {
        let tuning = *self.tuning.borrow();
        let mut total = self.capacity_total.lock().expect("not poisoned");
        if tuning.max_concurrent > *total {
            self.capacity.add_permits(tuning.max_concurrent - *total);
        } else if tuning.max_concurrent < *total {
            // Permits in use are not taken back; fewer are handed out from now on.
            let shrink = *total - tuning.max_concurrent;
            let forgotten = self.capacity.forget_permits(shrink);
            if forgotten < shrink {
                // Take the rest as they come back.
                let capacity = Arc::clone(&self.capacity);
                let rest = u32::try_from(shrink - forgotten).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(permits) = capacity.acquire_many_owned(rest).await {
                        permits.forget();
                    }
                });
            }
        }
        *total = tuning.max_concurrent;
        tuning
    }

    /// Claims one batch of due deliveries, with the signing keys their endpoints need.
    async fn claim(
        &self,
        limit: usize,
    ) -> Result<(Uuid, Vec<Claimed>, HashMap<EndpointId, Vec<SigningKey>>), crate::store::StoreError>
    {
        let claim_id = Uuid::new_v4();
        self.gates.forget_idle();
        let now = self.clock.now();
        let claimed = self
            .store
            .claim(
                claim_id,
                i64::try_from(limit).unwrap_or(i64::MAX),
                chrono(self.policy.lease),
                now,
            )
            .await?;
        // Open each endpoint's secrets once per batch.
        let mut keys: HashMap<EndpointId, Vec<SigningKey>> = HashMap::new();
        for c in &claimed {
            if keys.contains_key(&c.endpoint_id) {
                continue;
            }
            let mut opened = Vec::new();
            for sealed in c.sealed_secrets.iter().flatten() {
                match self.store.open_sealed(sealed, c.endpoint_id) {
                    Ok(key) => opened.push(key),
                    // A secret that does not open (a key missing from the keyring) is left out;
                    // the others still sign, and with none the attempt fails visibly.
                    Err(error) => {
                        tracing::error!(endpoint_id = %c.endpoint_id, %error, "endpoint secret")
                    }
                }
            }
            keys.insert(c.endpoint_id, opened);
        }
        Ok((claim_id, claimed, keys))
    }

    async fn deliver(
        &self,
        claim_id: Uuid,
        claimed: &Claimed,
        keys: &[SigningKey],
        per_endpoint: usize,
    ) -> Outcome {
        let gate = self.gates.gate(claimed.endpoint_id, per_endpoint);
        let _permit = gate.pass(claimed.rate_limit_per_second).await;
        let now = self.clock.now();
        // The attempt continues the trace of the work that published the event.
        let span = tracing::info_span!(
            "webhook.deliver",
            otel.kind = "client",
            delivery_id = %claimed.id,
            message_id = %claimed.message_id,
            endpoint_id = %claimed.endpoint_id,
            attempt = claimed.attempt_count + 1,
        );
        telemetry::propagation::adopt_traceparent(&span, claimed.traceparent.as_deref());
        let result = self
            .sender
            .send(
                &claimed.url,
                claimed.message_id,
                &claimed.payload,
                keys,
                now,
            )
            .instrument(span)
            .await;
        decide(
            claimed,
            claim_id,
            &result,
            &self.policy,
            self.clock.now(),
            unit_random(),
        )
    }

    async fn record(&self, outcomes: &[Outcome]) -> Result<(), crate::store::StoreError> {
        let recorded = self
            .store
            .record(
                outcomes,
                chrono(self.policy.disable_after),
                self.policy.failing_after_attempts,
                self.policy.schedule.max_attempts(),
                self.clock.now(),
            )
            .await?;
        for &i in &recorded.applied {
            self.metrics.observe(&outcomes[i]);
        }
        if recorded.applied.len() < outcomes.len() {
            tracing::warn!(
                lost = outcomes.len() - recorded.applied.len(),
                "outcomes arrived after their lease had passed to another claim; that claim delivers again"
            );
        }
        for endpoint in &recorded.disabled_endpoints {
            tracing::warn!(endpoint_id = %endpoint, "endpoint disabled");
        }
        Ok(())
    }

    /// Claims, delivers and records one batch, waiting for all of it; returns how many deliveries
    /// it attempted. Tests drive the worker with it under a manual clock. (No heartbeat: nothing
    /// else claims while a test steps the worker.)
    pub async fn run_once(&self) -> Result<usize, crate::store::StoreError> {
        let tuning = self.apply_tuning();
        let (claim_id, claimed, keys) = self.claim(tuning.batch_size).await?;
        let outcomes = futures::future::join_all(claimed.iter().map(|c| {
            let keys = keys
                .get(&c.endpoint_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            self.deliver(claim_id, c, keys, tuning.per_endpoint)
        }))
        .await;
        self.record(&outcomes).await?;
        Ok(outcomes.len())
    }

    /// Runs until `shutdown`, then drains within `grace`.
    pub async fn run(
        self: Arc<Self>,
        listen_url: String,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let (tx, rx) = mpsc::channel::<Outcome>(8192);
        let recorder = tokio::spawn(Arc::clone(&self).recorder(rx));
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(Arc::clone(&self).heartbeat(heartbeat_stop.clone()));
        let listener = tokio::spawn(database::listen(
            listen_url,
            QUEUE_CHANNEL.to_owned(),
            Arc::clone(&self.wake),
            shutdown.clone(),
        ));
        let mut reloads = self.tuning.clone();
        let mut tasks = JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let tuning = self.apply_tuning();
            let free = self.capacity.available_permits().min(tuning.batch_size);
            if free == 0 {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tasks.join_next() => continue,
                }
            }
            let batch = match self.claim(free).await {
                Ok(batch) => {
                    backoff = Duration::from_millis(100);
                    batch
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "cannot claim deliveries");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let (claim_id, claimed, keys) = batch;
            let full = claimed.len() >= free;
            let keys = Arc::new(keys);
            self.held.hold(claim_id, &claimed);
            for c in claimed {
                let Ok(permit) = Arc::clone(&self.capacity).acquire_owned().await else {
                    // Never closed; if it were, the row would come back when its lease expires.
                    self.held.release([c.id]);
                    continue;
                };
                let (this, keys, tx) = (Arc::clone(&self), Arc::clone(&keys), tx.clone());
                tasks.spawn(async move {
                    let mut holding = Holding {
                        worker: Arc::clone(&this),
                        id: c.id,
                        handed_over: false,
                    };
                    let endpoint_keys = keys
                        .get(&c.endpoint_id)
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    let outcome = this
                        .deliver(claim_id, &c, endpoint_keys, tuning.per_endpoint)
                        .await;
                    drop(permit);
                    holding.handed_over = tx.send(outcome).await.is_ok();
                });
            }
            if !full {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = async {
                        // With the sender gone there is nothing to reload: wait on the rest.
                        if reloads.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    } => {}
                    () = tokio::time::sleep(tuning.poll_interval) => {}
                }
            }
        }
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "draining deliveries in flight");
        }
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(
                left = tasks.len(),
                "deliveries still running after the grace period were abandoned; they come back when their lease expires"
            );
            tasks.abort_all();
        }
        drop(tx);
        let _ = recorder.await;
        // Whatever is still held was abandoned: let its leases run out.
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        let _ = listener.await;
    }

    /// Renews the leases of the rows this instance holds, every third of the lease, in one
    /// `UPDATE`, until `stop`. A renewal that fails is tried again at the next beat; the lease
    /// outlives two failed beats, so a database hiccup costs nothing, and an instance cut off
    /// from the database for a whole lease loses its rows to another, which sends them again
    /// (at least once).
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let every = (self.policy.lease / 3).max(Duration::from_millis(10));
        let mut beats = tokio::time::interval(every);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beats.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = beats.tick() => {}
            }
            let held = self.held.snapshot();
            if held.is_empty() {
                continue;
            }
            let until = self.clock.now() + chrono(self.policy.lease);
            match tokio::time::timeout(every, self.store.renew_leases(&held, until)).await {
                Ok(Ok(renewed)) => tracing::trace!(held = held.len(), renewed, "leases renewed"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, held = held.len(), "cannot renew the leases of deliveries in flight");
                }
                Err(_) => tracing::warn!(
                    held = held.len(),
                    timeout = ?every,
                    "renewing the leases of deliveries in flight timed out"
                ),
            }
        }
    }

    /// Writes outcomes in batches: whatever arrived within a few milliseconds of the first.
    async fn recorder(self: Arc<Self>, mut rx: mpsc::Receiver<Outcome>) {
        let mut buffer = Vec::with_capacity(512);
        while let Some(first) = rx.recv().await {
            buffer.push(first);
            let deadline = tokio::time::sleep(Duration::from_millis(5));
            tokio::pin!(deadline);
            while buffer.len() < 512 {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(outcome) => buffer.push(outcome),
                        None => break,
                    },
                    () = &mut deadline => break,
                }
            }
            let mut delay = Duration::from_millis(100);
            let started = tokio::time::Instant::now();
            loop {
                match self.record(&buffer).await {
                    Ok(()) => break,
                    // After a whole lease of failures, give up: the heartbeat stops renewing these
                    // rows, they pass to whoever claims them next and are delivered again (at
                    // least once), and these outcomes no longer count.
                    Err(error) if started.elapsed() >= self.policy.lease => {
                        tracing::error!(%error, dropped = buffer.len(), "gave up recording outcomes after the lease");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?delay, "cannot record delivery outcomes");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            // Recorded, or given up: either way no longer this instance's to renew.
            self.held.release(buffer.drain(..).map(|o| o.delivery_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_gates_are_forgotten() {
        let gates = EndpointGates::default();
        let (busy, paced, idle) = (EndpointId::new(), EndpointId::new(), EndpointId::new());
        let in_use = gates.gate(busy, 4);
        let _permit = in_use.pass(None).await;
        // A rate limit of 1/s: the next request may start a second from now.
        drop(gates.gate(paced, 4).pass(Some(1)).await);
        drop(gates.gate(idle, 4).pass(None).await);
        gates.forget_idle();
        let mut left: Vec<EndpointId> = gates.gates.lock().unwrap().keys().copied().collect();
        left.sort();
        let mut expected = vec![busy, paced];
        expected.sort();
        assert_eq!(left, expected);
    }

    #[test]
    fn held_rows_are_those_claimed_and_not_yet_released() {
        let held = Held::default();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, b, c) = (DeliveryId::new(), DeliveryId::new(), DeliveryId::new());
        held.rows.lock().unwrap().extend([(a, first), (b, first)]);
        held.rows.lock().unwrap().insert(c, second);
        held.release([b, DeliveryId::new()]);
        let mut snapshot = held.snapshot();
        snapshot.sort();
        let mut expected = vec![(a, first), (c, second)];
        expected.sort();
        assert_eq!(snapshot, expected);
        held.release([a, c]);
        assert!(held.snapshot().is_empty());
    }
}
