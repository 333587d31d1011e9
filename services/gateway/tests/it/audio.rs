//! Sound effects and music through the public API: created (202), finished through the whole
//! stack (simulator, webhook-ingest, audio-generation), downloaded whole and by range, listed,
//! canceled, and kept per tenant.

use std::time::Duration;

use internal_rpc::Scope;
use test_stack::{Service, Simulator};
use test_support::{TestDatabase, eventually};

async fn send(
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: Option<serde_json::Value>,
    range: Option<&str>,
) -> reqwest::Response {
    let mut request = test_support::http_client()
        .request(method, url)
        .header("x-api-key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(range) = range {
        request = request.header("range", range);
    }
    request.send().await.unwrap()
}

async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn audio_jobs_through_the_public_api() {
    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[("SIMULATOR_GENERATION_DELAY", "300ms")]);
    let stack = crate::audio_stack(&db, &sim).start().await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("acme", &[Scope::Audio]).await;
    let post = reqwest::Method::POST;

    let response = send(
        post.clone(),
        &format!("{base}/v1/sound-effects"),
        &key,
        Some(serde_json::json!({"prompt": "a door creaks", "duration_seconds": 1.5})),
        None,
    )
    .await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let (status, job) = json(response).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(
        (job["status"].as_str(), job["type"].as_str()),
        (Some("queued"), Some("sound_effect"))
    );
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/audio-jobs/{id}"));
    for not_yet in ["submitted_at", "completed_at", "finished_at", "event_id"] {
        assert!(
            job.get(not_yet).is_none(),
            "{not_yet} of a queued job: {job}"
        );
    }

    let done = eventually(Duration::from_secs(30), "the job to succeed", || async {
        let (_, job) = json(
            send(
                reqwest::Method::GET,
                &format!("{base}{location}"),
                &key,
                None,
                None,
            )
            .await,
        )
        .await;
        (job["status"] == "succeeded").then_some(job)
    })
    .await;
    // The timeline: each step once it happened, in order, and the event the job ended with.
    let at = |field: &str| {
        let text = done[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field} in {done}"));
        chrono::DateTime::parse_from_rfc3339(text).unwrap()
    };
    let steps = ["created_at", "submitted_at", "completed_at", "finished_at"].map(at);
    assert!(steps.is_sorted(), "the steps in order: {done}");
    assert!(
        done["event_id"]
            .as_str()
            .is_some_and(|e| e.starts_with("evt_")),
        "{done}"
    );
    let audio = &done["audio"];
    let size = audio["size_bytes"].as_u64().unwrap();
    let url = format!("{base}{}", audio["url"].as_str().unwrap());

    let whole = send(reqwest::Method::GET, &url, &key, None, None).await;
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "audio/mpeg");
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.headers()["content-length"], size.to_string().as_str());
    let bytes = whole.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, size);

    let part = send(reqwest::Method::GET, &url, &key, None, Some("bytes=10-19")).await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-19/{size}").as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), bytes[10..20]);
    let suffix = send(reqwest::Method::GET, &url, &key, None, Some("bytes=-7")).await;
    assert_eq!(suffix.status(), 206);
    assert_eq!(suffix.bytes().await.unwrap(), bytes[bytes.len() - 7..]);
    let past = send(
        reqwest::Method::GET,
        &url,
        &key,
        None,
        Some(&format!("bytes={size}-")),
    )
    .await;
    assert_eq!(past.status(), 416);
    assert_eq!(
        past.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );

    // Music from a text's reading time; then canceled.
    let (status, music) = json(
        send(
            post.clone(),
            &format!("{base}/v1/background-music"),
            &key,
            Some(serde_json::json!({"prompt": "calm piano", "text": "Once upon a time."})),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, music["duration_seconds"].as_f64()),
        (202, Some(5.0)),
        "{music}"
    );
    let music_id = music["id"].as_str().unwrap();
    let (status, canceled) = json(
        send(
            reqwest::Method::DELETE,
            &format!("{base}/v1/audio-jobs/{music_id}"),
            &key,
            None,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{canceled}");
    assert!(
        matches!(canceled["status"].as_str(), Some("canceled" | "succeeded")),
        "{canceled}"
    );

    // Listing, filtered and paginated.
    let (_, page) = json(
        send(
            reqwest::Method::GET,
            &format!("{base}/v1/audio-jobs?limit=1"),
            &key,
            None,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = json(
        send(
            reqwest::Method::GET,
            &format!("{base}/v1/audio-jobs?limit=1&cursor={cursor}"),
            &key,
            None,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(next["jobs"][0]["id"], id.as_str(), "newest first: {next}");
    let (_, effects) = json(
        send(
            reqwest::Method::GET,
            &format!("{base}/v1/audio-jobs?type=sound_effect&status=succeeded"),
            &key,
            None,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(effects["jobs"].as_array().unwrap().len(), 1);

    // Refusals name the field; other tenants and scopes see nothing.
    for (body, field) in [
        (
            serde_json::json!({"prompt": "x", "duration_seconds": 100}),
            "duration_seconds",
        ),
        (
            serde_json::json!({"prompt": "", "duration_seconds": 2}),
            "prompt",
        ),
        (
            serde_json::json!({"prompt": "x", "duration_seconds": 2, "colour": "red"}),
            "colour",
        ),
    ] {
        let (status, problem) = json(
            send(
                post.clone(),
                &format!("{base}/v1/sound-effects"),
                &key,
                Some(body),
                None,
            )
            .await,
        )
        .await;
        assert_eq!(status, 400, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{problem}"
        );
    }
    for query in ["type=song", "status=lost", "limit=0", "cursor=nonsense"] {
        let (status, problem) = json(
            send(
                reqwest::Method::GET,
                &format!("{base}/v1/audio-jobs?{query}"),
                &key,
                None,
                None,
            )
            .await,
        )
        .await;
        assert_eq!(status, 400, "{query}: {problem}");
    }
    let globex = stack.api_key("globex", &[Scope::Audio]).await;
    for path in [location.clone(), format!("/v1/audio-jobs/{id}/audio")] {
        let (status, _) = json(
            send(
                reqwest::Method::GET,
                &format!("{base}{path}"),
                &globex,
                None,
                None,
            )
            .await,
        )
        .await;
        assert_eq!(status, 404, "{path}");
    }
    let (_, theirs) = json(
        send(
            reqwest::Method::GET,
            &format!("{base}/v1/audio-jobs"),
            &globex,
            None,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(theirs["jobs"].as_array().unwrap().len(), 0);
    let speech_only = stack.api_key("acme", &[Scope::Tts]).await;
    let (status, _) = json(
        send(
            reqwest::Method::GET,
            &format!("{base}{location}"),
            &speech_only,
            None,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);

    // The catalogue of events partners receive.
    let (status, catalogue) = json(
        send(
            reqwest::Method::GET,
            &format!("{base}/v1/event-types"),
            &key,
            None,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = catalogue["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event_type"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"audio.sound_effect.completed") && names.contains(&"audio.job.failed"),
        "{names:?}"
    );
    assert!(catalogue["event_types"][0]["schema"]["properties"].is_object());
}
