//! Failure monitoring as the old operators knew it: per path, a sliding hour, the WEBHOOK ALERT
//! line at the threshold and /webhook-status, counted across two instances through Redis; the
//! alerts kept for the hour and listed over gRPC to their own tenant, and the routing rules.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use internal_rpc::{Principal, Scope, Scopes, on_behalf};
use sonora_proto::ingest::v1::{
    CreateSourceRequest, DeleteSourceRequest, ListRoutingRulesRequest, ListWebhookAlertsRequest,
    webhook_ingest_client::WebhookIngestClient,
};
use test_stack::{Service, Stack};
use test_support::{TestDatabase, eventually, get_json, http_client, internal_keys, redis_url};
use webhook_signature::SigningKey;

use crate::client_of;

/// Posts `body` to `path` with a signature nobody made, and returns the status it got.
async fn post_forged(base: &str, path: &str, body: &'static str) -> u16 {
    http_client()
        .post(format!("{base}{path}"))
        .header("webhook-id", "msg_forged")
        .header(
            "webhook-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header("webhook-signature", "v1,Zm9yZ2VkIHNpZ25hdHVyZQ==")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Sends a Replicate webhook with a signature nobody trusts: one failure on `path`.
async fn fail(base: &str, path: &str) {
    let status = post_forged(base, path, r#"{"id":"p","status":"succeeded"}"#).await;
    assert_eq!(status, 401);
}

async fn failures(base: &str, path: &str) -> Option<serde_json::Value> {
    let (status, body) = get_json(&format!("{base}/webhook-status")).await.ok()?;
    assert_eq!(status, 200, "{body}");
    Some(body["paths"][path].clone()).filter(|p| !p.is_null())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_across_instances_and_alert_at_the_threshold() {
    let db = TestDatabase::create().await.unwrap();
    let secret = SigningKey::generate_hmac();
    let stack = Stack::new(&db)
        .with_ingest()
        .setting(
            Service::WebhookIngest,
            "REPLICATE_WEBHOOK_SECRET",
            secret.clone(),
        )
        .start()
        .await;
    let a = stack.http_url(Service::WebhookIngest);

    // A second instance, as a real process whose log lines the test reads.
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhook-ingest"))
        .env_clear()
        .envs([
            ("DATABASE_URL", db.url.as_str()),
            ("REDIS_URL", redis_url().as_str()),
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("OPS_ADDR", "127.0.0.1:0"),
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("INTERNAL_AUTH_TRUSTED_KEYS", internal_keys().trusted()),
            (
                "INTERNAL_AUTH_KEY",
                internal_keys().signing("webhook-ingest"),
            ),
            ("REPLICATE_WEBHOOK_SECRET", secret.as_str()),
            ("WEBHOOK_FAILURE_ALERT_THRESHOLD", "5"),
            ("LOG_FORMAT", "json"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    {
        let (stdout, lines) = (child.stdout.take().unwrap(), Arc::clone(&lines));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str(&line) {
                    lines.lock().unwrap().push(event);
                }
            }
        });
    }
    let b_port = eventually(
        Duration::from_secs(30),
        "the second instance's port",
        || async {
            lines
                .lock()
                .unwrap()
                .iter()
                .find_map(|e| e["port"].as_u64())
        },
    )
    .await;
    let b = format!("http://127.0.0.1:{b_port}");

    let path = format!(
        "/api/replicate-webhook/sound_effect/job_{}",
        uuid::Uuid::new_v4().simple()
    );
    for _ in 0..2 {
        fail(&a, &path).await;
    }
    // Counting runs beside the request: wait until both are in Redis.
    eventually(Duration::from_secs(10), "two failures counted", || async {
        (failures(&b, &path).await?["failures_last_hour"] == 2).then_some(())
    })
    .await;
    for _ in 0..3 {
        fail(&b, &path).await;
    }
    let entry = eventually(Duration::from_secs(10), "five failures", || async {
        failures(&a, &path)
            .await
            .filter(|p| p["failures_last_hour"] == 5)
    })
    .await;
    assert_eq!(entry["status"], "alert", "{entry}");
    assert!(
        entry["last_failure"].as_str().unwrap().starts_with("20"),
        "{entry}"
    );

    let alerts = eventually(
        Duration::from_secs(10),
        "the WEBHOOK ALERT line",
        || async {
            let lines = lines.lock().unwrap();
            let alerts: Vec<_> = lines
                .iter()
                .filter(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("WEBHOOK ALERT") && m.contains(&path))
                })
                .cloned()
                .collect();
            (!alerts.is_empty()).then_some(alerts)
        },
    )
    .await;
    assert_eq!(alerts.len(), 1, "one line at the crossing: {alerts:?}");
    assert_eq!(alerts[0]["level"], "ERROR");
    // A sixth failure is counted but raises no second line.
    fail(&b, &path).await;
    eventually(Duration::from_secs(10), "six failures", || async {
        (failures(&a, &path).await?["failures_last_hour"] == 6).then_some(())
    })
    .await;
    let count = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("WEBHOOK ALERT"))
        })
        .count();
    assert_eq!(count, 1);

    let (status, body) = get_json(&format!("{a}/webhook-status")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        (
            &body["monitoring"],
            &body["failure_threshold"],
            &body["webhook_timeout"]
        ),
        (
            &serde_json::json!("enabled"),
            &serde_json::json!(5),
            &serde_json::json!(30)
        )
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// One failure on a generic source's path: a webhook with a signature nobody made.
async fn fail_source(base: &str, name: &str) {
    let path = format!("/api/v1/webhooks/{name}");
    let status = post_forged(base, &path, r#"{"type":"order.created"}"#).await;
    assert!((400..500).contains(&status), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_kept_for_the_hour_and_shown_to_their_own_tenant() {
    let db = TestDatabase::create().await.unwrap();
    let secret = SigningKey::generate_hmac();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let (orders, spare) = (format!("orders-{suffix}"), format!("spare-{suffix}"));
    let rules = serde_json::json!([
        {"name": "acme-orders", "source": orders, "event": "order", "tenant": "acme", "actions": ["publish"]},
        {"name": "beta-github", "source": "github", "event": "issues", "tenant": "beta", "actions": ["publish"]},
        {"name": "beta-on-orders", "source": orders, "tenant": "beta", "actions": ["publish"]}
    ]);
    let stack = Stack::new(&db)
        .with_ingest()
        .setting(
            Service::WebhookIngest,
            "REPLICATE_WEBHOOK_SECRET",
            secret.clone(),
        )
        .setting(
            Service::WebhookIngest,
            "WEBHOOK_FAILURE_ALERT_THRESHOLD",
            "2",
        )
        .setting(Service::WebhookIngest, "ROUTING_RULES", rules.to_string())
        .start()
        .await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    let base = stack.http_url(Service::WebhookIngest);
    let mut api = WebhookIngestClient::new(stack.peer("gateway", Service::WebhookIngest).channel());
    let (acme, beta) = (
        client_of("acme", Scopes::of([Scope::Webhooks])),
        client_of("beta", Scopes::of([Scope::Webhooks])),
    );
    for name in [&orders, &spare] {
        api.create_source(on_behalf(
            CreateSourceRequest {
                name: name.clone(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap();
    }
    let reader = api.clone();
    let alerts_of = |principal: Option<&Principal>, tenant: &str| {
        let mut api = reader.clone();
        let request = ListWebhookAlertsRequest {
            tenant: tenant.to_owned(),
        };
        let request = match principal {
            Some(p) => on_behalf(request, p),
            None => tonic::Request::new(request),
        };
        async move { api.list_webhook_alerts(request).await }
    };
    let none = alerts_of(Some(&acme), "").await.unwrap().into_inner();
    assert!(none.monitoring_enabled);
    assert_eq!(none.failure_threshold, 2);
    assert!(none.alerts.is_empty(), "{none:?}");

    // acme's orders path and a Replicate path reach the threshold; the spare source stays
    // under it.
    let replicate = format!(
        "/api/replicate-webhook/sound_effect/job_{}",
        uuid::Uuid::new_v4().simple()
    );
    for _ in 0..3 {
        fail_source(&base, &orders).await;
    }
    fail_source(&base, &spare).await;
    for _ in 0..2 {
        fail(&base, &replicate).await;
    }
    let orders_path = format!("/api/v1/webhooks/{orders}");
    let listed = eventually(Duration::from_secs(10), "acme's alert", || async {
        let listed = alerts_of(Some(&acme), "").await.unwrap().into_inner();
        (listed.alerts.first()?.failures_last_hour == 3).then_some(listed)
    })
    .await;
    assert_eq!(listed.alerts.len(), 1, "{listed:?}");
    let alert = &listed.alerts[0];
    assert_eq!(
        (alert.path.as_str(), alert.source.as_str()),
        (orders_path.as_str(), orders.as_str())
    );
    let age = chrono::Utc::now().timestamp_millis() - alert.raised_at_unix_ms;
    assert!((0..60_000).contains(&age), "{age}");

    // beta sees nothing of acme's, nor the Replicate receiver's; nor may it name acme.
    let theirs = alerts_of(Some(&beta), "").await.unwrap().into_inner();
    assert!(theirs.alerts.is_empty(), "{theirs:?}");
    let named = alerts_of(Some(&beta), "acme").await.unwrap_err();
    assert_eq!(named.code(), tonic::Code::PermissionDenied);
    // The gateway on its own (an operator's tool) sees both, the Replicate one of no source.
    let operator = eventually(Duration::from_secs(10), "the Replicate alert", || async {
        let all = alerts_of(None, "").await.unwrap().into_inner();
        all.alerts
            .iter()
            .any(|a| a.path == replicate)
            .then_some(all)
    })
    .await;
    let replicate_alert = operator
        .alerts
        .iter()
        .find(|a| a.path == replicate)
        .unwrap();
    assert_eq!(replicate_alert.source, "");
    assert_eq!(replicate_alert.failures_last_hour, 2);
    assert!(operator.alerts.iter().any(|a| a.path == orders_path));
    assert!(operator.alerts.len() <= 100);
    let filtered = alerts_of(None, "acme").await.unwrap().into_inner();
    assert_eq!(filtered.alerts.len(), 1, "{filtered:?}");

    // A source deleted and taken again by another tenant does not bring its alert along.
    api.delete_source(on_behalf(
        DeleteSourceRequest {
            name: orders.clone(),
            ..Default::default()
        },
        &acme,
    ))
    .await
    .unwrap();
    assert!(
        alerts_of(Some(&acme), "")
            .await
            .unwrap()
            .into_inner()
            .alerts
            .is_empty()
    );
    api.create_source(on_behalf(
        CreateSourceRequest {
            name: orders.clone(),
            ..Default::default()
        },
        &beta,
    ))
    .await
    .unwrap();
    let after = alerts_of(Some(&beta), "").await.unwrap().into_inner();
    assert!(after.alerts.is_empty(), "{after:?}");

    // The routing rules: each tenant the rules that concern it, the operator all of them.
    let rules_of = |principal: Option<&Principal>| {
        let mut api = reader.clone();
        let request = match principal {
            Some(p) => on_behalf(ListRoutingRulesRequest::default(), p),
            None => tonic::Request::new(ListRoutingRulesRequest::default()),
        };
        async move {
            api.list_routing_rules(request)
                .await
                .unwrap()
                .into_inner()
                .rules
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(rules_of(Some(&acme)).await, ["acme-orders"]);
    assert_eq!(
        rules_of(Some(&beta)).await,
        ["beta-github", "beta-on-orders"]
    );
    assert_eq!(
        rules_of(None).await,
        ["acme-orders", "beta-github", "beta-on-orders"]
    );
    let full = api
        .list_routing_rules(on_behalf(ListRoutingRulesRequest::default(), &acme))
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(
        (
            full[0].source.as_str(),
            full[0].event.as_str(),
            full[0].tenant.as_str(),
            full[0].actions.clone()
        ),
        (orders.as_str(), "order", "acme", vec!["publish".to_owned()])
    );
}
