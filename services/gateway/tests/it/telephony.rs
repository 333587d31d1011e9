//! Phone calls through a fake Twilio on loopback that speaks Twilio's real protocol: it signs
//! its voice webhook and its WebSocket upgrade as Twilio does (HMAC-SHA1 with the auth token over
//! the public URL and the sorted form parameters), sends `connected`, `start`, `dtmf` and `stop`,
//! and plays what it receives in real time from a buffer, echoing each `mark` once the audio
//! queued before it has played, and at once on `clear`. The greeting and a `say` are transcribed
//! by Whisper; the partner receives the call's events, signed, through delivery-worker.

#![allow(
    clippy::print_stdout,
    reason = "the transcripts and timings are the evidence, printed with --no-capture"
)]

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use internal_rpc::Scope;
use reqwest::Method;
use serde_json::{Value, json};
use test_stack::{Service, Stack};
use test_support::{TestDatabase, eventually, receiver::Receiver};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

use crate::{
    realtime::{mulaw_samples, transcribe, ws_url},
    webhooks::call,
};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const PUBLIC: &str = "https://voice.sonora.test";
const NUMBER: &str = "+15551230000";
const GREETING: &str = "Thank you for calling the city library. How can I help you today?";

/// Twilio's signature: base64 HMAC-SHA1 over the URL and each parameter's name and value,
/// sorted by name.
fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (name, value) in sorted {
        data.push_str(name);
        data.push_str(value);
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, TOKEN.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, data.as_bytes()))
}

/// What the fake Twilio received on the stream, in order.
#[derive(Debug, Clone)]
enum Got {
    Media(Vec<u8>, Instant),
    Mark(String),
    Clear,
}

#[derive(Default)]
struct Played {
    got: Vec<Got>,
    /// Marks echoed back, in order.
    echoed: Vec<String>,
}

/// Twilio's side of one media stream.
struct FakeCall {
    state: Arc<Mutex<Played>>,
    commands: mpsc::Sender<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeCall {
    /// Connects (signed), then sends `connected` and `start` with `parameters`.
    async fn connect(
        base: &str,
        call_sid: &str,
        parameters: Value,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let media_path = "/v1/telephony/twilio/media";
        let public = format!("{}{media_path}", PUBLIC.replacen("https://", "wss://", 1));
        let mut request = ws_url(base, media_path).into_client_request().unwrap();
        request.headers_mut().insert(
            "x-twilio-signature",
            twilio_signature(&public, &[]).parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let (mut sink, mut stream) = ws.split();
        let stream_sid = format!("MZ{}", &call_sid[2..]);
        sink.send(Message::text(
            json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string(),
        ))
        .await
        .unwrap();
        sink.send(Message::text(
            json!({
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": ACCOUNT,
                    "streamSid": stream_sid,
                    "callSid": call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": parameters,
                },
                "streamSid": stream_sid,
            })
            .to_string(),
        ))
        .await
        .unwrap();
        let state = Arc::new(Mutex::new(Played::default()));
        let (commands, mut rx) = mpsc::channel::<Value>(8);
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            // Audio plays from a buffer in real time; a mark comes back when what was queued
            // before it has played.
            let mut playing_until = tokio::time::Instant::now();
            let mut marks: VecDeque<(tokio::time::Instant, String)> = VecDeque::new();
            let mut sequence = 2u64;
            loop {
                let next_mark = marks.front().map(|(at, _)| *at);
                tokio::select! {
                    () = async {
                        match next_mark {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        let (_, name) = marks.pop_front().unwrap();
                        shared.lock().unwrap().echoed.push(name.clone());
                        let echo = json!({"event": "mark", "sequenceNumber": sequence.to_string(), "streamSid": stream_sid, "mark": {"name": name}});
                        sequence += 1;
                        if sink.send(Message::text(echo.to_string())).await.is_err() { return; }
                    }
                    command = rx.recv() => match command {
                        Some(message) => {
                            let stop = message["event"] == "stop";
                            if sink.send(Message::text(message.to_string())).await.is_err() { return; }
                            if stop {
                                let _ = sink.close().await;
                            }
                        }
                        None => return,
                    },
                    message = stream.next() => {
                        let Some(Ok(message)) = message else { return };
                        let Message::Text(text) = message else { continue };
                        let value: Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(value["streamSid"], stream_sid, "{value}");
                        let now = tokio::time::Instant::now();
                        match value["event"].as_str().unwrap() {
                            "media" => {
                                let payload = base64::engine::general_purpose::STANDARD
                                    .decode(value["media"]["payload"].as_str().unwrap())
                                    .unwrap();
                                playing_until = playing_until.max(now)
                                    + Duration::from_secs_f64(payload.len() as f64 / 8000.0);
                                shared.lock().unwrap().got.push(Got::Media(payload, Instant::now()));
                            }
                            "mark" => {
                                let name = value["mark"]["name"].as_str().unwrap().to_owned();
                                shared.lock().unwrap().got.push(Got::Mark(name.clone()));
                                marks.push_back((playing_until.max(now), name));
                            }
                            "clear" => {
                                shared.lock().unwrap().got.push(Got::Clear);
                                playing_until = now;
                                for (at, _) in &mut marks {
                                    *at = now;
                                }
                            }
                            other => panic!("Twilio has no {other} message: {value}"),
                        }
                    }
                }
            }
        });
        Ok(Self {
            state,
            commands,
            task,
        })
    }

    fn got(&self) -> Vec<Got> {
        self.state.lock().unwrap().got.clone()
    }

    fn echoed(&self) -> Vec<String> {
        self.state.lock().unwrap().echoed.clone()
    }

    /// The μ-law received between the `n`th mark and the one before it (0: before the first).
    fn utterance_audio(&self, n: usize) -> Vec<u8> {
        let mut marks = 0;
        let mut audio = Vec::new();
        for got in self.got() {
            match got {
                Got::Mark(_) => marks += 1,
                Got::Media(bytes, _) if marks == n => audio.extend(bytes),
                _ => {}
            }
        }
        audio
    }
}

/// Posts the voice webhook as Twilio does, signed unless `signature` says otherwise.
async fn voice_webhook(
    base: &str,
    params: &[(&str, &str)],
    signature: Option<String>,
) -> (u16, String, String) {
    let path = "/v1/telephony/twilio/voice";
    let mut request = test_support::http_client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params)
                .finish(),
        );
    if let Some(signature) = signature {
        request = request.header("x-twilio-signature", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// `<Parameter name=".." value=".."/>` pairs and the stream URL of a TwiML answer.
fn stream_of(twiml: &str) -> (String, Vec<(String, String)>) {
    let attribute = |tag: &str, name: &str| -> String {
        let at = tag.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        let end = tag[at..].find('"').unwrap();
        tag[at..at + end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    let stream_tag = &twiml[twiml.find("<Stream ").unwrap()..];
    let url = attribute(&stream_tag[..stream_tag.find('>').unwrap()], "url");
    let parameters = twiml
        .match_indices("<Parameter ")
        .map(|(at, _)| {
            let tag = &twiml[at..at + twiml[at..].find("/>").unwrap()];
            (attribute(tag, "name"), attribute(tag, "value"))
        })
        .collect();
    (url, parameters)
}

async fn wer_of(audio: &[u8], reference: &str) -> f64 {
    let heard = transcribe(mulaw_samples(audio), 8000).await;
    let wer = listener::word_error_rate(reference, &heard);
    println!("heard {heard:?} for {reference:?}: WER {wer:.3}");
    wer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_call_hears_its_greeting_and_says_and_can_be_interrupted() {
    let db = TestDatabase::create().await.unwrap();
    let numbers = json!([{"number": NUMBER, "tenant": "acme", "greeting": GREETING}]).to_string();
    let telephony = vec![
        ("TWILIO_AUTH_TOKEN".to_owned(), TOKEN.to_owned()),
        ("TWILIO_ACCOUNT_SID".to_owned(), ACCOUNT.to_owned()),
        ("PUBLIC_BASE_URL".to_owned(), PUBLIC.to_owned()),
        ("TWILIO_NUMBERS".to_owned(), numbers),
    ];
    let mut builder = Stack::new(&db).with_tts().with_delivery().with_gateway();
    for (name, value) in &telephony {
        builder = builder.setting(Service::Gateway, name, value.clone());
    }
    let stack = builder.start().await;
    // A second replica of the gateway, on the same database and Redis: a say sent to it must
    // reach the call the first one holds.
    let signals = lifecycle::Signals::new();
    let other = gateway::Application::build(
        gateway::Settings::load(&stack.sources(Service::Gateway, Some(&telephony))).unwrap(),
        signals.clone(),
    )
    .unwrap();
    let other_base = format!("http://127.0.0.1:{}", other.port());
    let base = stack.http_url(Service::Gateway);
    let acme = stack.api_key("acme", &Scope::ALL).await;
    let globex = stack.api_key("globex", &Scope::ALL).await;

    // The tenant's partner subscribes to call events.
    let receiver = Receiver::start().await;
    let (status, _, endpoint) = call(
        Method::POST,
        &format!("{base}/v1/webhook-endpoints"),
        &acme,
        Some(json!({"url": receiver.url("/calls"), "event_types": ["call.started", "call.dtmf", "call.utterance.played", "call.completed"]})),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let id = endpoint["id"].as_str().unwrap();
    let (_, _, secret) = call(
        Method::GET,
        &format!("{base}/v1/webhook-endpoints/{id}/secret"),
        &acme,
        None,
    )
    .await;
    receiver.trust_only("/calls", &[secret["key"].as_str().unwrap()]);

    // The voice webhook: unsigned or wrongly signed is 403; signed gets the TwiML.
    let call_sid = "CA00112233445566778899aabbccddeeff";
    let params = [
        ("AccountSid", ACCOUNT),
        ("CallSid", call_sid),
        ("From", "+15559870000"),
        ("To", NUMBER),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
    ];
    let voice_url = format!("{PUBLIC}/v1/telephony/twilio/voice");
    assert_eq!(voice_webhook(&base, &params, None).await.0, 403);
    let wrong = twilio_signature(&format!("{PUBLIC}/v1/telephony/twilio/voices"), &params);
    assert_eq!(voice_webhook(&base, &params, Some(wrong)).await.0, 403);
    let mut tampered = params;
    tampered[2] = ("From", "+15550000000");
    let signed_for_original = twilio_signature(&voice_url, &params);
    assert_eq!(
        voice_webhook(&base, &tampered, Some(signed_for_original.clone()))
            .await
            .0,
        403
    );
    let (status, content_type, twiml) =
        voice_webhook(&base, &params, Some(signed_for_original)).await;
    assert_eq!(status, 200, "{twiml}");
    assert!(content_type.starts_with("text/xml"), "{content_type}");
    assert!(twiml.contains("<Response><Connect><Stream "), "{twiml}");
    let (stream_url, parameters) = stream_of(&twiml);
    assert_eq!(
        stream_url,
        "wss://voice.sonora.test/v1/telephony/twilio/media"
    );
    assert!(!stream_url.contains('?'));
    let parameter = |name: &str| {
        parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(parameter("tenant"), "acme");
    assert_eq!(parameter("number"), NUMBER);
    assert_eq!(parameter("from"), "+15559870000");
    // A number not configured is rejected.
    let mut elsewhere = params;
    elsewhere[3] = ("To", "+15550001111");
    let signed = twilio_signature(&voice_url, &elsewhere);
    let (status, _, twiml) = voice_webhook(&base, &elsewhere, Some(signed)).await;
    assert_eq!(status, 200);
    assert!(twiml.contains("<Reject"), "{twiml}");

    // The media WebSocket refuses an unsigned upgrade.
    let unsigned =
        tokio_tungstenite::connect_async(ws_url(&base, "/v1/telephony/twilio/media")).await;
    match unsigned {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }

    // The call: the greeting is heard, then its mark comes back.
    let custom: serde_json::Map<String, Value> = parameters
        .iter()
        .map(|(n, v)| (n.clone(), Value::String(v.clone())))
        .collect();
    let twilio = FakeCall::connect(&base, call_sid, Value::Object(custom))
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "the greeting's mark", || async {
        (!twilio.echoed().is_empty()).then_some(())
    })
    .await;
    let greeting = twilio.utterance_audio(0);
    assert!(greeting.len() > 8000, "{} bytes", greeting.len());
    assert!(wer_of(&greeting, GREETING).await <= 0.10);
    // Every frame is 20 ms of μ-law but the utterance's last.
    let sizes: Vec<usize> = twilio
        .got()
        .iter()
        .filter_map(|g| match g {
            Got::Media(b, _) => Some(b.len()),
            _ => None,
        })
        .collect();
    assert!(
        sizes[..sizes.len() - 1].iter().all(|&s| s == 160),
        "{sizes:?}"
    );

    // Another tenant cannot speak on the call or clear it; it does not exist for them.
    let say_url = format!("{base}/v1/calls/{call_sid}/say");
    let (status, _, _) = call(Method::POST, &say_url, &globex, Some(json!({"text": "hi"}))).await;
    assert_eq!(status, 404);
    let (status, _, _) = call(
        Method::POST,
        &format!("{base}/v1/calls/{call_sid}/clear"),
        &globex,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, body) = call(
        Method::POST,
        &say_url,
        &acme,
        Some(json!({"text": "hi", "ssml": "<speak>hi</speak>"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = call(
        Method::POST,
        &format!("{base}/v1/calls/CAnope/say"),
        &acme,
        Some(json!({"text": "hi"})),
    )
    .await;
    assert_eq!(status, 404);

    // A say, waited for until it has played.
    let said = "Our opening hours are from nine in the morning until six in the evening.";
    let frames_before = twilio.got().len();
    let asked = Instant::now();
    let (status, _, answer) = call(
        Method::POST,
        &format!("{say_url}?wait=true&timeout_ms=30000"),
        &acme,
        Some(json!({"text": said})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "played", "{answer}");
    assert!(answer["utterance_id"].as_str().unwrap().starts_with("utt_"));
    let first_frame = twilio.got()[frames_before..]
        .iter()
        .find_map(|g| match g {
            Got::Media(_, at) => Some(*at),
            _ => None,
        })
        .unwrap();
    println!("say to first μ-law frame: {:?}", first_frame - asked);
    assert!(
        asked.elapsed() >= Duration::from_secs(3),
        "it waited for the audio to play"
    );
    assert!(wer_of(&twilio.utterance_audio(1), said).await <= 0.10);

    // Through the other replica: forwarded to the one holding the call, and waited for there.
    let other_say = format!("{other_base}/v1/calls/{call_sid}/say");
    let (status, _, _) = call(
        Method::POST,
        &other_say,
        &globex,
        Some(json!({"text": "hi"})),
    )
    .await;
    assert_eq!(
        status, 404,
        "another tenant's call does not exist on any replica"
    );
    let (status, _, answer) = call(
        Method::POST,
        &format!("{other_say}?wait=true"),
        &acme,
        Some(json!({"text": "One moment please."})),
    )
    .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("played")),
        "{answer}"
    );
    assert!(wer_of(&twilio.utterance_audio(2), "One moment please.").await <= 0.10);

    // The caller presses a key.
    twilio
        .commands
        .send(json!({"event": "dtmf", "streamSid": format!("MZ{}", &call_sid[2..]), "sequenceNumber": "40", "dtmf": {"track": "inbound_track", "digit": "5"}}))
        .await
        .unwrap();

    // Barge-in: a long say is interrupted as soon as its audio starts; no frame follows the
    // clear, the waiting say learns it was interrupted, and its mark comes back.
    let long = "This is a very long announcement about the library's many services. \
                We lend books, films and music. We run reading groups for children and adults. \
                We offer computers, printers and quiet rooms for study. Please listen carefully \
                because our menu options have changed.";
    let frames_before = twilio.got().len();
    let waiting = {
        let (url, key) = (format!("{say_url}?wait=true"), acme.clone());
        tokio::spawn(
            async move { call(Method::POST, &url, &key, Some(json!({"text": long}))).await },
        )
    };
    eventually(Duration::from_secs(30), "the long say's audio", || async {
        twilio.got()[frames_before..]
            .iter()
            .any(|g| matches!(g, Got::Media(..)))
            .then_some(())
    })
    .await;
    let (status, _, cleared) = call(
        Method::POST,
        &format!("{base}/v1/calls/{call_sid}/clear"),
        &acme,
        None,
    )
    .await;
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(cleared["cleared"], 1, "{cleared}");
    let (status, _, answer) = waiting.await.unwrap();
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("interrupted")),
        "{answer}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = twilio.got();
    let clear_at = got
        .iter()
        .position(|g| matches!(g, Got::Clear))
        .expect("a clear");
    let after: Vec<&Got> = got[clear_at + 1..].iter().collect();
    assert!(
        after.iter().all(|g| !matches!(g, Got::Media(..))),
        "audio after the clear: {after:?}"
    );
    // The interrupted utterance's mark was sent before the clear and came back.
    let Got::Mark(pending) = &got[clear_at - 1] else {
        panic!("the mark precedes the clear: {:?}", &got[clear_at - 1]);
    };
    assert_eq!(twilio.echoed().last(), Some(pending));
    let interrupted_seconds = twilio.utterance_audio(3).len() as f64 / 8000.0;
    println!("{interrupted_seconds:.2} s of the long say went out before the clear");

    // Twilio stops the stream; the call is gone.
    twilio
        .commands
        .send(json!({"event": "stop", "sequenceNumber": "99", "streamSid": format!("MZ{}", &call_sid[2..]), "stop": {"accountSid": ACCOUNT, "callSid": call_sid}}))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the call to end", || async {
        let (status, _, _) = call(
            Method::POST,
            &say_url,
            &acme,
            Some(json!({"text": "still there?"})),
        )
        .await;
        (status == 404).then_some(())
    })
    .await;
    twilio.task.abort();

    // The partner heard it all, signed.
    let events = eventually(Duration::from_secs(30), "the call's events", || async {
        let received = receiver.received_on("/calls");
        received
            .iter()
            .any(|r| r.body.contains("call.completed"))
            .then_some(received)
    })
    .await;
    assert!(events.iter().all(|r| r.verified), "every event is signed");
    let bodies: Vec<Value> = events
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let types: Vec<&str> = bodies
        .iter()
        .map(|b| b["event_type"].as_str().unwrap())
        .collect();
    println!("events: {types:?}");
    assert_eq!(types.first(), Some(&"call.started"));
    assert_eq!(types.last(), Some(&"call.completed"));
    let dtmf = bodies
        .iter()
        .find(|b| b["event_type"] == "call.dtmf")
        .expect("call.dtmf");
    assert_eq!(dtmf["digit"], "5");
    let played: Vec<&str> = bodies
        .iter()
        .filter(|b| b["event_type"] == "call.utterance.played")
        .map(|b| b["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(played, ["played", "played", "played", "interrupted"]);
    let completed = bodies.last().unwrap();
    assert_eq!(completed["call_sid"], call_sid);
    assert_eq!(completed["reason"], "stop");
    assert_eq!(completed["utterances"], 4);
    for body in &bodies {
        assert_matches_catalogue(body);
    }
    signals.shutdown.cancel();
    other.stopped().await.unwrap();
}

/// Each event carries exactly the catalogue's fields.
fn assert_matches_catalogue(payload: &Value) {
    let event_type = payload["event_type"].as_str().unwrap();
    let (_, document) = sonora_proto::events::CATALOGUE
        .iter()
        .find(|(name, _)| *name == event_type)
        .expect("catalogued");
    let document: Value = serde_json::from_str(document).unwrap();
    let mut required: Vec<&str> = document["schema"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    let mut keys: Vec<&str> = payload
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, required, "{event_type}");
    let mut example: Vec<&str> = document["example"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    example.sort_unstable();
    assert_eq!(example, required, "{event_type} example");
}
