//! The whole flow on loopback: a job created through audio-generation's API, its prediction on
//! the Replicate simulator, the signed webhook through webhook-ingest, completion, the audio
//! stored and measured, and the event delivered, signed, to a partner's endpoint by
//! delivery-worker.

use std::time::Duration;

use internal_rpc::{Principal, Scopes, on_behalf};
use sonora_proto::{
    audio::v1::{
        CreateBackgroundMusicRequest, CreateSoundEffectRequest, GetJobRequest, JobStatus,
        ReadAudioRequest, audio_generation_client::AudioGenerationClient,
    },
    delivery::v1::{
        CreateEndpointRequest, ListMessagesRequest, delivery_service_client::DeliveryServiceClient,
    },
};
use test_stack::{Service, Simulator, Stack};
use test_support::{TestDatabase, eventually, receiver::Receiver};

fn acme() -> Principal {
    Principal {
        tenant: ids::Tenant::parse("acme").unwrap(),
        key_id: None,
        scopes: Scopes::all(),
    }
}

#[tokio::test]
async fn effects_and_music_reach_a_partner_once_however_often_replicate_sends_the_webhook() {
    let db = TestDatabase::create().await.unwrap();
    // Every webhook sent twice, and every file's first download failing.
    let sim = Simulator::start(&[
        ("SIMULATOR_DUPLICATE_WEBHOOKS", "true"),
        ("SIMULATOR_DOWNLOAD_FAILURES", "1"),
    ]);
    let stack = Stack::new(&db)
        .with_delivery()
        .with_ingest()
        .with_audio()
        .replicate(&sim)
        .setting(Service::AudioGeneration, "JOB_POLL_INTERVAL", "50ms")
        .setting(Service::WebhookIngest, "INBOX_POLL_INTERVAL", "50ms")
        .start()
        .await;
    test_support::wait_ready(&stack.ops_url(Service::AudioGeneration), 200).await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    let partner = Receiver::start().await;
    let endpoint =
        DeliveryServiceClient::new(stack.peer("gateway", Service::DeliveryWorker).channel())
            .create_endpoint(on_behalf(
                CreateEndpointRequest {
                    url: partner.url("/sonora"),
                    ..Default::default()
                },
                &acme(),
            ))
            .await
            .unwrap()
            .into_inner();
    partner.trust("/sonora", &endpoint.verification_key);

    let mut audio =
        AudioGenerationClient::new(stack.peer("gateway", Service::AudioGeneration).channel());
    let effect = audio
        .create_sound_effect(on_behalf(
            CreateSoundEffectRequest {
                prompt: "a door creaks".into(),
                duration_seconds: 1.7,
                seed: None,
            },
            &acme(),
        ))
        .await
        .unwrap()
        .into_inner();
    let music = audio
        .create_background_music(on_behalf(
            CreateBackgroundMusicRequest {
                prompt: "calm piano".into(),
                duration_seconds: 0.0,
                text: "Once upon a time.".into(),
            },
            &acme(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        music.duration_seconds, 5.0,
        "a short text reads in the 5 s minimum"
    );

    eventually(
        Duration::from_secs(60),
        "both events at the partner",
        || async {
            let got = partner.received_on("/sonora");
            (got.len() >= 2).then_some(())
        },
    )
    .await;
    // Duplicates would have arrived by now; give them a moment more to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = partner.received_on("/sonora");
    assert_eq!(events.len(), 2, "one event per job: {events:?}");
    for (job, event_type, seconds) in [
        (&effect, "audio.sound_effect.completed", 1.7),
        (&music, "audio.background_music.completed", 5.0),
    ] {
        let event = events
            .iter()
            .find(|e| e.body.contains(&job.id))
            .unwrap_or_else(|| panic!("no event for {}", job.id));
        assert!(event.verified, "signed with the endpoint's key");
        let body: serde_json::Value = serde_json::from_str(&event.body).unwrap();
        assert_eq!(body["event_type"], event_type, "{body}");
        let data = &body;
        assert_eq!(data["job_id"], job.id.as_str(), "{body}");

        let stored = audio
            .get_job(on_behalf(GetJobRequest { id: job.id.clone() }, &acme()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stored.status(), JobStatus::Succeeded);
        // The timeline, in order, and the event the partner's copy came from.
        let steps = [
            stored.created_at_unix_ms,
            stored.submitted_at_unix_ms,
            stored.completed_at_unix_ms,
            stored.finished_at_unix_ms,
        ];
        assert!(steps[1] > 0 && steps.is_sorted(), "{stored:?}");
        assert!(stored.event_id.starts_with("evt_"), "{stored:?}");
        let mut delivery =
            DeliveryServiceClient::new(stack.peer("gateway", Service::DeliveryWorker).channel());
        let messages = delivery
            .list_messages(on_behalf(ListMessagesRequest::default(), &acme()))
            .await
            .unwrap()
            .into_inner()
            .messages;
        assert!(
            messages
                .iter()
                .any(|m| m.event_id == stored.event_id && m.payload_json.contains(&job.id)),
            "delivery-worker knows the job's event {} as published: {messages:?}",
            stored.event_id
        );
        let mut stream = audio
            .read_audio(on_behalf(
                ReadAudioRequest {
                    id: job.id.clone(),
                    ..Default::default()
                },
                &acme(),
            ))
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            bytes.extend_from_slice(&chunk.data);
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        let measured = audio_codec::process::decode_file(
            file.path(),
            audio_codec::process::DecodeLimits {
                max_duration: Duration::from_secs(60),
            },
        )
        .unwrap()
        .duration_seconds();
        assert!(
            (measured - seconds).abs() <= 0.05,
            "{}: {measured} s for {seconds} s",
            job.id
        );
        assert_eq!(data["audio"]["size_bytes"], bytes.len());
    }
}
