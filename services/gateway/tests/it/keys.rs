//! API keys: refused when missing, unknown, expired or revoked (401) or without the scope (403);
//! made, listed and revoked by a tenant's admins within their tenant; revocation seen by a second
//! replica within a second; and the operator's `gateway keys` tool.

use std::time::{Duration, Instant};

use internal_rpc::Scope;
use test_stack::{Service, Stack};
use test_support::{TestDatabase, redis_url};

async fn call(
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = test_support::http_client().request(method, url);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn verify(base: &str, key: &str) -> u16 {
    call(
        reqwest::Method::GET,
        &format!("{base}/v1/auth/verify"),
        Some(key),
        None,
    )
    .await
    .0
}

#[tokio::test]
async fn keys_let_in_their_tenant_with_their_scopes_only() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_gateway().start().await;
    let base = stack.http_url(Service::Gateway);
    let admin = stack.api_key("acme", &[Scope::Admin]).await;
    let url = format!("{base}/v1/auth/verify");

    // Missing, unknown, malformed: 401 as problem+json, saying how to send a key.
    let (status, body) = call(reqwest::Method::GET, &url, None, None).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (401, Some("/problems/unauthorized")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("x-api-key"),
        "{body}"
    );
    for wrong in [
        "cw_live_notarealkeynotarealkeynotarealkey",
        "short",
        &"x".repeat(5000),
    ] {
        assert_eq!(verify(&base, wrong).await, 401, "{wrong:.20}");
    }
    // Bearer works as well as x-api-key.
    let response = test_support::http_client()
        .get(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let me: serde_json::Value = response.json().await.unwrap();
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["scopes"], serde_json::json!(["admin"]));
    assert!(
        me.get("hash").is_none() && !me.to_string().contains(&admin[10..]),
        "{me}"
    );

    // An admin makes a key, shown once; it works, and lists without its secret.
    let (status, made) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/admin/api-keys"),
        Some(&admin),
        Some(serde_json::json!({"name": "Voice bot", "scopes": ["tts"]})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("cw_live_"), "{made}");
    assert_eq!(verify(&base, &key).await, 200);
    let (_, listed) = call(
        reqwest::Method::GET,
        &format!("{base}/v1/admin/api-keys"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2, "{listed}");
    assert!(
        !listed.to_string().contains(&key),
        "the key is never shown again"
    );

    // Scopes: the new key cannot manage keys (403), nor make voices of another scope.
    let (status, body) = call(
        reqwest::Method::GET,
        &format!("{base}/v1/admin/api-keys"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("admin"), "{body}");
    let (status, _) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/tts"),
        Some(&admin),
        Some(serde_json::json!({"text": "Hi."})),
    )
    .await;
    assert_eq!(status, 403, "the admin key has no tts scope");

    // Bad requests name the field.
    for (body, field) in [
        (
            serde_json::json!({"name": "x", "scopes": ["root"]}),
            "scopes",
        ),
        (serde_json::json!({"name": "", "scopes": ["tts"]}), "name"),
        (
            serde_json::json!({"name": "x", "scopes": ["tts"], "plan": "gold"}),
            "plan",
        ),
        (
            serde_json::json!({"name": "x", "scopes": ["tts"], "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ] {
        let (status, problem) = call(
            reqwest::Method::POST,
            &format!("{base}/v1/admin/api-keys"),
            Some(&admin),
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with(field),
            "{problem}"
        );
    }

    // Another tenant's admin sees none of acme's keys and cannot revoke them.
    let globex = stack.api_key("globex", &[Scope::Admin]).await;
    let id = made["id"].as_str().unwrap();
    let (status, _) = call(
        reqwest::Method::DELETE,
        &format!("{base}/v1/admin/api-keys/{id}"),
        Some(&globex),
        None,
    )
    .await;
    assert_eq!(status, 404, "another tenant's key does not exist for it");
    let (_, theirs) = call(
        reqwest::Method::GET,
        &format!("{base}/v1/admin/api-keys"),
        Some(&globex),
        None,
    )
    .await;
    assert_eq!(theirs["keys"].as_array().unwrap().len(), 1);
    assert_eq!(verify(&base, &key).await, 200, "still valid");

    // Revoked: 401 at once on this replica.
    let (status, revoked) = call(
        reqwest::Method::DELETE,
        &format!("{base}/v1/admin/api-keys/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (status, body) = call(reqwest::Method::GET, &url, Some(&key), None).await;
    assert_eq!(status, 401);
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // Expired: 401 saying so.
    let (_, soon) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/admin/api-keys"),
        Some(&admin),
        Some(serde_json::json!({
            "name": "Short-lived", "scopes": ["tts"],
            "expires_at": (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339(),
        })),
    )
    .await;
    let soon = soon["key"].as_str().unwrap().to_owned();
    assert_eq!(verify(&base, &soon).await, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = call(reqwest::Method::GET, &url, Some(&soon), None).await;
    assert_eq!(status, 401);
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_every_replica_within_a_second() {
    let db = TestDatabase::create().await.unwrap();
    let first = Stack::new(&db).with_gateway().start().await;
    let second = Stack::new(&db).with_gateway().start().await;
    let (one, two) = (
        first.http_url(Service::Gateway),
        second.http_url(Service::Gateway),
    );
    let admin = first.api_key("acme", &[Scope::Admin, Scope::Tts]).await;
    let (_, made) = call(
        reqwest::Method::POST,
        &format!("{one}/v1/admin/api-keys"),
        Some(&admin),
        Some(serde_json::json!({"name": "to revoke", "scopes": ["tts"]})),
    )
    .await;
    let key = made["key"].as_str().unwrap().to_owned();
    // Both replicas have it cached.
    assert_eq!(verify(&one, &key).await, 200);
    assert_eq!(verify(&two, &key).await, 200);
    // Let both subscriptions settle before the revocation is published.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = made["id"].as_str().unwrap();
    let (status, _) = call(
        reqwest::Method::DELETE,
        &format!("{one}/v1/admin/api-keys/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let revoked = Instant::now();
    loop {
        if verify(&two, &key).await == 401 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "the second replica still lets the key in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_key_tool_creates_lists_revokes_and_prints_sql() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDatabase::create()).unwrap();
    let redis = redis_url();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("LOG_FORMAT", "text"),
    ];
    let gateway = env!("CARGO_BIN_EXE_gateway");

    let made = test_support::run_binary(
        gateway,
        &[
            "keys",
            "create",
            "-n",
            "2",
            "--prefix",
            "cw_live_",
            "--name-prefix",
            "Production Key",
            "--tenant",
            "acme",
        ],
        &env,
    );
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let keys: Vec<&str> = made
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Full Key: "))
        .collect();
    assert_eq!(keys.len(), 2, "{}", made.stdout);
    assert!(keys.iter().all(|k| k.starts_with("cw_live_")));
    assert!(made.stdout.contains("Prefix:   cw_live_") && made.stdout.contains("Hash:     "));
    assert!(made.stdout.contains("Store these keys securely"));
    assert!(made.stdout.contains("Production Key 2"));
    assert!(!made.stderr.contains(keys[0]), "keys never reach the log");

    let listed = test_support::run_binary(gateway, &["keys", "list", "--tenant", "acme"], &env);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    assert_eq!(listed.stdout.lines().count(), 2, "{}", listed.stdout);
    assert!(!listed.stdout.contains(keys[0]));
    let id = listed
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let revoked = test_support::run_binary(gateway, &["keys", "revoke", &id], &env);
    assert_eq!(revoked.code, Some(0), "{}", revoked.stderr);
    let listed = test_support::run_binary(gateway, &["keys", "list"], &env);
    assert!(listed.stdout.contains("revoked"), "{}", listed.stdout);

    // --sql writes nothing and prints statements that psql can run.
    let sql = test_support::run_binary(
        gateway,
        &["keys", "create", "-n", "3", "--sql", "--tenant", "globex"],
        &env,
    );
    assert_eq!(sql.code, Some(0), "{}", sql.stderr);
    assert_eq!(
        sql.stdout.matches("INSERT INTO gateway.api_keys").count(),
        3,
        "{}",
        sql.stdout
    );
    let before = test_support::run_binary(gateway, &["keys", "list", "--tenant", "globex"], &env);
    assert_eq!(before.stdout.trim(), "", "nothing written");
    let file = std::env::temp_dir().join(format!("{}-keys.sql", db.name));
    std::fs::write(&file, &sql.stdout).unwrap();
    let applied = test_support::run_binary(
        "/usr/bin/psql",
        &[
            &db.url,
            "-v",
            "ON_ERROR_STOP=1",
            "-qf",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(applied.code, Some(0), "{}", applied.stderr);
    let after = test_support::run_binary(gateway, &["keys", "list", "--tenant", "globex"], &env);
    assert_eq!(after.stdout.lines().count(), 3, "{}", after.stdout);

    // Mistakes are named, with the usage.
    let bad = test_support::run_binary(gateway, &["keys", "create", "-n", "zero"], &env);
    assert_eq!(bad.code, Some(1), "{}", bad.stderr);
    assert!(bad.stderr.contains("-n must be a number"), "{}", bad.stderr);
    let _ = std::fs::remove_file(file);
}
