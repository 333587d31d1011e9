//! Partner webhook endpoints through the public API, against the real delivery-worker: created,
//! checked, listed page by page, changed, tested with an example that arrives signed at a real
//! receiver, their secret rotated, deliveries and attempts listed, retried and redriven, deleted;
//! and every route kept to its tenant.

use std::time::Duration;

use internal_rpc::Scope;
use reqwest::Method;
use serde_json::{Value, json};
use test_stack::{Service, Stack};
use test_support::{
    TestDatabase, eventually,
    receiver::{Behavior, Receiver},
};

/// Sends `method` to `base` + `path` with an API key and an optional JSON body; the status, the
/// headers and the JSON body (null when there is none).
pub(crate) async fn call(
    method: Method,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = test_support::http_client()
        .request(method, url)
        .header("x-api-key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap_or_default())
}

/// The status and the problem's detail of a refused call, for asserting both at once.
pub(crate) async fn refused(
    method: Method,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, String) {
    let (status, headers, body) = call(method, url, key, body).await;
    if status >= 400 {
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{url}: {body}"
        );
    }
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_endpoints_through_the_public_api() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_delivery()
        .with_ingest()
        .with_gateway()
        // One retry, at once: a failing delivery is a dead letter after its second attempt.
        .setting(Service::DeliveryWorker, "WEBHOOK_RETRY_SCHEDULE", "50ms")
        .setting(Service::DeliveryWorker, "WEBHOOK_RETRY_JITTER", "0")
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let acme = stack.api_key("acme", &[Scope::Webhooks]).await;
    let beta = stack.api_key("beta", &[Scope::Webhooks]).await;
    let audio_only = stack.api_key("acme", &[Scope::Audio]).await;
    let receiver = Receiver::start().await;
    let endpoints = format!("{base}/v1/webhook-endpoints");

    // Refusals name the field and the rule, and create nothing.
    for (body, status, detail) in [
        (
            json!({"url": "ftp://partner.example/hook"}),
            400,
            "url: must be an absolute http or https URL",
        ),
        (
            json!({"url": "not a url"}),
            400,
            "url: must be an absolute http or https URL",
        ),
        (
            json!({"url": receiver.url("/a"), "event_types": ["audio.nope"]}),
            400,
            "event_types[0]: \"audio.nope\" is not a known event type",
        ),
        (
            json!({"url": receiver.url("/a"), "event_types": ["*", "audio.job.failed"]}),
            400,
            "event_types: \"*\" means every type and must be the only entry",
        ),
        (
            json!({"url": receiver.url("/a"), "event_types": []}),
            400,
            "event_types: must name at least one type",
        ),
        (
            json!({"url": receiver.url("/a"), "description": "x".repeat(1025)}),
            400,
            "description: must be at most 1024 bytes",
        ),
        (
            json!({"url": receiver.url("/a"), "channels": ["no spaces"]}),
            400,
            "channels[0]: must be 1 to 128",
        ),
        (
            json!({"url": receiver.url("/a"), "rate_limit_per_second": 10_001}),
            400,
            "rate_limit_per_second: must be at most 10000",
        ),
        (
            json!({"url": receiver.url("/a"), "signing": "rsa"}),
            400,
            "signing: must be hmac-sha256 or ed25519",
        ),
        (
            json!({"url": receiver.url("/a"), "secret": "whsec_x"}),
            400,
            "unknown field `secret`",
        ),
        (json!({"description": "no url"}), 400, "missing field `url`"),
        // delivery-worker's own rule comes back in its words.
        (
            json!({"url": receiver.url("/a"), "metadata": (0..51).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            400,
            "metadata: allows at most 50 keys",
        ),
    ] {
        let (got, detail_got) = refused(Method::POST, &endpoints, &acme, Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {detail_got}");
        assert!(detail_got.contains(detail), "{body}: {detail_got}");
        assert!(!detail_got.contains("::"), "no Rust type in {detail_got}");
    }
    let (status, _, array) = call(
        Method::POST,
        &endpoints,
        &acme,
        Some(json!([receiver.url("/a")])),
    )
    .await;
    assert_eq!(
        (status, array["detail"].as_str()),
        (400, Some("The body must be a JSON object."))
    );
    let (status, _, list) = call(Method::GET, &endpoints, &acme, None).await;
    assert_eq!(
        (status, list["data"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{list}"
    );

    // Created: 201, where it is, and no secret in sight.
    let (status, headers, endpoint) = call(
        Method::POST,
        &endpoints,
        &acme,
        Some(json!({
            "url": receiver.url("/acme"),
            "description": "narration app",
            "event_types": ["audio.job.failed"],
            "metadata": {"team": "audio"}
        })),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let id = endpoint["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ep_"));
    assert_eq!(
        headers["location"],
        format!("/v1/webhook-endpoints/{id}").as_str()
    );
    assert_eq!(endpoint["event_types"], json!(["audio.job.failed"]));
    assert_eq!(endpoint["enabled"], true);
    assert_eq!(endpoint["signing"], "hmac-sha256");
    assert_eq!(endpoint["metadata"], json!({"team": "audio"}));
    assert_eq!(endpoint["rate_limit_per_second"], Value::Null);
    let text = endpoint.to_string();
    assert!(
        !text.contains("whsec_") && !text.contains("secret"),
        "{text}"
    );
    let one = format!("{endpoints}/{id}");

    // Read, and listed page by page.
    let (status, _, read) = call(Method::GET, &one, &acme, None).await;
    assert_eq!((status, &read), (200, &endpoint));
    let mut others = Vec::new();
    for path in ["/second", "/third"] {
        let (status, _, other) = call(
            Method::POST,
            &endpoints,
            &acme,
            Some(json!({"url": receiver.url(path)})),
        )
        .await;
        assert_eq!(status, 201);
        others.push(format!("{endpoints}/{}", other["id"].as_str().unwrap()));
    }
    let (status, _, page) = call(Method::GET, &format!("{endpoints}?limit=2"), &acme, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["data"][0]["id"], id.as_str());
    let cursor = page["next_cursor"].as_str().unwrap();
    let (status, _, rest) = call(
        Method::GET,
        &format!("{endpoints}?limit=2&cursor={cursor}"),
        &acme,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["event_types"], json!(["*"]));
    assert!(rest.get("next_cursor").is_none(), "{rest}");
    assert_eq!(
        refused(
            Method::GET,
            &format!("{endpoints}?cursor=nonsense"),
            &acme,
            None
        )
        .await,
        (400, "cursor: is not one this API gave out".to_owned())
    );
    assert_eq!(
        refused(Method::GET, &format!("{endpoints}?limit=0"), &acme, None).await,
        (400, "limit: must be between 1 and 500".to_owned())
    );
    assert_eq!(
        refused(Method::GET, &format!("{endpoints}?page=2"), &acme, None)
            .await
            .0,
        400
    );
    // A published event reaches every endpoint subscribed to it, so the two that take every type
    // go before the test examples.
    for other in others {
        let (status, _, _) = call(Method::DELETE, &other, &acme, None).await;
        assert_eq!(status, 204);
    }

    // Changed: the fields given only.
    let (status, _, changed) = call(
        Method::PATCH,
        &one,
        &acme,
        Some(json!({"description": "narration app (prod)", "rate_limit_per_second": 5})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["description"], "narration app (prod)");
    assert_eq!(changed["rate_limit_per_second"], 5);
    assert_eq!(changed["event_types"], json!(["audio.job.failed"]));
    assert_eq!(changed["url"], receiver.url("/acme"));
    assert_eq!(
        refused(
            Method::PATCH,
            &one,
            &acme,
            Some(json!({"url": "mailto:a@b.c"}))
        )
        .await,
        (400, "url: must be an absolute http or https URL".to_owned())
    );
    assert_eq!(
        refused(Method::PATCH, &one, &acme, Some(json!({"colour": "red"})))
            .await
            .0,
        400
    );

    // A wrong method is 405 naming the right ones.
    let (status, headers, _) = call(Method::PUT, &one, &acme, Some(json!({}))).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, PATCH, DELETE");
    let (status, headers, _) = call(Method::GET, &format!("{one}/test"), &acme, None).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");

    // The secret is shown by its route only; the test example arrives signed with it.
    let (status, headers, secret) = call(Method::GET, &format!("{one}/secret"), &acme, None).await;
    assert_eq!(status, 200, "{secret}");
    assert_eq!(headers["cache-control"], "no-store");
    let first_key = secret["key"].as_str().unwrap().to_owned();
    assert!(first_key.starts_with("whsec_"), "{secret}");
    receiver.trust_only("/acme", &[&first_key]);
    let (status, _, sent) = call(Method::POST, &format!("{one}/test"), &acme, None).await;
    assert_eq!(status, 202, "{sent}");
    assert_eq!(sent["event_type"], "audio.job.failed");
    assert_eq!(sent["deliveries"], 1);
    assert!(sent["event_id"].as_str().unwrap().starts_with("evt_"));
    let message_id = sent["message_id"].as_str().unwrap().to_owned();
    let got = eventually(Duration::from_secs(20), "the test example", || async {
        receiver.received_on("/acme").into_iter().next()
    })
    .await;
    assert!(got.verified, "signed with the secret the API shows");
    let body: Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(body["event_type"], "audio.job.failed");
    assert_eq!(
        refused(
            Method::POST,
            &format!("{one}/test"),
            &acme,
            Some(json!({"event_type": "audio.sound_effect.completed"}))
        )
        .await,
        (
            400,
            "event_type: the endpoint does not subscribe to audio.sound_effect.completed"
                .to_owned()
        )
    );
    assert_eq!(
        refused(
            Method::POST,
            &format!("{one}/test"),
            &acme,
            Some(json!({"event_type": "x"}))
        )
        .await
        .0,
        400
    );

    // Rotated: a new secret signs from now on (the old one beside it for a while).
    let (status, _, rotated) = call(
        Method::POST,
        &format!("{one}/secret/rotate"),
        &acme,
        Some(json!({"old_secret_ttl_seconds": 60})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let second_key = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(second_key, first_key);
    let (_, _, now_shown) = call(Method::GET, &format!("{one}/secret"), &acme, None).await;
    assert_eq!(now_shown["key"], second_key.as_str());
    assert_eq!(
        refused(
            Method::POST,
            &format!("{one}/secret/rotate"),
            &acme,
            Some(json!({"old_secret_ttl_seconds": 604_801}))
        )
        .await,
        (
            400,
            "old_secret_ttl_seconds: must be between 1 and 604800 (7 days)".to_owned()
        )
    );
    receiver.trust_only("/acme", &[&second_key]);
    let (status, _, _) = call(
        Method::POST,
        &format!("{one}/test"),
        &acme,
        Some(json!({"event_type": "audio.job.failed"})),
    )
    .await;
    assert_eq!(status, 202);
    let second = eventually(Duration::from_secs(20), "the second example", || async {
        receiver.received_on("/acme").get(1).cloned()
    })
    .await;
    assert!(second.verified, "signed with the rotated secret");
    assert_eq!(
        second.signature.split(' ').count(),
        2,
        "both secrets sign during the overlap"
    );

    // Deliveries and their attempts.
    let deliveries = eventually(Duration::from_secs(20), "two delivered", || async {
        let (_, _, page) = call(
            Method::GET,
            &format!("{one}/deliveries?status=delivered"),
            &acme,
            None,
        )
        .await;
        (page["data"].as_array().map(Vec::len) == Some(2)).then_some(page)
    })
    .await;
    let first_delivery = deliveries["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["message_id"] == message_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(first_delivery["endpoint_id"], id.as_str());
    assert_eq!(first_delivery["attempt_count"], 1);
    let delivery_id = first_delivery["id"].as_str().unwrap().to_owned();
    let (status, _, filtered) = call(
        Method::GET,
        &format!("{one}/deliveries?message_id={message_id}"),
        &acme,
        None,
    )
    .await;
    assert_eq!(
        (status, filtered["data"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    assert_eq!(
        refused(
            Method::GET,
            &format!("{one}/deliveries?status=lost"),
            &acme,
            None
        )
        .await,
        (
            400,
            "status: must be one of pending, delivered, failed, dead_letter".to_owned()
        )
    );
    let (status, _, attempts) = call(
        Method::GET,
        &format!("{one}/attempts?delivery_id={delivery_id}"),
        &acme,
        None,
    )
    .await;
    assert_eq!(status, 200, "{attempts}");
    let attempt = &attempts["data"][0];
    assert_eq!(
        (
            attempt["outcome"].as_str(),
            attempt["response_status"].as_u64()
        ),
        (Some("success"), Some(200))
    );
    assert!(
        attempt["request_headers"]
            .get("webhook-signature")
            .is_none(),
        "{attempt}"
    );

    // A delivery retried is sent again.
    let (status, _, retried) = call(
        Method::POST,
        &format!("{base}/v1/deliveries/{delivery_id}/retry"),
        &acme,
        None,
    )
    .await;
    assert_eq!(
        (status, retried["id"].as_str()),
        (202, Some(delivery_id.as_str())),
        "{retried}"
    );
    eventually(Duration::from_secs(20), "the retried delivery", || async {
        (receiver.received_on("/acme").len() == 3).then_some(())
    })
    .await;
    assert_eq!(
        refused(
            Method::POST,
            &format!("{base}/v1/deliveries/dlv_00000000000000000000000000000000/retry"),
            &acme,
            None
        )
        .await,
        (
            404,
            "No delivery with this id exists for this tenant.".to_owned()
        )
    );

    // Dead letters are redriven.
    receiver.set("/failing", Behavior::status(500));
    let (status, _, failing) = call(
        Method::POST,
        &endpoints,
        &acme,
        Some(json!({"url": receiver.url("/failing"), "event_types": ["audio.sound_effect.completed"]})),
    )
    .await;
    assert_eq!(status, 201);
    let failing = format!("{endpoints}/{}", failing["id"].as_str().unwrap());
    let (_, _, key) = call(Method::GET, &format!("{failing}/secret"), &acme, None).await;
    receiver.trust("/failing", key["key"].as_str().unwrap());
    let (status, _, sent) = call(Method::POST, &format!("{failing}/test"), &acme, None).await;
    assert_eq!(
        (status, sent["event_type"].as_str()),
        (202, Some("audio.sound_effect.completed"))
    );
    eventually(Duration::from_secs(20), "a dead letter", || async {
        let (_, _, page) = call(
            Method::GET,
            &format!("{failing}/deliveries?status=dead_letter"),
            &acme,
            None,
        )
        .await;
        (page["data"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    receiver.set("/failing", Behavior::status(204));
    let (status, _, redriven) =
        call(Method::POST, &format!("{failing}/redrive"), &acme, None).await;
    assert_eq!((status, &redriven), (202, &json!({"redriven": 1})));
    eventually(Duration::from_secs(20), "the redriven delivery", || async {
        let (_, _, page) = call(
            Method::GET,
            &format!("{failing}/deliveries?status=delivered"),
            &acme,
            None,
        )
        .await;
        (page["data"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    assert_eq!(
        refused(
            Method::POST,
            &format!("{failing}/redrive"),
            &acme,
            Some(json!({"since": "2026-12-02T10:00:00Z", "until": "2026-12-01T10:00:00Z"}))
        )
        .await,
        (400, "until: must be later than since".to_owned())
    );
    assert_eq!(
        refused(
            Method::POST,
            &format!("{failing}/redrive"),
            &acme,
            Some(json!({"since": "last tuesday"}))
        )
        .await,
        (
            400,
            "since: must be an RFC 3339 time, such as 2026-12-02T10:00:00Z".to_owned()
        )
    );

    // Another tenant's endpoint and delivery are 404 on every route, never 403, and unchanged.
    let not_found = "No webhook endpoint with this id exists for this tenant.";
    for (method, url, body) in [
        (Method::GET, one.clone(), None),
        (
            Method::PATCH,
            one.clone(),
            Some(json!({"description": "mine now"})),
        ),
        (Method::DELETE, one.clone(), None),
        (Method::GET, format!("{one}/secret"), None),
        (Method::POST, format!("{one}/secret/rotate"), None),
        (Method::GET, format!("{one}/deliveries"), None),
        (Method::GET, format!("{one}/attempts"), None),
        (Method::POST, format!("{one}/redrive"), None),
        (Method::POST, format!("{one}/test"), None),
    ] {
        assert_eq!(
            refused(method.clone(), &url, &beta, body).await,
            (404, not_found.to_owned()),
            "{method} {url}"
        );
    }
    assert_eq!(
        refused(
            Method::POST,
            &format!("{base}/v1/deliveries/{delivery_id}/retry"),
            &beta,
            None
        )
        .await,
        (
            404,
            "No delivery with this id exists for this tenant.".to_owned()
        )
    );
    let (_, _, beta_list) = call(Method::GET, &endpoints, &beta, None).await;
    assert_eq!(beta_list["data"], json!([]));
    let (_, _, still) = call(Method::GET, &format!("{one}/secret"), &acme, None).await;
    assert_eq!(still["key"], second_key.as_str());
    assert_eq!(
        receiver.received_on("/acme").len(),
        3,
        "beta's test sent nothing to acme"
    );

    // Malformed ids name no resource.
    assert_eq!(
        refused(Method::GET, &format!("{endpoints}/ep_nope"), &acme, None)
            .await
            .0,
        404
    );
    assert_eq!(
        refused(
            Method::POST,
            &format!("{base}/v1/deliveries/42/retry"),
            &acme,
            None
        )
        .await
        .0,
        404
    );

    // A key without the webhooks scope is 403 naming it.
    for (method, url) in [
        (Method::GET, endpoints.clone()),
        (Method::POST, endpoints.clone()),
        (Method::GET, one.clone()),
        (Method::GET, format!("{one}/secret")),
        (Method::POST, format!("{one}/test")),
        (
            Method::POST,
            format!("{base}/v1/deliveries/{delivery_id}/retry"),
        ),
    ] {
        let body = (method == Method::POST).then(|| json!({"url": receiver.url("/x")}));
        assert_eq!(
            refused(method.clone(), &url, &audio_only, body).await,
            (
                403,
                "This API key does not have the webhooks scope.".to_owned()
            ),
            "{method} {url}"
        );
    }

    // A disabled endpoint is not tested; deleted, it is gone.
    let (status, _, _) = call(Method::PATCH, &one, &acme, Some(json!({"enabled": false}))).await;
    assert_eq!(status, 200);
    assert_eq!(
        refused(Method::POST, &format!("{one}/test"), &acme, None)
            .await
            .0,
        409
    );
    let (status, _, _) = call(Method::DELETE, &one, &acme, None).await;
    assert_eq!(status, 204);
    assert_eq!(
        refused(Method::GET, &one, &acme, None).await,
        (404, not_found.to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_routes_answer_503_with_retry_after_when_their_backend_is_down() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_gateway().start().await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("acme", &Scope::ALL).await;
    for url in [
        format!("{base}/v1/webhook-endpoints"),
        format!("{base}/v1/inbound/events"),
        format!("{base}/v1/inbound/sources"),
    ] {
        let (status, headers, body) = call(Method::GET, &url, &key, None).await;
        assert_eq!(status, 503, "{url}: {body}");
        assert_eq!(headers["retry-after"], "5");
        assert_eq!(headers["content-type"], "application/problem+json");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thousand_and_first_endpoint_is_a_conflict_naming_the_limit() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_delivery().with_gateway().start().await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("acme", &[Scope::Webhooks]).await;
    let endpoints = format!("{base}/v1/webhook-endpoints");
    let url = "http://127.0.0.1:9/hook";
    // 1,000 endpoints, 25 at a time.
    for batch in 0..40 {
        let created = futures::future::join_all(
            (0..25).map(|_| call(Method::POST, &endpoints, &key, Some(json!({"url": url})))),
        )
        .await;
        for (status, _, body) in created {
            assert_eq!(status, 201, "batch {batch}: {body}");
        }
    }
    let (status, headers, body) =
        call(Method::POST, &endpoints, &key, Some(json!({"url": url}))).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["type"], "/problems/endpoint-limit-reached");
    assert!(
        body["detail"].as_str().unwrap().contains("(1000)"),
        "{body}"
    );
    // Another tenant has its own allowance.
    let other = stack.api_key("beta", &[Scope::Webhooks]).await;
    let (status, _, _) = call(Method::POST, &endpoints, &other, Some(json!({"url": url}))).await;
    assert_eq!(status, 201);
}
