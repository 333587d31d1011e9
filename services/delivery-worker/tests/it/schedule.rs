//! Redrive and manual retry start the retry schedule over: against a partner still recovering,
//! a redriven delivery waits between attempts as the schedule says, instead of spending them all
//! within seconds and being dead-lettered again.

use std::sync::Arc;

use chrono::{TimeZone as _, Utc};
use delivery_worker::{
    clock::{Clock as _, ManualClock},
    worker::Worker,
};
use sonora_proto::delivery::v1::{
    Delivery, DeliveryStatus, ListDeliveriesRequest, RedriveDeadLettersRequest,
    RetryDeliveryRequest,
};
use test_support::TestDatabase;

use crate::support::{
    Behavior, Client, Receiver, endpoint, manual_worker, publish, settings, start,
};

/// The short schedule of these tests, without jitter: 10 s, 1 min, 5 min (4 attempts a run).
const SCHEDULE_MS: [i64; 3] = [10_000, 60_000, 300_000];

async fn the_delivery(c: &mut Client, endpoint_id: &str) -> Delivery {
    c.list_deliveries(ListDeliveriesRequest {
        tenant: "acme".into(),
        endpoint_id: endpoint_id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .deliveries
    .remove(0)
}

/// Runs one failing attempt after another, each at the moment it is due, and returns how long
/// the delivery was told to wait after each failure, until it is dead-lettered. Also checks that
/// nothing is sent a moment before it is due.
async fn waits_until_dead(
    worker: &Worker,
    clock: &ManualClock,
    c: &mut Client,
    receiver: &Receiver,
    endpoint_id: &str,
) -> Vec<i64> {
    let mut waits = Vec::new();
    loop {
        let sent = receiver.received_on("/recovering").len();
        worker.run_once().await.unwrap();
        assert_eq!(
            receiver.received_on("/recovering").len(),
            sent + 1,
            "one attempt when due"
        );
        let d = the_delivery(c, endpoint_id).await;
        if d.status() == DeliveryStatus::DeadLetter {
            return waits;
        }
        assert_eq!(d.status(), DeliveryStatus::Failed);
        let wait = d.next_retry_at_unix_ms - clock.now().timestamp_millis();
        waits.push(wait);
        assert!(waits.len() <= 10, "never dead-lettered: {waits:?}");
        // Not a moment early...
        clock.set(
            Utc.timestamp_millis_opt(d.next_retry_at_unix_ms - 1)
                .unwrap(),
        );
        worker.run_once().await.unwrap();
        assert_eq!(
            receiver.received_on("/recovering").len(),
            sent + 1,
            "retried {wait} ms after a failure, before its time"
        );
        // ...and due once its time has come (the row keeps microseconds the API rounds off).
        clock.set(
            Utc.timestamp_millis_opt(d.next_retry_at_unix_ms + 1)
                .unwrap(),
        );
    }
}

#[tokio::test]
async fn redrive_and_retry_start_the_schedule_over() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap());
    let s = settings(
        &db,
        &[
            ("WORKER_ENABLED", "false"),
            ("WEBHOOK_RETRY_SCHEDULE", "10s,1m,5m"),
            ("WEBHOOK_RETRY_JITTER", "0"),
            ("WEBHOOK_FAILING_AFTER_ATTEMPTS", "2"),
        ],
    );
    let mut svc = start(s.clone(), Some(Arc::new(clock.clone()))).await;
    let worker = manual_worker(&s, Arc::new(clock.clone()));
    let c = &mut svc.client;
    let (ep, _) = endpoint(c, &receiver, "acme", "/recovering", &["order.paid"]).await;
    endpoint(c, &receiver, "acme", "/ops", &["message.attempt.failing"]).await;
    receiver.set("/recovering", Behavior::status(500));
    c.publish(publish("acme", "e1", "order.paid", serde_json::json!({})))
        .await
        .unwrap();

    // The first run: the schedule as configured, then a dead letter after 4 attempts.
    let first = waits_until_dead(&worker, &clock, c, &receiver, &ep).await;
    assert_eq!(first, SCHEDULE_MS);

    // Redriven while the partner still fails: the next retries follow the schedule again
    // (before, every delay past the schedule's end was zero and the run took no time at all).
    clock.advance(chrono::Duration::hours(1));
    let redriven = c
        .redrive_dead_letters(RedriveDeadLettersRequest {
            tenant: "acme".into(),
            endpoint_id: ep.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redriven.redriven, 1);
    let second = waits_until_dead(&worker, &clock, c, &receiver, &ep).await;
    assert_eq!(second, SCHEDULE_MS, "after redrive");
    let d = the_delivery(c, &ep).await;
    assert_eq!((d.attempt_count, d.max_attempts), (8, 8));

    // A manual retry of the dead letter does the same.
    clock.advance(chrono::Duration::hours(1));
    let retried = c
        .retry_delivery(RetryDeliveryRequest {
            tenant: "acme".into(),
            delivery_id: d.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (retried.status(), retried.max_attempts),
        (DeliveryStatus::Pending, 12)
    );
    let third = waits_until_dead(&worker, &clock, c, &receiver, &ep).await;
    assert_eq!(third, SCHEDULE_MS, "after a manual retry");

    // A manual retry in the middle of a run starts it over too: the wait after the next failure
    // is the schedule's first again, not whatever came next.
    c.retry_delivery(RetryDeliveryRequest {
        tenant: "acme".into(),
        delivery_id: d.id.clone(),
    })
    .await
    .unwrap();
    worker.run_once().await.unwrap();
    worker.run_once().await.unwrap();
    clock.set(
        Utc.timestamp_millis_opt(the_delivery(c, &ep).await.next_retry_at_unix_ms + 1)
            .unwrap(),
    );
    worker.run_once().await.unwrap();
    let mid_run = the_delivery(c, &ep).await;
    assert_eq!(mid_run.attempt_count, 14);
    c.retry_delivery(RetryDeliveryRequest {
        tenant: "acme".into(),
        delivery_id: d.id.clone(),
    })
    .await
    .unwrap();
    worker.run_once().await.unwrap();
    let after = the_delivery(c, &ep).await;
    assert_eq!(after.attempt_count, 15);
    assert_eq!(
        after.next_retry_at_unix_ms - clock.now().timestamp_millis(),
        SCHEDULE_MS[0]
    );

    // Each run told the operators once that the delivery was failing (at its second failure):
    // the three full runs and the one cut short.
    worker.run_once().await.unwrap();
    let notices = receiver.received_on("/ops").len();
    assert_eq!(notices, 4, "one failing notice per run");
}
