//! No gRPC method but health answers without a valid internal token; the tenant of a call made
//! for a client is the client's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use internal_rpc::{Minter, PeerSettings, Principal, Scope, Scopes, SigningKey, on_behalf};
use sonora_proto::delivery::v1::{
    CreateEndpointRequest, DeleteEndpointRequest, GetEndpointRequest, GetQueueStatsRequest,
    ListMessagesRequest, delivery_service_client::DeliveryServiceClient,
};
use test_support::{TestDatabase, eventually, grpc_health, internal_keys};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{acting, publish, settings, start};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client with no interceptor: each test writes the `authorization` metadata itself.
async fn raw(port: u16) -> DeliveryServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    DeliveryServiceClient::new(channel)
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn stats() -> GetQueueStatsRequest {
    GetQueueStatsRequest::default()
}

#[tokio::test]
async fn every_refusal_and_a_valid_call() {
    let db = TestDatabase::create().await.unwrap();
    let s = settings(&db, &[]);
    let svc = start(s, None).await;
    let port = svc.port;
    let mut client = raw(port).await;
    let gateway = internal_keys().minter("gateway");

    // No token at all.
    let status = client.get_queue_stats(stats()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Not a bearer token.
    let mut request = tonic::Request::new(stats());
    request
        .metadata_mut()
        .insert("authorization", "Basic Z2F0ZXdheTpwYXNz".parse().unwrap());
    assert_eq!(
        client.get_queue_stats(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // A signature that does not match.
    let good = gateway.token("delivery-worker", None).unwrap();
    let mut forged = good.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let status = client
        .get_queue_stats(with_token(stats(), &forged))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // A token for another service.
    let elsewhere = gateway.token("tts-inference", None).unwrap();
    let status = client
        .get_queue_stats(with_token(stats(), &elsewhere))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "the token is for another service")
    );
    // An expired token.
    let expired = gateway
        .sign(
            "delivery-worker",
            None,
            unix_now() - 300,
            Duration::from_secs(60),
        )
        .unwrap();
    let status = client
        .get_queue_stats(with_token(stats(), &expired))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "the token has expired")
    );
    // A key nobody trusts.
    let stranger = Minter::new(
        "gateway",
        SigningKey::parse(&SigningKey::generate()).unwrap(),
    );
    let status = client
        .get_queue_stats(with_token(
            stats(),
            &stranger.token("delivery-worker", None).unwrap(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A valid call.
    let stats = client
        .get_queue_stats(with_token(stats(), &good))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.pending, 0);

    // Valid tokens, methods that do not allow the caller or the scope.
    let mut relay = DeliveryServiceClient::new(
        internal_keys()
            .peer("audio-generation", "delivery-worker", port)
            .channel(),
    );
    let status = relay
        .list_messages(ListMessagesRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mut gateway_client = DeliveryServiceClient::new(
        internal_keys()
            .peer("gateway", "delivery-worker", port)
            .channel(),
    );
    let tts_only = Principal {
        tenant: ids::Tenant::parse("acme").unwrap(),
        key_id: Some(ids::KeyId::new()),
        scopes: Scopes::of([Scope::Tts]),
    };
    let status = gateway_client
        .list_messages(on_behalf(ListMessagesRequest::default(), &tts_only))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "the client's key does not have the webhooks scope"
        )
    );
    // A service acting for itself cannot reach a tenant's endpoints.
    let status = gateway_client
        .list_messages(ListMessagesRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Health needs no token.
    eventually(Duration::from_secs(10), "SERVING", || async {
        (grpc_health(port).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_tenant_comes_from_the_token_never_the_body() {
    let db = TestDatabase::create().await.unwrap();
    let svc = start(settings(&db, &[]), None).await;
    let mut c = svc.client.clone();
    let created = c
        .create_endpoint(CreateEndpointRequest {
            tenant: "acme".into(),
            url: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();

    let mut gateway = DeliveryServiceClient::new(
        internal_keys()
            .peer("gateway", "delivery-worker", svc.port)
            .channel(),
    );
    // A client of another tenant who writes acme's name in the body is refused...
    let status = gateway
        .get_endpoint(acting(
            "intruder",
            GetEndpointRequest {
                tenant: "acme".into(),
                id: created.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // ...and without a tenant in the body, its own tenant has no such endpoint.
    let status = gateway
        .get_endpoint(acting(
            "intruder",
            GetEndpointRequest {
                tenant: String::new(),
                id: created.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = gateway
        .delete_endpoint(acting(
            "intruder",
            DeleteEndpointRequest {
                tenant: String::new(),
                id: created.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // The owner, naming no tenant in the body, gets its endpoint; its queue statistics are its own.
    let own = gateway
        .get_endpoint(acting(
            "acme",
            GetEndpointRequest {
                tenant: String::new(),
                id: created.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.tenant, "acme");
    c.publish(publish("acme", "e1", "a.b", serde_json::json!({})))
        .await
        .unwrap();
    let theirs = gateway
        .get_queue_stats(acting("intruder", GetQueueStatsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(theirs.pending + theirs.failed + theirs.delivered, 0);
    let status = gateway
        .get_queue_stats(acting(
            "intruder",
            GetQueueStatsRequest {
                tenant: "acme".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_caller_key_rotation_accepts_the_old_and_new_key_until_the_old_is_dropped() {
    let db = TestDatabase::create().await.unwrap();
    let old = SigningKey::parse(internal_keys().signing("gateway")).unwrap();
    let new = SigningKey::parse(&SigningKey::generate()).unwrap();
    let both = format!("{},gateway={}", internal_keys().trusted(), new.public_key());
    let peer_with = |key: &SigningKey, port: u16| {
        let settings = PeerSettings {
            name: "delivery-worker",
            url: format!("http://127.0.0.1:{port}").parse().unwrap(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        };
        DeliveryServiceClient::new(
            internal_rpc::Peer::new(&settings, Minter::new("gateway", key.clone()))
                .unwrap()
                .channel(),
        )
    };

    // During the rotation the server trusts both keys.
    let svc = start(
        settings(&db, &[("INTERNAL_AUTH_TRUSTED_KEYS", both.as_str())]),
        None,
    )
    .await;
    for key in [&old, &new] {
        peer_with(key, svc.port)
            .get_queue_stats(stats())
            .await
            .expect("both keys are trusted during the rotation");
    }
    drop(svc);

    // Once the old key is dropped from the list, only the new one works.
    let only_new = format!("gateway={}", new.public_key());
    let svc = start(
        settings(&db, &[("INTERNAL_AUTH_TRUSTED_KEYS", only_new.as_str())]),
        None,
    )
    .await;
    let status = peer_with(&old, svc.port)
        .get_queue_stats(stats())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    peer_with(&new, svc.port)
        .get_queue_stats(stats())
        .await
        .unwrap();
}
