//! Integration tests of the Replicate simulator: the real server on port 0, spoken to over HTTP,
//! with a real webhook receiver on loopback that verifies signatures.

mod audio;
mod knobs;
mod predictions;
mod support;
mod webhooks;

use lifecycle::Signals;
use replicate_simulator::{Application, Settings};
use test_support::{assert_operational, sources};

#[tokio::test]
async fn operational_endpoints() {
    let signals = Signals::new();
    let app = Application::build(Settings::load(&sources([])).unwrap(), signals.clone()).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let task = tokio::spawn(app.stopped());
    assert_operational(&base, &[]).await;
    signals.shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[test]
fn bad_knobs_are_refused_naming_them() {
    for (name, value) in [
        ("REPLICATE_WEBHOOK_SECRET", "not-a-secret"),
        (
            "REPLICATE_WEBHOOK_SECRET",
            "whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=",
        ),
        ("SIMULATOR_LOST_WEBHOOK_RATE", "-0.1"),
        ("SIMULATOR_DOWNLOAD_FAILURE_MODE", "explode"),
        ("SIMULATOR_WEBHOOK_ATTEMPTS", "11"),
        ("SIMULATOR_MAX_PREDICTIONS", "2000000"),
        ("SIMULATOR_PAGE_SIZE", "5000"),
        ("SIMULATOR_PUBLIC_URL", "ftp://example.com"),
        ("SIMULATOR_GENERATION_DELAY", "soon"),
    ] {
        let error = Settings::load(&sources([(name, value.to_owned())])).unwrap_err();
        assert!(error.to_string().contains(name), "{name}: {error}");
        assert!(!error.to_string().contains(value), "{name}: {error}");
    }
}

#[test]
fn bad_setting_exits_64_naming_it() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_replicate-simulator"),
        &[],
        &[("SIMULATOR_FAILURE_RATE", "1.5")],
    );
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(
        run.stderr.contains("SIMULATOR_FAILURE_RATE"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("1.5"), "{}", run.stderr);
}
