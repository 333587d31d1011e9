//! Jobs talking to Replicate (the simulator, which speaks its API): submitted in the background,
//! finished by the webhook's prediction or by reconciliation, refused, failed, rate limited and
//! canceled, each ending with its event in the outbox.

use std::time::Duration;

use diesel::{QueryableByName, sql_types::Text};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use internal_rpc::{Principal, Scope, Scopes, on_behalf};
use sonora_proto::audio::v1::{
    CancelJobRequest, CompletePredictionRequest, CreateSoundEffectRequest, GetJobRequest, Job,
    JobStatus, ReadAudioRequest, audio_generation_client::AudioGenerationClient,
};
use test_stack::{Service, Simulator, Stack};
use test_support::{TestDatabase, eventually, receiver::Receiver};
use tonic::Code;

type Client = AudioGenerationClient<internal_rpc::PeerChannel>;

fn acme() -> Principal {
    Principal {
        tenant: ids::Tenant::parse("acme").unwrap(),
        key_id: Some(ids::KeyId::new()),
        scopes: Scopes::of([Scope::Audio]),
    }
}

/// audio-generation pointed at the simulator, sending webhooks to `receiver` (standing in for
/// webhook-ingest), with quick polling; `extra` overrides.
async fn start(
    db: &TestDatabase,
    sim: &Simulator,
    receiver: &Receiver,
    extra: &[(&str, &str)],
) -> (Stack, Client, Client) {
    let mut builder = Stack::new(db)
        .with_audio()
        .setting(Service::AudioGeneration, "BASE_URL", receiver.base.clone())
        .setting(Service::AudioGeneration, "JOB_POLL_INTERVAL", "50ms");
    for (name, value) in sim.settings() {
        builder = builder.setting(Service::AudioGeneration, name, value);
    }
    for (name, value) in extra {
        builder = builder.setting(Service::AudioGeneration, name, *value);
    }
    let stack = builder.start().await;
    test_support::wait_ready(&stack.ops_url(Service::AudioGeneration), 200).await;
    let gateway =
        AudioGenerationClient::new(stack.peer("gateway", Service::AudioGeneration).channel());
    let ingest = AudioGenerationClient::new(
        stack
            .peer("webhook-ingest", Service::AudioGeneration)
            .channel(),
    );
    (stack, gateway, ingest)
}

async fn create_effect(gateway: &mut Client, seconds: f64) -> Job {
    gateway
        .create_sound_effect(on_behalf(
            CreateSoundEffectRequest {
                prompt: "rain on a tin roof".into(),
                duration_seconds: seconds,
                seed: Some(7),
            },
            &acme(),
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn get(gateway: &mut Client, id: &str) -> Job {
    gateway
        .get_job(on_behalf(GetJobRequest { id: id.into() }, &acme()))
        .await
        .unwrap()
        .into_inner()
}

async fn until_status(gateway: &Client, id: &str, status: JobStatus, within: Duration) -> Job {
    eventually(within, &format!("job {id} to be {status:?}"), || async {
        let job = get(&mut gateway.clone(), id).await;
        (job.status() == status).then_some(job)
    })
    .await
}

/// The webhook the simulator sent for a job, as webhook-ingest would have received it.
async fn webhook_for(receiver: &Receiver, path: &str) -> String {
    eventually(
        Duration::from_secs(15),
        &format!("a webhook on {path}"),
        || async {
            receiver
                .received_on(path)
                .into_iter()
                .next()
                .map(|r| r.body)
        },
    )
    .await
}

/// The events audio-generation's outbox holds, as (type, payload).
async fn outbox(db: &TestDatabase) -> Vec<(String, serde_json::Value)> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        event_type: String,
        #[diesel(sql_type = Text)]
        payload: String,
    }
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let rows: Vec<Row> =
        diesel::sql_query("SELECT event_type, payload FROM audio.outbox ORDER BY created_at")
            .load(&mut conn)
            .await
            .unwrap();
    rows.into_iter()
        .map(|r| (r.event_type, serde_json::from_str(&r.payload).unwrap()))
        .collect()
}

/// A job's audio read through `ReadAudio`, whole or a range.
async fn read_audio(
    gateway: &mut Client,
    id: &str,
    start: Option<u64>,
    end: Option<u64>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = gateway
        .read_audio(on_behalf(
            ReadAudioRequest {
                id: id.into(),
                range_start: start,
                range_end: end,
            },
            &acme(),
        ))
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(bytes)
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The duration of encoded audio, decoded with FFmpeg.
fn measure(bytes: &[u8]) -> f64 {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    audio_codec::process::decode_file(
        file.path(),
        audio_codec::process::DecodeLimits {
            max_duration: Duration::from_secs(600),
        },
    )
    .unwrap()
    .duration_seconds()
}

async fn prediction(sim: &Simulator, id: &str) -> serde_json::Value {
    test_support::http_client()
        .get(format!("{}/v1/predictions/{id}", sim.base_url))
        .bearer_auth(&sim.api_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_is_submitted_in_the_background_and_completed_once_by_its_webhook() {
    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[]);
    let receiver = Receiver::start().await;
    let (_stack, mut gateway, mut ingest) = start(&db, &sim, &receiver, &[]).await;

    let job = create_effect(&mut gateway, 2.5).await;
    assert_eq!(
        job.status(),
        JobStatus::Queued,
        "created answers before Replicate is asked"
    );
    let submitted = until_status(
        &gateway,
        &job.id,
        JobStatus::Submitted,
        Duration::from_secs(10),
    )
    .await;
    assert!(!submitted.prediction_id.is_empty());

    // What Replicate was sent: the model's input from the job, the webhook for the job.
    let sent = prediction(&sim, &submitted.prediction_id).await;
    assert_eq!(sent["input"]["prompt"], "rain on a tin roof");
    assert_eq!(
        sent["input"]["seconds_total"], 3,
        "whole seconds, rounded up; trimmed later"
    );
    assert_eq!(sent["input"]["seed"], 7);
    let path = format!("/api/replicate-webhook/sound_effect/{}", job.id);
    let body = webhook_for(&receiver, &path).await;

    let complete =
        |job_id: &str, content_type: &str, prediction: &[u8]| CompletePredictionRequest {
            job_id: job_id.into(),
            content_type: content_type.into(),
            prediction: prediction.to_vec(),
        };
    let first = ingest
        .complete_prediction(complete(&job.id, "sound_effect", body.as_bytes()))
        .await
        .unwrap()
        .into_inner();
    assert!(first.changed);
    let status = first.job.unwrap().status();
    assert!(
        matches!(status, JobStatus::Processing | JobStatus::Succeeded),
        "{status:?}"
    );
    let again = ingest
        .complete_prediction(complete(&job.id, "sound_effect", body.as_bytes()))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed, "a duplicate webhook changes nothing");

    // The finisher downloads, trims, normalises and stores it; the event says what was stored.
    let done = until_status(
        &gateway,
        &job.id,
        JobStatus::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    let audio = done.audio.clone().expect("a succeeded job has audio");
    assert_eq!(
        (audio.format.as_str(), audio.content_type.as_str()),
        ("mp3", "audio/mpeg")
    );
    assert_eq!(audio.path, format!("/v1/audio/jobs/{}/audio", job.id));
    let bytes = read_audio(&mut gateway, &job.id, None, None).await.unwrap();
    assert_eq!(bytes.len() as u64, audio.size_bytes);
    assert_eq!(sha256(&bytes), audio.sha256);
    let measured = measure(&bytes);
    assert!(
        (measured - 2.5).abs() <= 0.05,
        "trimmed to the request: {measured} s"
    );
    assert!(
        (audio.duration_seconds - measured).abs() < 0.01,
        "{audio:?}"
    );
    let events = outbox(&db).await;
    assert_eq!(
        events.len(),
        1,
        "one event however many webhooks: {events:?}"
    );
    assert_eq!(events[0].0, "audio.sound_effect.completed");
    assert_eq!(events[0].1["audio"]["sha256"], audio.sha256.as_str());
    assert_eq!(events[0].1["volume_level"], 0.3);

    // Byte ranges, as HTTP asks them.
    let part = read_audio(&mut gateway, &job.id, Some(10), Some(19))
        .await
        .unwrap();
    assert_eq!(part, bytes[10..20]);
    let tail = read_audio(&mut gateway, &job.id, Some(audio.size_bytes - 5), None)
        .await
        .unwrap();
    assert_eq!(tail, bytes[bytes.len() - 5..]);
    let past = read_audio(&mut gateway, &job.id, Some(audio.size_bytes), None)
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");
    let other = Principal {
        tenant: ids::Tenant::parse("globex").unwrap(),
        ..acme()
    };
    let hidden = gateway
        .read_audio(on_behalf(
            ReadAudioRequest {
                id: job.id.clone(),
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);

    // What webhook-ingest is told when the webhook cannot finish a job.
    let unknown = ingest
        .complete_prediction(complete(
            &ids::JobId::new().to_string(),
            "sound_effect",
            body.as_bytes(),
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let not_a_job = ingest
        .complete_prediction(complete("123", "sound_effect", body.as_bytes()))
        .await
        .unwrap_err();
    assert_eq!(not_a_job.code(), Code::NotFound);
    let wrong_type = ingest
        .complete_prediction(complete(&job.id, "background_music", body.as_bytes()))
        .await
        .unwrap_err();
    assert_eq!(wrong_type.code(), Code::InvalidArgument);
    assert!(
        wrong_type.message().starts_with("content_type:"),
        "{wrong_type:?}"
    );
    let garbage = ingest
        .complete_prediction(complete(&job.id, "sound_effect", b"[1]"))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    assert!(!garbage.message().contains("struct"), "{garbage:?}");

    // Only webhook-ingest may complete, only the gateway may create.
    let refused = gateway
        .complete_prediction(complete(&job.id, "sound_effect", body.as_bytes()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn failures_end_the_job_with_the_providers_reason_and_an_event() {
    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[("SIMULATOR_FAILURE_RATE", "1")]);
    let receiver = Receiver::start().await;
    let refusing =
        r#"{"prompt": "{prompt}", "seconds_total": "{duration}", "output_format": "ogg"}"#;
    let (_stack, mut gateway, mut ingest) = start(&db, &sim, &receiver, &[]).await;

    let job = create_effect(&mut gateway, 1.0).await;
    let path = format!("/api/replicate-webhook/sound_effect/{}", job.id);
    let body = webhook_for(&receiver, &path).await;
    let done = ingest
        .complete_prediction(CompletePredictionRequest {
            job_id: job.id.clone(),
            content_type: "sound_effect".into(),
            prediction: body.into_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    let failed = done.job.unwrap();
    assert_eq!(failed.status(), JobStatus::Failed);
    assert!(
        failed
            .error
            .starts_with("Replicate failed the prediction: "),
        "{}",
        failed.error
    );
    let events = outbox(&db).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "audio.job.failed");
    assert_eq!(events[0].1["job_id"], job.id.as_str());
    assert_eq!(events[0].1["status"], "failed");
    assert_eq!(events[0].1["error"], failed.error.as_str());
    drop(_stack);

    // Replicate refusing the input (422) fails the job at once, with Replicate's message.
    let db = TestDatabase::create().await.unwrap();
    let (_stack, mut gateway, _) = start(
        &db,
        &sim,
        &receiver,
        &[("SOUND_EFFECT_MODEL_INPUT", refusing)],
    )
    .await;
    let job = create_effect(&mut gateway, 1.0).await;
    let failed = until_status(
        &gateway,
        &job.id,
        JobStatus::Failed,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        failed
            .error
            .starts_with("Replicate refused the prediction (422)"),
        "{}",
        failed.error
    );
    assert!(failed.error.contains("output_format"), "{}", failed.error);
    assert_eq!(outbox(&db).await[0].0, "audio.job.failed");
}

#[tokio::test]
async fn rate_limits_and_the_budget_delay_submission_without_failing_jobs() {
    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[("SIMULATOR_CREATE_RATE_LIMIT", "2")]);
    let receiver = Receiver::start().await;
    let (stack, mut gateway, _) = start(&db, &sim, &receiver, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create_effect(&mut gateway, 1.0).await.id);
    }
    let metrics = format!("{}/metrics", stack.ops_url(Service::AudioGeneration));
    eventually(Duration::from_secs(10), "a 429 from Replicate", || async {
        let text = test_support::http_client()
            .get(&metrics)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("audio_submissions_total{outcome=\"rate_limited\"}")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut statuses = Vec::new();
    for id in &ids {
        statuses.push(get(&mut gateway, id).await.status());
    }
    let submitted = statuses
        .iter()
        .filter(|s| **s == JobStatus::Submitted)
        .count();
    let queued = statuses.iter().filter(|s| **s == JobStatus::Queued).count();
    assert_eq!(
        (submitted, queued),
        (2, 3),
        "{statuses:?}: the rest wait, none fails"
    );
    drop(stack);

    // The budget a minute is shared through PostgreSQL: 3 creations, then the rest wait.
    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[]);
    let (_stack, mut gateway, _) =
        start(&db, &sim, &receiver, &[("REPLICATE_SUBMIT_BUDGET", "3")]).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create_effect(&mut gateway, 1.0).await.id);
    }
    eventually(Duration::from_secs(10), "three submissions", || async {
        let mut submitted = 0;
        for id in &ids {
            if get(&mut gateway.clone(), id).await.status() != JobStatus::Queued {
                submitted += 1;
            }
        }
        (submitted == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut waiting = 0;
    for id in &ids {
        if get(&mut gateway, id).await.status() == JobStatus::Queued {
            waiting += 1;
        }
    }
    assert_eq!(waiting, 2, "the budget holds the rest back");
}

#[tokio::test]
async fn a_lost_webhook_is_made_up_for_by_reconciliation() {
    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[("SIMULATOR_LOST_WEBHOOK_RATE", "1")]);
    let receiver = Receiver::start().await;
    let (_stack, mut gateway, _) = start(
        &db,
        &sim,
        &receiver,
        &[
            ("WEBHOOK_OVERDUE_AFTER", "500ms"),
            ("RECONCILE_INTERVAL", "200ms"),
        ],
    )
    .await;
    let job = create_effect(&mut gateway, 1.0).await;
    eventually(
        Duration::from_secs(15),
        "the job to be finished by reconciliation",
        || async {
            let job = get(&mut gateway.clone(), &job.id).await;
            matches!(job.status(), JobStatus::Processing | JobStatus::Succeeded).then_some(())
        },
    )
    .await;
    assert!(receiver.received().is_empty(), "no webhook was sent");
}

#[tokio::test]
async fn cancel_ends_a_job_and_its_prediction() {
    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[("SIMULATOR_GENERATION_DELAY", "30s")]);
    let receiver = Receiver::start().await;
    let (_stack, mut gateway, _) = start(&db, &sim, &receiver, &[]).await;
    let job = create_effect(&mut gateway, 1.0).await;
    let submitted = until_status(
        &gateway,
        &job.id,
        JobStatus::Submitted,
        Duration::from_secs(10),
    )
    .await;
    let cancel = |id: &str| on_behalf(CancelJobRequest { id: id.into() }, &acme());
    let canceled = gateway
        .cancel_job(cancel(&job.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canceled.status(), JobStatus::Canceled);
    assert_eq!(canceled.error, "canceled by the client");
    assert_eq!(
        prediction(&sim, &submitted.prediction_id).await["status"],
        "canceled"
    );
    let again = gateway
        .cancel_job(cancel(&job.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, canceled, "canceling twice changes nothing");
    let events = outbox(&db).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].0.as_str(), &events[0].1["status"]),
        ("audio.job.failed", &serde_json::json!("canceled"))
    );

    let other = Principal {
        tenant: ids::Tenant::parse("globex").unwrap(),
        ..acme()
    };
    let status = gateway
        .cancel_job(on_behalf(CancelJobRequest { id: job.id.clone() }, &other))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "another tenant's job does not exist for it"
    );
}

#[tokio::test]
async fn a_download_failing_twice_is_retried_and_a_bucket_serves_every_replica() {
    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[("SIMULATOR_DOWNLOAD_FAILURES", "2")]);
    let receiver = Receiver::start().await;
    let s3 = test_support::s3::S3Server::start().await;
    let bucket = s3.storage_settings("audio");
    let bucket: Vec<(&str, &str)> = bucket.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (stack, mut gateway, mut ingest) = start(&db, &sim, &receiver, &bucket).await;

    let job = create_effect(&mut gateway, 1.0).await;
    let path = format!("/api/replicate-webhook/sound_effect/{}", job.id);
    let body = webhook_for(&receiver, &path).await;
    ingest
        .complete_prediction(CompletePredictionRequest {
            job_id: job.id.clone(),
            content_type: "sound_effect".into(),
            prediction: body.into_bytes(),
        })
        .await
        .unwrap();
    // Two failed downloads wait 1 s, then 2 s, before the third succeeds.
    let done = until_status(
        &gateway,
        &job.id,
        JobStatus::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    let metrics = test_support::http_client()
        .get(format!(
            "{}/metrics",
            stack.ops_url(Service::AudioGeneration)
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("audio_finished_total{outcome=\"retried\",type=\"sound_effect\"} 2"),
        "{metrics}"
    );
    let bytes = read_audio(&mut gateway, &job.id, None, None).await.unwrap();
    assert_eq!(sha256(&bytes), done.audio.as_ref().unwrap().sha256);

    // Another replica, sharing only the database and the bucket, serves the same bytes.
    let other = Stack::new(&db).with_audio().setting(
        Service::AudioGeneration,
        "AUDIO_STORAGE_PATH",
        "/nonexistent/not-used",
    );
    let other = bucket
        .iter()
        .fold(other, |b, (k, v)| {
            b.setting(Service::AudioGeneration, k, *v)
        })
        .start()
        .await;
    drop(stack);
    test_support::wait_ready(&other.ops_url(Service::AudioGeneration), 200).await;
    let mut second =
        AudioGenerationClient::new(other.peer("gateway", Service::AudioGeneration).channel());
    assert_eq!(
        read_audio(&mut second, &job.id, None, None).await.unwrap(),
        bytes
    );
}
