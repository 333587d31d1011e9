//! `/metrics` keeps a delivered series for the endpoints that exist, and only for them.

use std::time::Duration;

use sonora_proto::delivery::v1::{CreateEndpointRequest, DeleteEndpointRequest};
use test_support::{TestDatabase, eventually};

use crate::support::{Receiver, endpoint, psql, publish, settings, start};

async fn scrape(http_port: u16) -> String {
    test_support::http_client()
        .get(format!("http://127.0.0.1:{http_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn delivered_series(metrics: &str, endpoint: &str) -> Option<String> {
    metrics
        .lines()
        .find(|line| {
            line.starts_with("webhooks_delivered_total{")
                && line.contains(&format!("endpoint=\"{endpoint}\""))
        })
        .map(str::to_owned)
}

#[tokio::test]
async fn a_deleted_endpoints_delivered_series_disappears() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let mut s = settings(&db, &[]);
    s.metrics_refresh = Duration::from_millis(200);
    // Another instance, API only, is where the endpoint is deleted: the delivering instance
    // learns of it from the store, not from its own API.
    let api_only = start(settings(&db, &[("WORKER_ENABLED", "false")]), None).await;
    let svc = start(s, None).await;
    let mut c = svc.client.clone();
    let (gone, _) = endpoint(&mut c, &receiver, "acme", "/gone", &[]).await;
    let (stays, _) = endpoint(&mut c, &receiver, "acme", "/stays", &[]).await;
    c.publish(publish("acme", "e1", "a.b", serde_json::json!({})))
        .await
        .unwrap();
    let before = eventually(Duration::from_secs(20), "both series", || async {
        let metrics = scrape(svc.http_port).await;
        (delivered_series(&metrics, &gone).is_some()
            && delivered_series(&metrics, &stays).is_some())
        .then_some(metrics)
    })
    .await;
    assert_eq!(
        delivered_series(&before, &gone).unwrap(),
        format!("webhooks_delivered_total{{endpoint=\"{gone}\",tenant=\"acme\"}} 1")
    );

    api_only
        .client
        .clone()
        .delete_endpoint(DeleteEndpointRequest {
            tenant: "acme".into(),
            id: gone.clone(),
        })
        .await
        .unwrap();
    let after = eventually(
        Duration::from_secs(10),
        "the deleted endpoint's series to go",
        || async {
            let metrics = scrape(svc.http_port).await;
            delivered_series(&metrics, &gone)
                .is_none()
                .then_some(metrics)
        },
    )
    .await;
    assert!(
        delivered_series(&after, &stays).is_some(),
        "the live endpoint's series stays: {after}"
    );
}

/// Each endpoint has its series; a tenant cannot add them without end.
#[tokio::test]
async fn a_tenant_has_at_most_a_thousand_endpoints() {
    let db = TestDatabase::create().await.unwrap();
    let svc = start(settings(&db, &[("WORKER_ENABLED", "false")]), None).await;
    let mut c = svc.client.clone();
    psql(
        &db,
        "INSERT INTO endpoints (id, tenant, url, created_at, updated_at) \
         SELECT 'ep_' || lpad(to_hex(n), 32, '0'), 'acme', 'https://example.com/' || n, now(), now() \
         FROM generate_series(1, 999) AS n",
    );
    let create = |tenant: &str| CreateEndpointRequest {
        tenant: tenant.into(),
        url: "http://127.0.0.1:9/hook".into(),
        ..Default::default()
    };
    c.create_endpoint(create("acme"))
        .await
        .expect("the thousandth endpoint");
    let status = c.create_endpoint(create("acme")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            tonic::Code::ResourceExhausted,
            "the tenant already has 1000 endpoints, the most it may have"
        )
    );
    // Other tenants are not affected, and deleting one makes room.
    c.create_endpoint(create("beta")).await.unwrap();
    c.delete_endpoint(DeleteEndpointRequest {
        tenant: "acme".into(),
        id: format!("ep_{:032x}", 7),
    })
    .await
    .unwrap();
    c.create_endpoint(create("acme")).await.unwrap();
}
