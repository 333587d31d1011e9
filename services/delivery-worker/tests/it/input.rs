//! Requests that cannot be right are refused at the edge, naming the field and the rule; ids are
//! typed end to end (`dlv_…` and `att_…` included) and page tokens are only those the API gave
//! out.

use std::time::Duration;

use sonora_proto::delivery::v1::{
    DeleteEndpointRequest, DeliveryStatus, GetEndpointRequest, GetEndpointSecretRequest,
    ListAttemptsRequest, ListDeliveriesRequest, ListEndpointsRequest, ListMessagesRequest,
    RedriveDeadLettersRequest, RetryDeliveryRequest, RotateEndpointSecretRequest,
    UpdateEndpointRequest,
};
use test_support::{TestDatabase, eventually};
use tonic::Code;

use crate::support::{Client, Receiver, endpoint, publish, settings, start};

const EP_SHAPE: &str = "must be \"ep_\" followed by 32 lowercase hexadecimal digits";

fn refused<T: std::fmt::Debug>(reply: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let status = reply.expect_err("the request was accepted");
    (status.code(), status.message().to_owned())
}

fn invalid(message: &str) -> (Code, String) {
    (Code::InvalidArgument, message.to_owned())
}

#[tokio::test]
async fn ids_of_the_wrong_shape_are_invalid_argument_naming_the_field() {
    let db = TestDatabase::create().await.unwrap();
    let svc = start(settings(&db, &[]), None).await;
    let mut c = svc.client.clone();
    let tenant = || "acme".to_owned();
    let expected = invalid(&format!("id: {EP_SHAPE}"));

    let got = refused(
        c.get_endpoint(GetEndpointRequest {
            tenant: tenant(),
            id: "ep_missing".into(),
        })
        .await,
    );
    assert_eq!(got, expected);
    let got = refused(
        c.update_endpoint(UpdateEndpointRequest {
            tenant: tenant(),
            id: "EP_0123456789ABCDEF0123456789ABCDEF".into(),
            description: Some("x".into()),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(got.0, Code::InvalidArgument, "{got:?}");
    assert!(got.1.starts_with("id: "), "{got:?}");
    let got = refused(
        c.delete_endpoint(DeleteEndpointRequest {
            tenant: tenant(),
            id: "ep_1".into(),
        })
        .await,
    );
    assert_eq!(got, expected);
    let got = refused(
        c.get_endpoint_secret(GetEndpointSecretRequest {
            tenant: tenant(),
            id: String::new(),
        })
        .await,
    );
    assert_eq!(got, invalid("id: is required"));
    // An id of another kind names the prefix it should have had.
    let got = refused(
        c.rotate_endpoint_secret(RotateEndpointSecretRequest {
            tenant: tenant(),
            id: ids::MessageId::new().to_string(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(got, invalid("id: must start with \"ep_\""));

    let got = refused(
        c.list_deliveries(ListDeliveriesRequest {
            tenant: tenant(),
            endpoint_id: "ep_missing".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(got, invalid(&format!("endpoint_id: {EP_SHAPE}")));
    let got = refused(
        c.list_deliveries(ListDeliveriesRequest {
            tenant: tenant(),
            message_id: "msg_<script>".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(
        got,
        invalid("message_id: must be \"msg_\" followed by 32 lowercase hexadecimal digits")
    );
    // Delivery ids used to be numbers; a number is not a delivery id any more.
    let got = refused(
        c.list_attempts(ListAttemptsRequest {
            tenant: tenant(),
            delivery_id: "42".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(got, invalid("delivery_id: must start with \"dlv_\""));
    let got = refused(
        c.retry_delivery(RetryDeliveryRequest {
            tenant: tenant(),
            delivery_id: String::new(),
        })
        .await,
    );
    assert_eq!(got, invalid("delivery_id: is required"));
    let got = refused(
        c.redrive_dead_letters(RedriveDeadLettersRequest {
            tenant: tenant(),
            endpoint_id: "ep_missing".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(got, invalid(&format!("endpoint_id: {EP_SHAPE}")));
}

/// Five messages to one endpoint, delivered and recorded: five deliveries and five attempts.
async fn five_delivered(c: &mut Client, receiver: &Receiver) -> String {
    let (ep, _) = endpoint(c, receiver, "acme", "/five", &[]).await;
    for i in 0..5 {
        c.publish(publish(
            "acme",
            &format!("evt-{i}"),
            "a.b",
            serde_json::json!({ "i": i }),
        ))
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(20), "five attempts recorded", || {
        let mut c = c.clone();
        async move {
            let attempts = c
                .list_attempts(ListAttemptsRequest {
                    tenant: "acme".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .attempts;
            (attempts.len() == 5).then_some(())
        }
    })
    .await;
    ep
}

#[tokio::test]
async fn deliveries_and_attempts_have_typed_ids_and_page_by_token() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let svc = start(settings(&db, &[]), None).await;
    let mut c = svc.client.clone();
    let ep = five_delivered(&mut c, &receiver).await;

    let mut deliveries = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_deliveries(ListDeliveriesRequest {
                tenant: "acme".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.deliveries.len() <= 2);
        deliveries.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(deliveries.len(), 5);
    for d in &deliveries {
        ids::DeliveryId::parse(&d.id).unwrap_or_else(|e| panic!("{}: {e}", d.id));
        assert_eq!(d.endpoint_id, ep);
    }
    let listed: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(listed, sorted, "pages are in id order, without repeats");

    // By the publisher's event id: that message's one delivery; another tenant's id is none of
    // this tenant's, and an id no publisher could send is refused.
    let by_event = |tenant: &str, event_id: &str| ListDeliveriesRequest {
        tenant: tenant.into(),
        event_id: event_id.into(),
        ..Default::default()
    };
    let of_three = c
        .list_deliveries(by_event("acme", "evt-3"))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(of_three.len(), 1, "{of_three:?}");
    assert!(listed.contains(&of_three[0].id.as_str()));
    assert_eq!(of_three[0].status(), DeliveryStatus::Delivered);
    assert!(of_three[0].delivered_at_unix_ms > 0);
    let theirs = c
        .list_deliveries(by_event("globex", "evt-3"))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert!(
        theirs.is_empty(),
        "acme's event is not globex's: {theirs:?}"
    );
    let got = refused(c.list_deliveries(by_event("acme", "evt\u{0}3")).await);
    assert_eq!(
        got,
        invalid("event_id: has characters outside the allowed set")
    );

    let mut attempts = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_attempts(ListAttemptsRequest {
                tenant: "acme".into(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        attempts.extend(page.attempts);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(attempts.len(), 5);
    for a in &attempts {
        ids::AttemptId::parse(&a.id).unwrap_or_else(|e| panic!("{}: {e}", a.id));
        assert!(listed.contains(&a.delivery_id.as_str()), "{a:?}");
        assert_eq!(a.outcome, "success");
    }
    // One delivery's attempts, by its id.
    let one = c
        .list_attempts(ListAttemptsRequest {
            tenant: "acme".into(),
            delivery_id: deliveries[0].id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attempts;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].delivery_id, deliveries[0].id);

    // Retrying by id makes it due again.
    let retried = c
        .retry_delivery(RetryDeliveryRequest {
            tenant: "acme".into(),
            delivery_id: deliveries[0].id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.id, deliveries[0].id);
}

#[tokio::test]
async fn page_tokens_the_api_did_not_give_out_are_refused() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let svc = start(settings(&db, &[]), None).await;
    let mut c = svc.client.clone();
    let ep = five_delivered(&mut c, &receiver).await;
    let expected = invalid("page_token: is not a token this API gave out");
    // Garbage, a number (what delivery tokens used to be) and an id of another kind.
    for token in ["garbage", "12", ep.as_str()] {
        let got = refused(
            c.list_deliveries(ListDeliveriesRequest {
                tenant: "acme".into(),
                page_token: token.into(),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(got, expected, "{token}");
        let got = refused(
            c.list_attempts(ListAttemptsRequest {
                tenant: "acme".into(),
                page_token: token.into(),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(got, expected, "{token}");
        let got = refused(
            c.list_messages(ListMessagesRequest {
                tenant: "acme".into(),
                page_token: token.into(),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(got, expected, "{token}");
    }
    for token in ["garbage", "' OR 1=1 --", &ids::MessageId::new().to_string()] {
        let got = refused(
            c.list_endpoints(ListEndpointsRequest {
                tenant: "acme".into(),
                page_token: token.into(),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(got, expected, "{token}");
    }
    // The tokens it does give out work, for messages too (newest first).
    let first = c
        .list_messages(ListMessagesRequest {
            tenant: "acme".into(),
            page_size: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.messages.len(), 3);
    let rest = c
        .list_messages(ListMessagesRequest {
            tenant: "acme".into(),
            page_size: 3,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.messages.len(), 2);
    assert!(rest.next_page_token.is_empty());
}

#[tokio::test]
async fn listings_filtered_by_what_the_tenant_does_not_have_are_not_found() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let svc = start(settings(&db, &[]), None).await;
    let mut c = svc.client.clone();
    let ep = five_delivered(&mut c, &receiver).await;
    let delivery = c
        .list_deliveries(ListDeliveriesRequest {
            tenant: "acme".into(),
            endpoint_id: ep.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
        .remove(0);

    // Well-formed ids that name nothing.
    let no_endpoint = ids::EndpointId::new().to_string();
    let no_message = ids::MessageId::new().to_string();
    let no_delivery = ids::DeliveryId::new().to_string();
    let not_found = |what: &str| (Code::NotFound, format!("no such {what} for this tenant"));
    let deliveries = |tenant: &str, endpoint_id: &str, message_id: &str| ListDeliveriesRequest {
        tenant: tenant.into(),
        endpoint_id: endpoint_id.into(),
        message_id: message_id.into(),
        ..Default::default()
    };
    let attempts = |tenant: &str, endpoint_id: &str, message_id: &str, delivery_id: &str| {
        ListAttemptsRequest {
            tenant: tenant.into(),
            endpoint_id: endpoint_id.into(),
            message_id: message_id.into(),
            delivery_id: delivery_id.into(),
            ..Default::default()
        }
    };
    assert_eq!(
        refused(
            c.list_deliveries(deliveries("acme", &no_endpoint, ""))
                .await
        ),
        not_found("endpoint")
    );
    assert_eq!(
        refused(c.list_deliveries(deliveries("acme", "", &no_message)).await),
        not_found("message")
    );
    assert_eq!(
        refused(
            c.list_attempts(attempts("acme", &no_endpoint, "", ""))
                .await
        ),
        not_found("endpoint")
    );
    assert_eq!(
        refused(c.list_attempts(attempts("acme", "", &no_message, "")).await),
        not_found("message")
    );
    assert_eq!(
        refused(
            c.list_attempts(attempts("acme", "", "", &no_delivery))
                .await
        ),
        not_found("delivery")
    );
    // Another tenant's resources are as absent as missing ones, and agree with GetEndpoint.
    assert_eq!(
        refused(c.list_deliveries(deliveries("intruder", &ep, "")).await),
        not_found("endpoint")
    );
    assert_eq!(
        refused(
            c.list_deliveries(deliveries("intruder", "", &delivery.message_id))
                .await
        ),
        not_found("message")
    );
    assert_eq!(
        refused(
            c.list_attempts(attempts("intruder", "", "", &delivery.id))
                .await
        ),
        not_found("delivery")
    );
    assert_eq!(
        refused(
            c.get_endpoint(GetEndpointRequest {
                tenant: "intruder".into(),
                id: ep.clone(),
            })
            .await
        )
        .0,
        Code::NotFound
    );
    assert_eq!(
        refused(
            c.retry_delivery(RetryDeliveryRequest {
                tenant: "acme".into(),
                delivery_id: no_delivery.clone(),
            })
            .await
        ),
        not_found("delivery")
    );
    // Filters that exist still list, and an existing endpoint with nothing matching is an empty
    // page, not an error.
    let listed = c
        .list_attempts(attempts("acme", &ep, &delivery.message_id, &delivery.id))
        .await
        .unwrap()
        .into_inner()
        .attempts;
    assert_eq!(listed.len(), 1);
    let (quiet, _) = endpoint(&mut c, &receiver, "acme", "/quiet", &["never.sent"]).await;
    let empty = c
        .list_deliveries(deliveries("acme", &quiet, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.deliveries.is_empty());
}
