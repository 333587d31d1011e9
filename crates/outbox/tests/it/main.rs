//! The outbox against real PostgreSQL and a real delivery-worker (the test stack), delivering to a
//! real partner receiver: relays that die mid-batch, a delivery-worker away for half a minute,
//! and two relays on one table.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use database::{Database, DatabaseConfig, MigrationSet, Pool};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text, Timestamptz},
};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use ids::Tenant;
use internal_rpc::on_behalf;
use outbox::{Event, Relay, RelaySettings, relay::OutboxMetrics};
use sonora_proto::delivery::v1::{
    CreateEndpointRequest, delivery_service_client::DeliveryServiceClient,
};
use test_stack::{Service, Stack};
use test_support::{
    TestDatabase, eventually, host_port, internal_keys, proxy::TcpProxy, receiver::Receiver,
};
use tokio_util::sync::CancellationToken;

const SCHEMA: &str = "relaytest";

/// delivery-worker, a partner endpoint of tenant `acme` on the receiver, and an outbox table in a
/// schema of its own.
struct Setup {
    stack: Stack,
    receiver: Receiver,
    database: Database,
}

async fn setup() -> Setup {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_delivery().start().await;
    let receiver = Receiver::start().await;
    let mut gateway =
        DeliveryServiceClient::new(stack.peer("gateway", Service::DeliveryWorker).channel());
    let principal = internal_rpc::Principal {
        tenant: Tenant::parse("acme").unwrap(),
        key_id: None,
        scopes: internal_rpc::Scopes::all(),
    };
    let created = gateway
        .create_endpoint(on_behalf(
            CreateEndpointRequest {
                url: receiver.url("/hook"),
                ..Default::default()
            },
            &principal,
        ))
        .await
        .unwrap()
        .into_inner();
    receiver.trust("/hook", &created.verification_key);
    let database = Database::start(
        DatabaseConfig {
            url: db.url.clone(),
            schema: SCHEMA,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
        },
        || MigrationSet::from(outbox::MIGRATIONS),
        stack.signals.shutdown.clone(),
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), database.migrated())
        .await
        .unwrap();
    Setup {
        stack,
        receiver,
        database,
    }
}

fn relay_settings(batch_size: usize, lease: Duration) -> RelaySettings {
    RelaySettings {
        batch_size,
        poll_interval: Duration::from_millis(100),
        lease,
        retention: Duration::from_secs(3600),
    }
}

/// A relay publishing as audio-generation to delivery-worker on `port`.
fn relay(pool: &Pool, port: u16, settings: RelaySettings) -> Relay {
    let peer = internal_keys().peer("audio-generation", "delivery-worker", port);
    Relay::new(
        pool.clone(),
        &peer,
        settings,
        OutboxMetrics::register(&prometheus::Registry::new()),
    )
}

/// Enqueues events number `from` to `from + count` spread over `aggregates` aggregates,
/// `per_transaction` at a time, each carrying its aggregate and its number within it.
async fn enqueue(
    pool: &Pool,
    from: usize,
    count: usize,
    aggregates: usize,
    per_transaction: usize,
) {
    let acme = Tenant::parse("acme").unwrap();
    let events: Vec<Event> = (from..from + count)
        .map(|i| {
            let aggregate = format!("job-{}", i % aggregates);
            let payload = serde_json::json!({ "aggregate": aggregate, "n": i / aggregates });
            Event::new(acme.clone(), &aggregate, "test.happened", &payload).unwrap()
        })
        .collect();
    let mut conn = database::get(pool).await.unwrap();
    for chunk in events.chunks(per_transaction) {
        let chunk = chunk.to_vec();
        conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
            for event in &chunk {
                outbox::enqueue(conn, event, Utc::now()).await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

async fn pending(pool: &Pool) -> i64 {
    let mut conn = database::get(pool).await.unwrap();
    diesel::sql_query(
        "SELECT count(*) AS count FROM outbox WHERE published_at IS NULL AND rejected_at IS NULL",
    )
    .get_result::<Count>(&mut conn)
    .await
    .unwrap()
    .count
}

#[derive(QueryableByName)]
struct Published {
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

/// Checks, in delivery-worker's own table, that each aggregate's events became messages in the
/// order they were enqueued: a later event's message is never older than an earlier one's
/// (events handed on in one batch share a time).
async fn assert_in_order_per_aggregate(db_url: &str, expected: usize) {
    let mut conn = diesel_async::AsyncPgConnection::establish(db_url)
        .await
        .unwrap();
    let rows: Vec<Published> =
        diesel::sql_query("SELECT payload, created_at FROM delivery.messages")
            .load(&mut conn)
            .await
            .unwrap();
    assert_eq!(rows.len(), expected, "one message per event");
    let mut by_aggregate: HashMap<String, Vec<(u64, DateTime<Utc>)>> = HashMap::new();
    for row in rows {
        let payload: serde_json::Value = serde_json::from_str(&row.payload).unwrap();
        by_aggregate
            .entry(payload["aggregate"].as_str().unwrap().to_owned())
            .or_default()
            .push((payload["n"].as_u64().unwrap(), row.created_at));
    }
    for (aggregate, mut events) in by_aggregate {
        events.sort_by_key(|(n, _)| *n);
        for pair in events.windows(2) {
            assert!(
                pair[0].1 <= pair[1].1,
                "{aggregate}: event {} was handed on after event {}",
                pair[0].0,
                pair[1].0
            );
        }
    }
}

/// Waits until the receiver has `count` webhooks, then checks that no event arrived twice.
async fn assert_each_delivered_once(receiver: &Receiver, count: usize) {
    eventually(Duration::from_secs(60), "every event delivered", || async {
        (receiver.received_on("/hook").len() >= count).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.received_on("/hook");
    assert!(received.iter().all(|r| r.verified));
    let mut bodies: Vec<&str> = received.iter().map(|r| r.body.as_str()).collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(
        (received.len(), bodies.len()),
        (count, count),
        "every event delivered exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_on_one_table_hand_each_event_on_once_in_order() {
    let s = setup().await;
    let pool = s.database.pool().clone();
    let port = s.stack.grpc_port(Service::DeliveryWorker);
    // 200 aggregates of 5 events: a batch of 40 leaves later aggregates for the other relay
    // (with fewer aggregates than a batch, the first claim holds them all and the second relay
    // rightly waits).
    enqueue(&pool, 0, 1000, 200, 25).await;
    let relays: Vec<_> = (0..2)
        .map(|_| {
            Arc::new(relay(
                &pool,
                port,
                relay_settings(40, Duration::from_secs(30)),
            ))
        })
        .collect();
    let rounds: Vec<_> = relays
        .iter()
        .map(|relay| {
            let relay = Arc::clone(relay);
            tokio::spawn(async move {
                let mut total = outbox::relay::Handed::default();
                let mut idle = 0;
                while idle < 20 {
                    let handed = relay.run_once().await.unwrap();
                    if handed.published == 0 {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    total.published += handed.published;
                    total.duplicates += handed.duplicates;
                }
                total
            })
        })
        .collect();
    let mut totals = Vec::new();
    for round in rounds {
        totals.push(round.await.unwrap());
    }
    assert_eq!(pending(&pool).await, 0);
    assert_eq!(
        totals.iter().map(|t| t.published).sum::<usize>(),
        1000,
        "{totals:?}"
    );
    assert!(
        totals.iter().all(|t| t.published > 0),
        "both relays took part: {totals:?}"
    );
    assert_eq!(
        totals.iter().map(|t| t.duplicates).sum::<usize>(),
        0,
        "no event was handed on twice"
    );
    assert_in_order_per_aggregate(&s.stack.db.url, 1000).await;
    assert_each_delivered_once(&s.receiver, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_dies_after_publishing_causes_no_second_delivery() {
    let s = setup().await;
    let pool = s.database.pool().clone();
    let port = s.stack.grpc_port(Service::DeliveryWorker);
    enqueue(&pool, 0, 300, 30, 30).await;

    // The first relay claims a batch and hands it on, then dies before marking it published:
    // its claim stays on the rows until the lease runs out.
    let dying = relay(&pool, port, relay_settings(100, Duration::from_secs(2)));
    let claimed = dying.claim().await.unwrap();
    assert_eq!(claimed.len(), 100);
    dying.publish(&claimed).await.unwrap();
    drop(dying);

    // The survivor hands on the rest; the dead relay's events wait for its lease, and so do the
    // later events of their aggregates.
    let survivor = relay(&pool, port, relay_settings(100, Duration::from_secs(2)));
    let mut total = outbox::relay::Handed::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pending(&pool).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "stuck: {total:?}");
        let handed = survivor.run_once().await.unwrap();
        total.published += handed.published;
        total.duplicates += handed.duplicates;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(total.published, 300, "{total:?}");
    assert_eq!(
        total.duplicates, 100,
        "the dead relay's batch was handed on again and recognised: {total:?}"
    );
    assert_in_order_per_aggregate(&s.stack.db.url, 300).await;
    assert_each_delivered_once(&s.receiver, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_worker_away_for_half_a_minute_then_everything_in_order() {
    let s = setup().await;
    let pool = s.database.pool().clone();
    let port = s.stack.grpc_port(Service::DeliveryWorker);
    let proxy = TcpProxy::start(host_port(&format!("http://127.0.0.1:{port}")))
        .await
        .unwrap();
    let relay = Arc::new(relay(
        &pool,
        proxy.port(),
        relay_settings(50, Duration::from_secs(60)),
    ));
    let stop = CancellationToken::new();
    let running =
        tokio::spawn(Arc::clone(&relay).run(s.stack.db.url.clone(), SCHEMA, stop.clone()));

    proxy.cut();
    let away = tokio::time::Instant::now();
    // Events keep arriving while delivery-worker is away.
    for round in 0..4 {
        enqueue(&pool, round * 50, 50, 5, 10).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    tokio::time::sleep_until(away + Duration::from_secs(30)).await;
    assert_eq!(
        pending(&pool).await,
        200,
        "nothing is lost while it is away"
    );
    assert!(s.receiver.received_on("/hook").is_empty());

    proxy.restore();
    eventually(Duration::from_secs(30), "the backlog handed on", || async {
        (pending(&pool).await == 0).then_some(())
    })
    .await;
    assert_in_order_per_aggregate(&s.stack.db.url, 200).await;
    assert_each_delivered_once(&s.receiver, 200).await;
    stop.cancel();
    running.await.unwrap();
}
