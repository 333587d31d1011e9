//! Integration tests of `delivery-worker`: the real service and workers against the real
//! PostgreSQL, delivering to real HTTP receivers on loopback.

mod auth;
mod input;
mod metrics;
mod migrations;
mod queue;
mod schedule;
mod support;

use std::{sync::Arc, time::Duration};

use chrono::{TimeZone as _, Utc};
use delivery_worker::{Application, clock::ManualClock};
use lifecycle::Signals;
use sonora_proto::delivery::v1::{
    CreateEndpointRequest, DeleteEndpointRequest, DeliveryStatus, GetEndpointRequest,
    GetQueueStatsRequest, ListAttemptsRequest, ListDeliveriesRequest, ListEndpointsRequest,
    RedriveDeadLettersRequest, RotateEndpointSecretRequest, UpdateEndpointRequest,
};
use support::{Behavior, Receiver, endpoint, manual_worker, publish, settings, start};
use test_support::{
    TestDatabase, assert_operational, eventually, grpc_health, host_port, proxy::TcpProxy, sources,
    wait_ready,
};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn operational_endpoints_and_grpc_health() {
    let db = TestDatabase::create().await.unwrap();
    let signals = Signals::new();
    let app = Application::build(settings(&db, &[]), signals.clone()).unwrap();
    let (grpc, base) = (
        app.grpc_port(),
        format!("http://127.0.0.1:{}", app.http_port()),
    );
    let task = tokio::spawn(app.stopped());
    assert_operational(&base, &["database"]).await;
    let metrics = test_support::http_client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("webhook_dead_letters_total"), "{metrics}");
    eventually(Duration::from_secs(10), "SERVING", || async {
        (grpc_health(grpc).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    signals.shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(grpc_health(grpc).await.is_none());
}

#[tokio::test]
async fn not_ready_while_postgres_is_away_and_back_without_restart() {
    let db = TestDatabase::create().await.unwrap();
    let proxy = TcpProxy::start(host_port(&db.url)).await.unwrap();
    let via = db.url_via(proxy.port());
    let mut s = settings(&db, &[]);
    s.database = settings::DatabaseSettings::load(&sources([("DATABASE_URL", via)])).unwrap();
    let signals = Signals::new();
    let app = Application::build(s, signals.clone()).unwrap();
    let (grpc, base) = (
        app.grpc_port(),
        format!("http://127.0.0.1:{}", app.http_port()),
    );
    let _task = tokio::spawn(app.stopped());
    wait_ready(&base, 200).await;
    proxy.cut();
    let body = wait_ready(&base, 503).await;
    assert_eq!(body["components"]["database"]["status"], "down", "{body}");
    eventually(Duration::from_secs(10), "NOT_SERVING", || async {
        (grpc_health(grpc).await == Some(ServingStatus::NotServing)).then_some(())
    })
    .await;
    proxy.restore();
    wait_ready(&base, 200).await;
    signals.shutdown.cancel();
}

#[tokio::test]
async fn publish_is_idempotent_and_reaches_only_subscribed_endpoints() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let mut svc = start(settings(&db, &[]), None).await;
    let c = &mut svc.client;
    let (all, _) = endpoint(c, &receiver, "acme", "/all", &[]).await;
    endpoint(
        c,
        &receiver,
        "acme",
        "/audio",
        &["audio.sound_effect.completed"],
    )
    .await;
    endpoint(c, &receiver, "acme", "/github", &["github.push"]).await;
    endpoint(c, &receiver, "other-tenant", "/other", &[]).await;

    let request = publish(
        "acme",
        "evt_1",
        "audio.sound_effect.completed",
        serde_json::json!({"job": 7}),
    );
    let first = c.publish(request.clone()).await.unwrap().into_inner();
    assert_eq!((first.duplicate, first.deliveries), (false, 2));
    let again = c.publish(request).await.unwrap().into_inner();
    assert_eq!(
        (again.duplicate, again.deliveries, again.message_id.as_str()),
        (true, 0, first.message_id.as_str())
    );

    let received = eventually(Duration::from_secs(20), "two deliveries", || async {
        let got = receiver.received();
        (got.len() >= 2).then_some(got)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received_now = receiver.received();
    assert_eq!(received_now.len(), 2, "{received_now:#?}");
    let mut paths: Vec<_> = received.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/all", "/audio"]);
    for r in &received {
        assert!(r.verified, "signature must verify: {r:?}");
        assert_eq!(r.id, first.message_id, "webhook-id is the message id");
        assert_eq!(r.body, r#"{"job":7}"#);
    }

    // The attempt log has the request headers without the signature, and the response.
    let attempt = eventually(Duration::from_secs(10), "the attempt is logged", || {
        let mut c = c.clone();
        let all = all.clone();
        async move {
            c.list_attempts(ListAttemptsRequest {
                tenant: "acme".into(),
                endpoint_id: all,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner()
            .attempts
            .into_iter()
            .next()
        }
    })
    .await;
    assert_eq!(
        (attempt.response_status, attempt.outcome.as_str()),
        (200, "success")
    );
    assert_eq!(attempt.response_body, "answered 200");
    assert!(attempt.request_headers.contains_key("webhook-id"));
    assert!(!attempt.request_headers.contains_key("webhook-signature"));
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_and_change_nothing() {
    let db = TestDatabase::create().await.unwrap();
    let mut svc = start(settings(&db, &[]), None).await;
    let c = &mut svc.client;
    let cases = [
        publish("", "e", "a.b", serde_json::json!({})),
        publish("t", "", "a.b", serde_json::json!({})),
        publish("t", "e", "Not A Type", serde_json::json!({})),
        publish("t", "e", "a.b", serde_json::json!([1, 2])),
    ];
    for request in cases {
        let status = c.publish(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let mut oversized = publish("t", "e", "a.b", serde_json::json!({}));
    oversized.payload_json = format!("{{\"x\":\"{}\"}}", "a".repeat(300 * 1024));
    assert_eq!(
        c.publish(oversized).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    for (url, secret) in [
        ("ftp://example.com", ""),
        ("http://example.com", "not-a-secret"),
        ("not a url", ""),
    ] {
        let status = c
            .create_endpoint(CreateEndpointRequest {
                tenant: "t".into(),
                url: url.into(),
                secret: secret.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{url}: {status:?}"
        );
    }
    let listed = c
        .list_endpoints(ListEndpointsRequest {
            tenant: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.endpoints.is_empty());
    let stats = c
        .get_queue_stats(GetQueueStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.pending + stats.delivered, 0);
    // An id of the wrong shape is a bad request; a well-formed id nobody has is not found.
    let malformed = c
        .get_endpoint(GetEndpointRequest {
            tenant: "t".into(),
            id: "ep_missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (malformed.code(), malformed.message()),
        (
            tonic::Code::InvalidArgument,
            "id: must be \"ep_\" followed by 32 lowercase hexadecimal digits"
        )
    );
    let missing = c
        .get_endpoint(GetEndpointRequest {
            tenant: "t".into(),
            id: ids::EndpointId::new().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn endpoints_are_tenant_scoped_paginated_and_updatable() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let mut svc = start(settings(&db, &[]), None).await;
    let c = &mut svc.client;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            endpoint(c, &receiver, "acme", &format!("/e{i}"), &[])
                .await
                .0,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_endpoints(ListEndpointsRequest {
                tenant: "acme".into(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.endpoints.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.sort();
    assert_eq!(seen, ids);
    // Another tenant sees none of them.
    let other = c
        .get_endpoint(GetEndpointRequest {
            tenant: "intruder".into(),
            id: ids[0].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::NotFound);

    let updated = c
        .update_endpoint(UpdateEndpointRequest {
            tenant: "acme".into(),
            id: ids[0].clone(),
            description: Some("billing".into()),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.description.as_str(), updated.enabled),
        ("billing", false)
    );
    assert_eq!(updated.disabled_reason, "disabled by an operator");
    // A disabled endpoint gets nothing new.
    let published = c
        .publish(publish("acme", "evt", "x.y", serde_json::json!({})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(published.deliveries, 4);
}

/// The retry schedule, Retry-After, 410 Gone, dead letters and redrive, under a manual clock.
#[tokio::test]
async fn retries_follow_the_schedule_then_dead_letter_and_redrive() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let t0 = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    let clock = ManualClock::new(t0);
    let s = settings(&db, &[("WORKER_ENABLED", "false")]);
    let mut svc = start(s.clone(), Some(Arc::new(clock.clone()))).await;
    let worker = manual_worker(&s, Arc::new(clock.clone()));
    let c = &mut svc.client;

    let (failing, _) = endpoint(c, &receiver, "acme", "/fail", &["order.paid"]).await;
    endpoint(
        c,
        &receiver,
        "acme",
        "/ops",
        &[
            "message.attempt.exhausted",
            "message.attempt.failing",
            "endpoint.disabled",
        ],
    )
    .await;
    receiver.set("/fail", Behavior::status(500));
    c.publish(publish(
        "acme",
        "evt_retry",
        "order.paid",
        serde_json::json!({"n": 1}),
    ))
    .await
    .unwrap();

    let schedule = s.schedule.delays.clone();
    let delivery = |c: &mut support::Client, id: &str| {
        let mut c = c.clone();
        let id = id.to_owned();
        async move {
            c.list_deliveries(ListDeliveriesRequest {
                tenant: "acme".into(),
                endpoint_id: id,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries
            .remove(0)
        }
    };
    for (attempt, delay) in schedule.iter().enumerate() {
        assert!(
            worker.run_once().await.unwrap() >= 1,
            "attempt {}",
            attempt + 1
        );
        let d = delivery(c, &failing).await;
        assert_eq!(d.attempt_count as usize, attempt + 1);
        assert_eq!(d.status(), DeliveryStatus::Failed);
        assert_eq!(d.last_response_status, 500);
        let waited = d.next_retry_at_unix_ms - clock_ms(&clock);
        let base = delay.as_millis() as i64;
        assert!(
            waited >= base * 8 / 10 && waited <= base * 12 / 10,
            "attempt {}: next retry in {waited} ms, schedule says {base} ms ± 20%",
            attempt + 1
        );
        // Not due a moment before its time.
        clock.set(
            Utc.timestamp_millis_opt(d.next_retry_at_unix_ms - 1)
                .unwrap(),
        );
        let before = receiver.received_on("/fail").len();
        worker.run_once().await.unwrap();
        assert_eq!(receiver.received_on("/fail").len(), before, "retried early");
        // The API reports milliseconds; the row keeps microseconds.
        clock.set(
            Utc.timestamp_millis_opt(d.next_retry_at_unix_ms + 1)
                .unwrap(),
        );
    }
    worker.run_once().await.unwrap();
    let d = delivery(c, &failing).await;
    assert_eq!(
        (d.status(), d.attempt_count),
        (DeliveryStatus::DeadLetter, 8)
    );
    assert_eq!(receiver.received_on("/fail").len(), 8);

    // Operators hear about it: a failing notice after the 4th attempt, exhaustion at the end.
    for _ in 0..3 {
        worker.run_once().await.unwrap();
    }
    let ops_types: Vec<String> = receiver
        .received_on("/ops")
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        ops_types.contains(&"message.attempt.failing".to_owned()),
        "{ops_types:?}"
    );
    assert!(
        ops_types.contains(&"message.attempt.exhausted".to_owned()),
        "{ops_types:?}"
    );

    // Redrive puts the dead letter back; the endpoint works again now.
    receiver.set("/fail", Behavior::status(204));
    let redriven = c
        .redrive_dead_letters(RedriveDeadLettersRequest {
            tenant: "acme".into(),
            endpoint_id: failing.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redriven.redriven, 1);
    worker.run_once().await.unwrap();
    let d = delivery(c, &failing).await;
    assert_eq!(
        (d.status(), d.attempt_count),
        (DeliveryStatus::Delivered, 9)
    );
}

fn clock_ms(clock: &ManualClock) -> i64 {
    use delivery_worker::clock::Clock as _;
    clock.now().timestamp_millis()
}

#[tokio::test]
async fn retry_after_throttles_and_gone_disables() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let t0 = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    let clock = ManualClock::new(t0);
    let s = settings(&db, &[("WORKER_ENABLED", "false")]);
    let mut svc = start(s.clone(), Some(Arc::new(clock.clone()))).await;
    let worker = manual_worker(&s, Arc::new(clock.clone()));
    let c = &mut svc.client;

    let (busy, _) = endpoint(c, &receiver, "acme", "/busy", &["a.one"]).await;
    let (gone, _) = endpoint(c, &receiver, "acme", "/gone", &["a.two"]).await;
    endpoint(c, &receiver, "acme", "/ops", &["endpoint.disabled"]).await;
    receiver.set(
        "/busy",
        Behavior {
            status: 429,
            delay: Duration::ZERO,
            retry_after: Some(120),
        },
    );
    receiver.set("/gone", Behavior::status(410));
    c.publish(publish("acme", "e1", "a.one", serde_json::json!({})))
        .await
        .unwrap();
    c.publish(publish("acme", "e2", "a.one", serde_json::json!({})))
        .await
        .unwrap();
    c.publish(publish("acme", "e3", "a.two", serde_json::json!({})))
        .await
        .unwrap();

    // One batch: both /busy deliveries may go out together, then the endpoint is held back.
    worker.run_once().await.unwrap();
    let busy_first = receiver.received_on("/busy").len();
    assert!(busy_first >= 1);
    let deliveries = c
        .list_deliveries(ListDeliveriesRequest {
            tenant: "acme".into(),
            endpoint_id: busy.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    for d in deliveries.iter().filter(|d| d.attempt_count == 1) {
        assert_eq!(
            d.next_retry_at_unix_ms - t0.timestamp_millis(),
            120_000,
            "Retry-After honoured"
        );
    }
    clock.advance(chrono::Duration::seconds(60));
    worker.run_once().await.unwrap();
    assert_eq!(
        receiver.received_on("/busy").len(),
        busy_first,
        "held back until Retry-After"
    );
    let held = busy_first;
    clock.advance(chrono::Duration::seconds(61));
    worker.run_once().await.unwrap();
    assert!(
        receiver.received_on("/busy").len() > held,
        "resumes after Retry-After"
    );

    // 410 Gone disabled the endpoint, with its reason, and an event went out.
    let ep = c
        .get_endpoint(GetEndpointRequest {
            tenant: "acme".into(),
            id: gone.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ep.enabled);
    assert!(ep.disabled_reason.contains("410"), "{}", ep.disabled_reason);
    worker.run_once().await.unwrap();
    let ops = receiver.received_on("/ops");
    assert!(
        ops.iter()
            .any(|r| r.body.contains("endpoint.disabled") && r.body.contains(&gone)),
        "{ops:#?}"
    );
    // Nothing more goes to a disabled endpoint.
    let before = receiver.received_on("/gone").len();
    clock.advance(chrono::Duration::hours(1));
    worker.run_once().await.unwrap();
    assert_eq!(receiver.received_on("/gone").len(), before);
}

#[tokio::test]
async fn endpoint_failing_for_days_is_disabled() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let t0 = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    let clock = ManualClock::new(t0);
    let s = settings(
        &db,
        &[("WORKER_ENABLED", "false"), ("WEBHOOK_DISABLE_AFTER", "2h")],
    );
    let mut svc = start(s.clone(), Some(Arc::new(clock.clone()))).await;
    let worker = manual_worker(&s, Arc::new(clock.clone()));
    let c = &mut svc.client;
    let (down, _) = endpoint(c, &receiver, "acme", "/down", &[]).await;
    receiver.set("/down", Behavior::status(503));
    c.publish(publish("acme", "e1", "a.b", serde_json::json!({})))
        .await
        .unwrap();
    for _ in 0..6 {
        worker.run_once().await.unwrap();
        clock.advance(chrono::Duration::minutes(45));
    }
    let ep = c
        .get_endpoint(GetEndpointRequest {
            tenant: "acme".into(),
            id: down,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ep.enabled, "still enabled after failing for hours");
    assert!(
        ep.disabled_reason
            .starts_with("failing with no success since 2030-01-01T00:00:00Z"),
        "{}",
        ep.disabled_reason
    );
}

#[tokio::test]
async fn secrets_are_sealed_in_the_database_and_rotation_signs_with_both() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let key = secret_box::generate_key();
    let s = settings(&db, &[("WEBHOOK_SECRET_ENCRYPTION_KEY", &key)]);
    let mut svc = start(s.clone(), None).await;
    let c = &mut svc.client;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let created = c
        .create_endpoint(CreateEndpointRequest {
            tenant: "acme".into(),
            url: receiver.url("/rot"),
            secret: secret.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = created.endpoint.unwrap().id;
    assert_eq!(created.verification_key, secret);

    // Neither the secret nor its key material appears anywhere in the table's bytes.
    let dump = test_support::run_binary(
        "/usr/bin/psql",
        &[
            &db.url,
            "-tAc",
            "select encode(ciphertext, 'escape') || encode(ciphertext, 'base64') || encode(ciphertext, 'hex') from delivery.endpoint_secrets",
        ],
        &[],
    );
    assert_eq!(dump.code, Some(0), "{}", dump.stderr);
    assert!(!dump.stdout.trim().is_empty());
    for needle in [secret, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "31f2a43dafc"] {
        assert!(
            !dump.stdout.contains(needle),
            "{needle} readable in the database"
        );
    }

    // Rotate: both secrets sign until the old one expires.
    let rotated = c
        .rotate_endpoint_secret(RotateEndpointSecretRequest {
            tenant: "acme".into(),
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.key.starts_with("whsec_") && rotated.key != secret);
    c.publish(publish(
        "acme",
        "after-rotation",
        "a.b",
        serde_json::json!({}),
    ))
    .await
    .unwrap();
    receiver.trust_only("/rot", &[secret, &rotated.key]);
    let got = eventually(Duration::from_secs(20), "the delivery", || async {
        receiver.received_on("/rot").into_iter().next()
    })
    .await;
    let signatures: Vec<&str> = got.signature.split(' ').collect();
    assert_eq!(signatures.len(), 2, "{}", got.signature);
    for alone in [secret, rotated.key.as_str()] {
        let keys = [webhook_signature::VerifyingKey::parse(alone).unwrap()];
        webhook_signature::verify(
            &keys,
            webhook_signature::SignedHeaders {
                id: &got.id,
                timestamp: &got.timestamp,
                signature: &got.signature,
            },
            got.body.as_bytes(),
            Utc::now().timestamp(),
            300,
        )
        .unwrap_or_else(|e| panic!("{alone}: {e}"));
    }

    // A new encryption key: old rows still open, and rotate-secrets moves them to the new key.
    svc.signals.shutdown.cancel();
    let new_key = secret_box::generate_key();
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_delivery-worker"),
        &["rotate-secrets"],
        &[
            ("DATABASE_URL", &db.url),
            ("WEBHOOK_SECRET_ENCRYPTION_KEY", &new_key),
            ("WEBHOOK_SECRET_ENCRYPTION_PREVIOUS_KEYS", &key),
            ("LOG_FORMAT", "text"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let s2 = settings(&db, &[("WEBHOOK_SECRET_ENCRYPTION_KEY", &new_key)]);
    let new_ring = s2.keyring();
    let ids = test_support::run_binary(
        "/usr/bin/psql",
        &[
            &db.url,
            "-tAc",
            "select distinct key_id from delivery.endpoint_secrets",
        ],
        &[],
    );
    assert_eq!(ids.stdout.trim(), new_ring.current_key_id());
    // With only the new key, the service still signs with the endpoint's secret.
    let mut svc2 = start(s2, None).await;
    let current = svc2
        .client
        .get_endpoint_secret(sonora_proto::delivery::v1::GetEndpointSecretRequest {
            tenant: "acme".into(),
            id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.key, rotated.key);
}

#[tokio::test]
async fn production_refuses_private_destinations() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let t0 = Utc::now();
    let clock = ManualClock::new(t0);
    let s = settings(
        &db,
        &[("WORKER_ENABLED", "false"), ("ENVIRONMENT", "production")],
    );
    let mut svc = start(s.clone(), Some(Arc::new(clock.clone()))).await;
    let c = &mut svc.client;
    for url in [
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "http://example.com/hook",
    ] {
        let status = c
            .create_endpoint(CreateEndpointRequest {
                tenant: "acme".into(),
                url: url.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{url}");
    }
    // Host names private by definition, or that resolve to private addresses or not at all, are
    // refused when saved, on create and on update, naming the field and the rule.
    let port = receiver.base.rsplit(':').next().unwrap().to_owned();
    let localhost = format!("https://localhost:{port}/hook?token=s3cr3t");
    for (url, rule) in [
        (localhost.as_str(), "the host name is private by definition"),
        (
            "https://metadata.google.internal/computeMetadata/v1/",
            "the host name is private by definition",
        ),
        (
            "https://api.localhost/hook",
            "the host name is private by definition",
        ),
        (
            "https://printer.local/hook",
            "the host name is private by definition",
        ),
        (
            "https://router.home.arpa/hook",
            "the host name is private by definition",
        ),
        (
            "https://intranet/hook",
            "the host name is private by definition",
        ),
        (
            "https://nothing.invalid/hook",
            "the host name does not resolve",
        ),
    ] {
        let status = c
            .create_endpoint(CreateEndpointRequest {
                tenant: "acme".into(),
                url: url.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{url}");
        assert!(
            status.message().starts_with(&format!("url: {rule}")),
            "{url}: {status:?}"
        );
        assert!(!status.message().contains("s3cr3t"), "{status:?}");
    }
    let public = c
        .create_endpoint(CreateEndpointRequest {
            tenant: "acme".into(),
            url: "https://93.184.216.34/hook".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    let status = c
        .update_endpoint(UpdateEndpointRequest {
            tenant: "acme".into(),
            id: public.id.clone(),
            url: Some(localhost.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("url: the host name is private"),
        "{status:?}"
    );
    c.delete_endpoint(DeleteEndpointRequest {
        tenant: "acme".into(),
        id: public.id,
    })
    .await
    .unwrap();

    // An endpoint saved before these rules (here: by a development instance on the same
    // database) is still refused when delivery comes to it.
    let development = start(settings(&db, &[("WORKER_ENABLED", "false")]), None).await;
    let created = development
        .client
        .clone()
        .create_endpoint(CreateEndpointRequest {
            tenant: "acme".into(),
            url: localhost,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = created.endpoint.unwrap().id;
    c.publish(publish("acme", "e1", "a.b", serde_json::json!({})))
        .await
        .unwrap();
    let worker = manual_worker(&s, Arc::new(clock.clone()));
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let attempts = c
        .list_attempts(ListAttemptsRequest {
            tenant: "acme".into(),
            endpoint_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attempts;
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].error.contains("refused"), "{:?}", attempts[0]);
    assert!(
        receiver.received().is_empty(),
        "a request reached the private address"
    );
}

#[test]
fn bad_encryption_key_exits_64_without_echoing_it() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_delivery-worker"),
        &[],
        &[
            ("DATABASE_URL", "postgres://127.0.0.1/x"),
            ("WEBHOOK_SECRET_ENCRYPTION_KEY", "c2hvcnQta2V5"),
        ],
    );
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(
        run.stderr.contains("WEBHOOK_SECRET_ENCRYPTION_KEY"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("c2hvcnQta2V5"), "{}", run.stderr);
}

#[tokio::test]
async fn a_batch_publishes_in_one_transaction_idempotently_per_event() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let mut svc = start(settings(&db, &[]), None).await;
    let c = &mut svc.client;
    endpoint(c, &receiver, "acme", "/all", &[]).await;
    endpoint(c, &receiver, "beta", "/beta", &[]).await;
    c.publish(publish("acme", "evt-a", "a.b", serde_json::json!({"n": 0})))
        .await
        .unwrap();

    // One invalid event refuses the whole batch, naming it, and enqueues nothing.
    let status = c
        .publish_batch(vec![
            publish("acme", "evt-b", "a.b", serde_json::json!({"n": 1})),
            publish("acme", "evt-c", "Not A Type", serde_json::json!({})),
        ])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("events[1].event_type"),
        "{status:?}"
    );

    let results = c
        .publish_batch(vec![
            publish("acme", "evt-a", "a.b", serde_json::json!({"n": 0})),
            publish("acme", "evt-b", "a.b", serde_json::json!({"n": 1})),
            publish("beta", "evt-b", "a.b", serde_json::json!({"n": 2})),
        ])
        .await
        .unwrap()
        .into_inner()
        .results;
    let summary: Vec<_> = results
        .iter()
        .map(|r| (r.duplicate, r.deliveries))
        .collect();
    assert_eq!(summary, [(true, 0), (false, 1), (false, 1)]);
    let received = eventually(Duration::from_secs(20), "three deliveries", || async {
        let got = receiver.received();
        (got.len() >= 3).then_some(got)
    })
    .await;
    let mut bodies: Vec<_> = received.iter().map(|r| r.body.as_str()).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#]);

    let too_many = (0..501)
        .map(|i| publish("acme", &format!("x{i}"), "a.b", serde_json::json!({})))
        .collect();
    assert_eq!(
        c.publish_batch(too_many).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}
