//! The schema's migrations applied to rows written before them, and stored values the service
//! does not know.

use std::time::Duration;

use sonora_proto::delivery::v1::{
    DeliveryStatus, GetEndpointRequest, ListAttemptsRequest, ListDeliveriesRequest,
};
use test_support::{TestDatabase, eventually};
use tonic::Code;

use crate::support::{Receiver, psql, publish, settings, start};

const ENDPOINT: &str = "ep_0000000000000000000000000000000e";

/// A database as the first release left it: its one migration applied (and recorded as diesel
/// records it), with numbered deliveries and attempts.
fn first_release(db: &TestDatabase, receiver_url: &str) {
    let first = include_str!("../../migrations/2026-11-22-000001_queue/up.sql");
    psql(
        db,
        &format!(
            "CREATE SCHEMA delivery; SET search_path TO delivery; {first}
             CREATE TABLE __diesel_schema_migrations (
                 version VARCHAR(50) PRIMARY KEY NOT NULL,
                 run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
             INSERT INTO __diesel_schema_migrations (version) VALUES ('20261122000001');"
        ),
    );
    // Numbers whose hexadecimal forms differ in length and in digits against letters, so the
    // converted ids only sort like the numbers if they are padded.
    psql(
        db,
        &format!(
            "INSERT INTO endpoints (id, tenant, url, created_at, updated_at)
                 VALUES ('{ENDPOINT}', 'acme', '{receiver_url}', now(), now());
             INSERT INTO messages (id, tenant, event_id, event_type, payload, created_at) VALUES
                 ('msg_00000000000000000000000000000001', 'acme', 'e1', 'a.b', '{{}}', now()),
                 ('msg_00000000000000000000000000000002', 'acme', 'e2', 'a.b', '{{}}', now()),
                 ('msg_00000000000000000000000000000003', 'acme', 'e3', 'a.b', '{{}}', now());
             INSERT INTO deliveries (id, message_id, endpoint_id, status, attempt_count, max_attempts,
                                     next_retry_at, created_at) VALUES
                 (9, 'msg_00000000000000000000000000000001', '{ENDPOINT}', 'failed', 1, 8, now() + interval '1 day', now()),
                 (16, 'msg_00000000000000000000000000000002', '{ENDPOINT}', 'dead_letter', 8, 8, now(), now()),
                 (300, 'msg_00000000000000000000000000000003', '{ENDPOINT}', 'failed', 1, 8, now() + interval '1 day', now());
             INSERT INTO attempts (id, delivery_id, message_id, endpoint_id, attempted_at, duration_ms,
                                   request_headers, outcome) VALUES
                 (10, 300, 'msg_00000000000000000000000000000003', '{ENDPOINT}', now(), 5, '{{}}', 'failure'),
                 (11, 9, 'msg_00000000000000000000000000000001', '{ENDPOINT}', now(), 5, '{{}}', 'failure');"
        ),
    );
}

#[tokio::test]
async fn numbered_deliveries_and_attempts_become_typed_ids_in_the_same_order() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    first_release(&db, &receiver.url("/old"));
    // The service applies the migrations that are new to this database, and serves the old rows.
    let svc = start(settings(&db, &[("WORKER_ENABLED", "false")]), None).await;
    let mut c = svc.client.clone();
    let list = |c: &mut crate::support::Client| {
        let mut c = c.clone();
        async move {
            c.list_deliveries(ListDeliveriesRequest {
                tenant: "acme".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries
        }
    };
    let deliveries = list(&mut c).await;
    let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "dlv_00000000000000000000000000000009",
            "dlv_00000000000000000000000000000010",
            "dlv_0000000000000000000000000000012c",
        ]
    );
    assert_eq!(
        deliveries[0].message_id,
        "msg_00000000000000000000000000000001"
    );
    let attempts = c
        .list_attempts(ListAttemptsRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attempts;
    let pairs: Vec<(&str, &str)> = attempts
        .iter()
        .map(|a| (a.id.as_str(), a.delivery_id.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            (
                "att_0000000000000000000000000000000a",
                "dlv_0000000000000000000000000000012c"
            ),
            (
                "att_0000000000000000000000000000000b",
                "dlv_00000000000000000000000000000009"
            ),
        ]
    );
    // The foreign key survived the conversion: deleting a delivery takes its attempts along.
    psql(
        &db,
        "DELETE FROM deliveries WHERE id = 'dlv_0000000000000000000000000000012c'",
    );
    assert_eq!(
        psql(&db, "SELECT count(*) FROM attempts").trim(),
        "1",
        "the attempt of the deleted delivery is gone"
    );

    // A delivery published now gets a new id, which sorts after the converted ones.
    c.publish(publish("acme", "e4", "a.b", serde_json::json!({})))
        .await
        .unwrap();
    let deliveries = eventually(Duration::from_secs(10), "the new delivery", || {
        let mut c = c.clone();
        async move {
            let all = list(&mut c).await;
            (all.len() == 3).then_some(all)
        }
    })
    .await;
    let newest = &deliveries[2];
    assert_eq!(newest.status(), DeliveryStatus::Pending);
    ids::DeliveryId::parse(&newest.id).unwrap();
    assert!(newest.id.as_str() > deliveries[1].id.as_str());
}

#[tokio::test]
async fn an_unknown_stored_value_is_an_error_not_a_default() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    first_release(&db, &receiver.url("/old"));
    let svc = start(settings(&db, &[("WORKER_ENABLED", "false")]), None).await;
    let mut c = svc.client.clone();
    let get = |c: &mut crate::support::Client| {
        let mut c = c.clone();
        async move {
            c.get_endpoint(GetEndpointRequest {
                tenant: "acme".into(),
                id: ENDPOINT.into(),
            })
            .await
        }
    };
    assert!(get(&mut c).await.is_ok());
    // A value written by some other release (the CHECK constraint lifted to let it in): it used
    // to be read as HMAC, and the endpoint signed with the wrong kind of key.
    psql(
        &db,
        &format!(
            "ALTER TABLE endpoints DROP CONSTRAINT endpoints_signing_check;
             UPDATE endpoints SET signing = 'rsa' WHERE id = '{ENDPOINT}'"
        ),
    );
    let status = get(&mut c).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        !status.message().contains("rsa"),
        "internal details stay in the log: {status:?}"
    );
    psql(
        &db,
        "ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
         UPDATE deliveries SET status = 'lost' WHERE id = 'dlv_00000000000000000000000000000009'",
    );
    let status = c
        .list_deliveries(ListDeliveriesRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
}
