//! The jobs API: created at once as queued, read back by their tenant only, refused clearly.

use internal_rpc::{Principal, Scope, Scopes, on_behalf};
use sonora_proto::audio::v1::{
    CreateBackgroundMusicRequest, CreateSoundEffectRequest, GetJobRequest, JobExistsRequest,
    JobStatus, JobType, ListJobsRequest, audio_generation_client::AudioGenerationClient,
};
use test_stack::{Service, Stack};
use test_support::TestDatabase;
use tonic::Code;

fn client_of(tenant: &str, scopes: &[Scope]) -> Principal {
    Principal {
        tenant: ids::Tenant::parse(tenant).unwrap(),
        key_id: Some(ids::KeyId::new()),
        scopes: Scopes::of(scopes.iter().copied()),
    }
}

#[tokio::test]
async fn jobs_are_queued_at_once_and_kept_per_tenant() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_audio().start().await;
    test_support::wait_ready(&stack.http_url(Service::AudioGeneration), 200).await;
    let mut gateway =
        AudioGenerationClient::new(stack.peer("gateway", Service::AudioGeneration).channel());
    let acme = client_of("acme", &[Scope::Audio]);

    let effect = gateway
        .create_sound_effect(on_behalf(
            CreateSoundEffectRequest {
                prompt: "  rain on a tin roof ".into(),
                duration_seconds: 8.0,
                seed: Some(7),
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(effect.id.starts_with("job_"), "{effect:?}");
    assert_eq!(
        (
            effect.r#type(),
            effect.status(),
            effect.prompt.as_str(),
            effect.duration_seconds
        ),
        (
            JobType::SoundEffect,
            JobStatus::Queued,
            "rain on a tin roof",
            8.0
        )
    );
    let words = "word ".repeat(300);
    let music = gateway
        .create_background_music(on_behalf(
            CreateBackgroundMusicRequest {
                prompt: "calm piano".into(),
                duration_seconds: 0.0,
                text: words,
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(music.duration_seconds, 120.0, "300 words at 150 a minute");

    let got = gateway
        .get_job(on_behalf(
            GetJobRequest {
                id: effect.id.clone(),
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, effect);
    let listed = gateway
        .list_jobs(on_behalf(ListJobsRequest::default(), &acme))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, [music.id.as_str(), effect.id.as_str()], "newest first");
    let page = gateway
        .list_jobs(on_behalf(
            ListJobsRequest {
                page_size: 1,
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.next_page_token, music.id);
    let second = gateway
        .list_jobs(on_behalf(
            ListJobsRequest {
                page_size: 1,
                page_token: page.next_page_token,
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.jobs[0].id, effect.id);
    // By creation time: from the music's creation on, only the music; before it, the effect.
    let window = |after: Option<i64>, before: Option<i64>| ListJobsRequest {
        created_after_unix_ms: after,
        created_before_unix_ms: before,
        ..Default::default()
    };
    let since = gateway
        .list_jobs(on_behalf(
            window(Some(music.created_at_unix_ms), None),
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        since
            .jobs
            .iter()
            .all(|j| j.created_at_unix_ms >= music.created_at_unix_ms)
    );
    assert!(since.jobs.iter().any(|j| j.id == music.id));
    let until = gateway
        .list_jobs(on_behalf(
            window(None, Some(effect.created_at_unix_ms + 1)),
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(until.jobs.iter().any(|j| j.id == effect.id), "{until:?}");
    assert!(
        until
            .jobs
            .iter()
            .all(|j| j.created_at_unix_ms <= effect.created_at_unix_ms),
        "{until:?}"
    );
    let bad = gateway
        .list_jobs(on_behalf(window(Some(i64::MAX), None), &acme))
        .await
        .unwrap_err();
    assert!(
        bad.message().starts_with("created_after_unix_ms"),
        "{bad:?}"
    );

    // Another tenant sees nothing of acme's.
    let intruder = client_of("intruder", &[Scope::Audio]);
    let status = gateway
        .get_job(on_behalf(
            GetJobRequest {
                id: effect.id.clone(),
            },
            &intruder,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let theirs = gateway
        .list_jobs(on_behalf(ListJobsRequest::default(), &intruder))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.jobs.is_empty());

    // webhook-ingest asks whether a job exists, whatever its tenant.
    let mut ingest = AudioGenerationClient::new(
        stack
            .peer("webhook-ingest", Service::AudioGeneration)
            .channel(),
    );
    for (id, exists) in [
        (effect.id.as_str(), true),
        ("job_0123456789abcdef0123456789abcdef", false),
        ("123", false),
    ] {
        let answer = ingest
            .job_exists(JobExistsRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.exists, exists, "{id}");
    }
}

#[tokio::test]
async fn bad_requests_and_wrong_callers_are_refused() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_audio().start().await;
    test_support::wait_ready(&stack.http_url(Service::AudioGeneration), 200).await;
    let mut gateway =
        AudioGenerationClient::new(stack.peer("gateway", Service::AudioGeneration).channel());
    let acme = client_of("acme", &[Scope::Audio]);
    let effect = |prompt: &str, duration_seconds: f64| CreateSoundEffectRequest {
        prompt: prompt.into(),
        duration_seconds,
        seed: None,
    };
    for (request, field) in [
        (effect("", 5.0), "prompt"),
        (effect(&"x".repeat(2001), 5.0), "prompt"),
        (effect("rain", 0.0), "duration_seconds"),
        (effect("rain", 48.0), "duration_seconds"),
        (effect("rain", f64::NAN), "duration_seconds"),
    ] {
        let status = gateway
            .create_sound_effect(on_behalf(request, &acme))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{status:?}");
    }
    let status = gateway
        .create_background_music(on_behalf(
            CreateBackgroundMusicRequest {
                prompt: "piano".into(),
                duration_seconds: 30.0,
                text: "and a text".into(),
            },
            &acme,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = gateway
        .get_job(on_behalf(GetJobRequest { id: "ep_1".into() }, &acme))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message().starts_with("id:")),
        (Code::InvalidArgument, true)
    );
    let status = gateway
        .list_jobs(on_behalf(
            ListJobsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // A key without the audio scope, and the gateway acting for itself, are refused.
    let tts_only = client_of("acme", &[Scope::Tts]);
    let status = gateway
        .create_sound_effect(on_behalf(effect("rain", 5.0), &tts_only))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = gateway
        .create_sound_effect(effect("rain", 5.0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let listed = gateway
        .list_jobs(on_behalf(ListJobsRequest::default(), &acme))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "nothing refused was recorded");
}
