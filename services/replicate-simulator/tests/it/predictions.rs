//! The prediction API: shapes, auth, validation, listing and cancelling.

use serde_json::json;

use crate::support::{Sim, effect};

#[tokio::test]
async fn a_prediction_has_replicates_shape_through_its_life() {
    let sim = Sim::start(&[("SIMULATOR_GENERATION_DELAY", "600ms")]);
    let (status, created, headers) = sim.post("/v1/predictions", &effect(1.0, json!({}))).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    assert_eq!(id.len(), 26);
    assert_eq!(created["status"], "starting");
    assert_eq!(created["model"], "stackadoc/stable-audio-open-1.0");
    assert_eq!(
        created["version"],
        "2cd7d762d12df80757b18439c8fcd0ac3311251eb94ac6bdc026bb4ce4540868"
    );
    assert_eq!(created["input"]["seconds_total"], 1.0);
    assert_eq!(created["output"], serde_json::Value::Null);
    assert_eq!(created["error"], serde_json::Value::Null);
    assert_eq!(created["data_removed"], false);
    assert_eq!(created["source"], "api");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["started_at"], serde_json::Value::Null);
    let get = sim.url(&format!("/v1/predictions/{id}"));
    assert_eq!(created["urls"]["get"], get);
    assert_eq!(created["urls"]["cancel"], format!("{get}/cancel"));
    assert!(created["urls"]["web"].as_str().unwrap().ends_with(id));
    assert_eq!(headers["location"].to_str().unwrap(), get);

    let done = sim.finished(&created).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["started_at"].is_string() && done["completed_at"].is_string());
    let predict = done["metrics"]["predict_time"].as_f64().unwrap();
    let total = done["metrics"]["total_time"].as_f64().unwrap();
    assert!(predict > 0.0 && total >= predict && total < 10.0, "{done}");
    assert!(done["logs"].as_str().unwrap().contains("Done"));
}

#[tokio::test]
async fn official_models_run_by_name() {
    let sim = Sim::start(&[]);
    let (status, created, _) = sim
        .post(
            "/v1/models/stability-ai/stable-audio-2.5/predictions",
            &json!({"input": {"prompt": "a door slams", "duration": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["model"], "stability-ai/stable-audio-2.5");
    assert_eq!(created["version"], "hidden");
    assert_eq!(sim.finished(&created).await["status"], "succeeded");
}

#[tokio::test]
async fn without_the_token_everything_is_401() {
    let sim = Sim::start(&[("SIMULATOR_API_TOKEN", "r8_the_right_one")]);
    for token in [
        None,
        Some("r8_the_wrong_one"),
        Some("r8_simulator_development_token"),
    ] {
        let mut request = sim.client.get(sim.url("/v1/predictions"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("authentication token"),
            "{body}"
        );
    }
    let response = sim
        .client
        .post(sim.url("/v1/predictions"))
        .json(&effect(1.0, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let secret = sim
        .client
        .get(sim.url("/v1/webhooks/default/secret"))
        .bearer_auth("r8_the_right_one")
        .send()
        .await
        .unwrap();
    assert_eq!(secret.status(), 200);
    let legacy = sim
        .client
        .get(sim.url("/v1/predictions"))
        .header("authorization", "Token r8_the_right_one")
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), 200);
}

#[tokio::test]
async fn bad_input_is_422_naming_the_field() {
    let sim = Sim::start(&[]);
    let version = "96af46316252ddea4c6614e31861876183b59dce84bad765f38424e87919dd85";
    let cases = [
        (json!({"input": {"duration": 3}}), "version"),
        (json!({"version": "not a version", "input": {}}), "version"),
        (json!({"version": version}), "input"),
        (
            json!({"version": version, "input": {"duration": 0}}),
            "input.duration",
        ),
        (
            json!({"version": version, "input": {"duration": "long"}}),
            "input.duration",
        ),
        (
            json!({"version": version, "input": {"output_format": "ogg"}}),
            "input.output_format",
        ),
        (
            json!({"version": version, "input": {}, "webhook": "ftp://x"}),
            "webhook",
        ),
        (
            json!({"version": version, "input": {}, "webhook_events_filter": ["finished"]}),
            "webhook_events_filter",
        ),
        (effect(-2.0, json!({})), "input.seconds_total"),
    ];
    for (body, field) in cases {
        let (status, error, _) = sim.post("/v1/predictions", &body).await;
        assert_eq!(status, 422, "{body} → {error}");
        assert!(
            error["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{body} → {error}"
        );
    }
    let (status, error, _) = sim
        .post("/v1/predictions", &json!(["not", "an", "object"]))
        .await;
    assert_eq!(status, 400, "{error}");
    assert!(error["detail"].is_string());
}

#[tokio::test]
async fn unknown_predictions_are_404() {
    let sim = Sim::start(&[]);
    for path in [
        "/v1/predictions/aaaaaaaaaaaaaaaaaaaaaaaaaa",
        "/v1/predictions/not-an-id",
        "/files/aaaaaaaaaaaaaaaaaaaaaaaaaa.wav",
        "/v1/nothing-here",
    ] {
        let (status, body) = sim.get(&sim.url(path)).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["detail"], "Not found.", "{path}");
    }
}

#[tokio::test]
async fn listing_pages_newest_first_with_cursors() {
    let sim = Sim::start(&[
        ("SIMULATOR_PAGE_SIZE", "2"),
        ("SIMULATOR_GENERATION_DELAY", "1h"),
    ]);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            sim.create(effect(1.0, json!({}))).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    ids.reverse();
    let page_ids = |page: &serde_json::Value| -> Vec<String> {
        page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, first) = sim.get(&sim.url("/v1/predictions")).await;
    assert_eq!(page_ids(&first), ids[0..2]);
    assert_eq!(first["previous"], serde_json::Value::Null);
    let (_, second) = sim.get(first["next"].as_str().unwrap()).await;
    assert_eq!(page_ids(&second), ids[2..4]);
    let (_, third) = sim.get(second["next"].as_str().unwrap()).await;
    assert_eq!(page_ids(&third), ids[4..5]);
    assert_eq!(third["next"], serde_json::Value::Null);
    let (_, back) = sim.get(third["previous"].as_str().unwrap()).await;
    assert_eq!(page_ids(&back), ids[2..4]);
    let (_, back) = sim.get(back["previous"].as_str().unwrap()).await;
    assert_eq!(page_ids(&back), ids[0..2]);
    assert_eq!(back["previous"], serde_json::Value::Null);
}

#[tokio::test]
async fn the_store_is_bounded_and_forgets_the_oldest() {
    let sim = Sim::start(&[
        ("SIMULATOR_MAX_PREDICTIONS", "2"),
        ("SIMULATOR_GENERATION_DELAY", "1h"),
    ]);
    let first = sim.create(effect(1.0, json!({}))).await;
    sim.create(effect(1.0, json!({}))).await;
    sim.create(effect(1.0, json!({}))).await;
    let (status, _) = sim.get(first["urls"]["get"].as_str().unwrap()).await;
    assert_eq!(status, 404);
    let (_, page) = sim.get(&sim.url("/v1/predictions")).await;
    assert_eq!(page["results"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn cancel_stops_a_running_prediction_and_leaves_a_finished_one() {
    let sim = Sim::start(&[("SIMULATOR_GENERATION_DELAY", "1h")]);
    let running = sim.create(effect(1.0, json!({}))).await;
    let cancel = running["urls"]["cancel"].as_str().unwrap();
    let (status, canceled, _) = sim
        .post(cancel.strip_prefix(&sim.base).unwrap(), &json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(canceled["status"], "canceled");
    assert!(canceled["completed_at"].is_string());
    let (_, again, _) = sim
        .post(cancel.strip_prefix(&sim.base).unwrap(), &json!({}))
        .await;
    assert_eq!(again["status"], "canceled");
    assert_eq!(again["completed_at"], canceled["completed_at"]);
    let (status, _, _) = sim
        .post(
            "/v1/predictions/aaaaaaaaaaaaaaaaaaaaaaaaaa/cancel",
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_webhook_secret_is_published() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // The setting webhook-ingest verifies with.
    let sim = Sim::start(&[("REPLICATE_WEBHOOK_SECRET", secret)]);
    let (status, body) = sim.get(&sim.url("/v1/webhooks/default/secret")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"key": secret}));
    // Without either, a fresh secret for each start.
    let generated = Sim::start(&[]);
    let (_, body) = generated
        .get(&generated.url("/v1/webhooks/default/secret"))
        .await;
    assert_eq!(body["key"], generated.secret.as_str());
    assert!(generated.secret.starts_with("whsec_"));
}

async fn create_with_header(sim: &Sim, name: &str, value: &str) -> (u16, serde_json::Value) {
    let response = sim
        .client
        .post(sim.url("/v1/predictions"))
        .bearer_auth(replicate_simulator::DEVELOPMENT_API_TOKEN)
        .header(name, value)
        .json(&effect(1.0, json!({})))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn prefer_wait_answers_once_the_prediction_has_finished() {
    let sim = Sim::start(&[("SIMULATOR_GENERATION_DELAY", "300ms")]);
    let (status, prediction) = create_with_header(&sim, "prefer", "wait=10").await;
    assert_eq!(status, 201);
    assert_eq!(prediction["status"], "succeeded", "{prediction}");
    assert!(prediction["output"].is_string());

    let slow = Sim::start(&[("SIMULATOR_GENERATION_DELAY", "1h")]);
    let started = std::time::Instant::now();
    let (status, prediction) = create_with_header(&slow, "prefer", "wait=1").await;
    assert_eq!(status, 201);
    assert_eq!(prediction["status"], "starting");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
}

#[tokio::test]
async fn cancel_after_aborts_before_the_start_and_cancels_after_it() {
    let never_starts = Sim::start(&[("SIMULATOR_GENERATION_DELAY", "1h")]);
    let starts = Sim::start(&[("SIMULATOR_GENERATION_DELAY", "8s")]);
    let (status, aborted) = create_with_header(&never_starts, "cancel-after", "5s").await;
    assert_eq!(status, 201);
    let (_, canceled) = create_with_header(&starts, "cancel-after", "5").await;
    let aborted = never_starts.finished(&aborted).await;
    assert_eq!(aborted["status"], "aborted", "{aborted}");
    assert_eq!(aborted["started_at"], serde_json::Value::Null);
    let canceled = starts.finished(&canceled).await;
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    assert!(canceled["started_at"].is_string());

    let (status, error) = create_with_header(&starts, "cancel-after", "2s").await;
    assert_eq!(status, 422);
    assert!(
        error["detail"]
            .as_str()
            .unwrap()
            .starts_with("Cancel-After:"),
        "{error}"
    );
}

#[tokio::test]
async fn the_web_url_is_a_page_with_the_audio() {
    let sim = Sim::start(&[]);
    let done = sim
        .finished(&sim.create(effect(1.0, json!({}))).await)
        .await;
    let response = sim
        .client
        .get(done["urls"]["web"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("succeeded") && html.contains(done["output"].as_str().unwrap()));
}

#[tokio::test]
async fn listing_filters_by_creation_time_across_pages() {
    let sim = Sim::start(&[
        ("SIMULATOR_PAGE_SIZE", "1"),
        ("SIMULATOR_GENERATION_DELAY", "1h"),
    ]);
    let before = sim.create(effect(1.0, json!({}))).await;
    let mut inside = Vec::new();
    for _ in 0..2 {
        inside.push(sim.create(effect(1.0, json!({}))).await);
    }
    let after = sim.create(effect(1.0, json!({}))).await;
    let url = format!(
        "{}?created_after={}&created_before={}",
        sim.url("/v1/predictions"),
        before["created_at"].as_str().unwrap(),
        after["created_at"].as_str().unwrap(),
    );
    let (status, first) = sim.get(&url).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["results"][0]["id"], inside[1]["id"]);
    let (_, second) = sim.get(first["next"].as_str().unwrap()).await;
    assert_eq!(second["results"][0]["id"], inside[0]["id"]);
    assert_eq!(second["next"], serde_json::Value::Null, "{second}");

    let (status, error) = sim
        .get(&format!(
            "{}?created_after=yesterday",
            sim.url("/v1/predictions")
        ))
        .await;
    assert_eq!(status, 400);
    assert!(error["detail"].as_str().unwrap().contains("created_after"));
}
