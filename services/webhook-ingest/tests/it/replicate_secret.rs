//! Replicate's signing secret fetched with an API token, and a rotated one picked up.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use lifecycle::Signals;
use test_support::{TestDatabase, http_client, internal_keys, sources};
use webhook_signature::{SigningKey, signature_header};

/// Replicate's `GET /v1/webhooks/default/secret`, with a key the test can rotate.
#[derive(Clone)]
struct FakeReplicate {
    base: String,
    key: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl FakeReplicate {
    async fn start(key: &str) -> Self {
        let key = Arc::new(Mutex::new(key.to_owned()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f) = (Arc::clone(&key), Arc::clone(&fetches));
        let server = HttpServer::new(move || {
            let (key, fetches) = (Arc::clone(&k), Arc::clone(&f));
            App::new().route(
                "/v1/webhooks/default/secret",
                web::get().to(move |req: HttpRequest| {
                    let (key, fetches) = (Arc::clone(&key), Arc::clone(&fetches));
                    async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        if auth != "Bearer r8_test_token" {
                            return HttpResponse::Unauthorized()
                                .json(serde_json::json!({"detail": "Invalid token."}));
                        }
                        let key = key.lock().unwrap().clone();
                        HttpResponse::Ok().json(serde_json::json!({ "key": key }))
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        tokio::spawn(server.run());
        Self {
            base: format!("http://127.0.0.1:{port}"),
            key,
            fetches,
        }
    }
}

async fn post_signed(base: &str, id: &str, secret: &str) -> u16 {
    let body = r#"{"id":"p1","status":"succeeded"}"#;
    let now = chrono::Utc::now().timestamp();
    let signature = signature_header(
        &[SigningKey::parse(secret).unwrap()],
        id,
        now,
        body.as_bytes(),
    );
    http_client()
        .post(format!(
            "{base}/api/replicate-webhook/sound_effect/job_{}",
            uuid::Uuid::new_v4().simple()
        ))
        .header("webhook-id", id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_secret_is_fetched_with_the_token_and_a_rotation_is_picked_up() {
    let (first, second) = (SigningKey::generate_hmac(), SigningKey::generate_hmac());
    let replicate = FakeReplicate::start(&first).await;
    let db = TestDatabase::create().await.unwrap();
    let mut settings = webhook_ingest::Settings::load(&sources([
        ("DATABASE_URL", db.url.clone()),
        ("REDIS_URL", test_support::redis_url()),
        (
            "INTERNAL_AUTH_KEY",
            internal_keys().signing("webhook-ingest").to_owned(),
        ),
        ("REPLICATE_API_URL", replicate.base.clone()),
        ("REPLICATE_API_TOKEN", "r8_test_token".to_owned()),
    ]))
    .unwrap();
    settings.secret_refresh = Duration::from_millis(500);
    let signals = Signals::new();
    let app = webhook_ingest::Application::build(settings, signals.clone()).unwrap();
    let (base, ops) = (
        format!("http://127.0.0.1:{}", app.port()),
        format!("http://127.0.0.1:{}", app.ops_port()),
    );
    let _task = tokio::spawn(app.stopped());
    test_support::wait_ready(&ops, 200).await;

    // Fetched at start-up (or at the first failure, should that come first).
    test_support::eventually(
        Duration::from_secs(10),
        "accepted with the fetched secret",
        || async {
            (post_signed(
                &base,
                &format!("msg_{}", uuid::Uuid::new_v4().simple()),
                &first,
            )
            .await
                == 200)
                .then_some(())
        },
    )
    .await;

    // Replicate rotates its secret: the first webhook signed with the new one is accepted after
    // one fetch, and the old secret no longer is.
    *replicate.key.lock().unwrap() = second.clone();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(post_signed(&base, "msg_rotated", &second).await, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(post_signed(&base, "msg_old", &first).await, 401);

    // A burst of bad signatures fetches at most once per interval.
    let before = replicate.fetches.load(Ordering::SeqCst);
    for i in 0..10 {
        assert_eq!(
            post_signed(&base, &format!("msg_bad{i}"), &first).await,
            401
        );
    }
    let fetched = replicate.fetches.load(Ordering::SeqCst) - before;
    assert!(fetched <= 2, "{fetched} fetches for a burst of 10 failures");
    signals.shutdown.cancel();
}
