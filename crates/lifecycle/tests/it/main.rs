//! The drain on shutdown, on a real actix-web server: a request in flight when shutdown is
//! requested finishes, new connections are refused, and the server then stops.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use lifecycle::{
    Readiness,
    http::{bind, ops_app, serve},
};
use telemetry::metrics::Metrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn in_flight_request_finishes_after_shutdown_and_new_ones_are_refused() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let readiness = Readiness::builder().build();
    let shutdown = CancellationToken::new();
    let app_readiness = readiness.clone();
    let server = serve(
        bind("127.0.0.1:0".parse().unwrap()).unwrap(),
        move || {
            let started = started_tx.clone();
            ops_app(app_readiness.clone(), Metrics::new()).route(
                "/slow",
                web::get().to(move || {
                    let started = started.clone();
                    async move {
                        let _ = started.send(());
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        HttpResponse::Ok().body("finished")
                    }
                }),
            )
        },
        readiness.clone(),
        shutdown.clone(),
        Duration::from_secs(10),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}", server.port());

    let slow = tokio::spawn({
        let url = format!("{base}/slow");
        async move {
            let response = test_support::http_client().get(url).send().await?;
            Ok::<_, reqwest::Error>((response.status().as_u16(), response.text().await?))
        }
    });
    started_rx
        .recv()
        .await
        .expect("the slow request reached its handler");

    shutdown.cancel();
    // New connections are refused while the slow request is still running.
    test_support::eventually(
        Duration::from_secs(5),
        "new connections refused",
        || async {
            test_support::fresh_http_client()
                .get(format!("{base}/health"))
                .send()
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(readiness.is_draining());
    assert!(!slow.is_finished(), "the slow request was cut short");

    let (status, body) = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!((status, body.as_str()), (200, "finished"));
    tokio::time::timeout(Duration::from_secs(10), server.stopped())
        .await
        .expect("the server stops once drained")
        .unwrap();
}
