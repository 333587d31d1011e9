//! Failure monitoring as the old operators knew it: per path, a sliding hour, the WEBHOOK ALERT
//! line at the threshold and /webhook-status, counted across two instances through Redis.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use test_stack::{Service, Stack};
use test_support::{TestDatabase, eventually, get_json, http_client, internal_keys, redis_url};
use webhook_signature::SigningKey;

/// Sends a Replicate webhook with a signature nobody trusts: one failure on `path`.
async fn fail(base: &str, path: &str) {
    let response = http_client()
        .post(format!("{base}{path}"))
        .header("webhook-id", "msg_forged")
        .header(
            "webhook-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header("webhook-signature", "v1,Zm9yZ2VkIHNpZ25hdHVyZQ==")
        .body(r#"{"id":"p","status":"succeeded"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
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
