//! Where audio-generation's outbound requests may go (server-side request forgery): in production
//! a download or an API call never reaches a loopback, private, link-local or metadata address,
//! whether the URL names it as an address or through a host name that resolves there.

use audio_generation::{
    completion::allowed_output, config::WorkSettings, finisher::download_client,
    replicate::Replicate,
};
use settings::Environment;
use test_support::{receiver::Receiver, sources};

fn work(environment: Environment, pairs: &[(&str, &str)]) -> WorkSettings {
    let mut all = vec![(
        "AUDIO_DOWNLOAD_ALLOWED_HOSTS",
        "replicate.delivery,*.replicate.delivery,localhost".to_owned(),
    )];
    all.extend(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())));
    WorkSettings::load(&sources(all), environment).expect("valid settings")
}

#[tokio::test]
async fn production_downloads_refuse_names_that_resolve_to_private_addresses() {
    let receiver = Receiver::start().await;
    // `localhost` is on the allow-list here on purpose: the name check passes, so what refuses
    // it is the address it resolves to, as with a public name an attacker points at loopback.
    let by_name = receiver
        .url("/files/a.wav")
        .replace("127.0.0.1", "localhost");

    let production = work(Environment::Production, &[]);
    let refused = download_client(&production.finish)
        .get(&by_name)
        .send()
        .await
        .expect_err("production does not connect to loopback through a name");
    assert!(refused.is_connect() || refused.is_request(), "{refused:?}");
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );

    // Addresses written as such are refused before any request (with every special range).
    for url in [
        "https://127.0.0.1/a.wav",
        "https://10.1.2.3/a.wav",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/a.wav",
        "https://[::ffff:169.254.169.254]/a.wav",
    ] {
        let mut finish = production.finish.clone();
        finish.allowed_hosts.push(
            settings::Url::parse(url)
                .unwrap()
                .host_str()
                .unwrap()
                .to_owned(),
        );
        let refused = allowed_output(url, &finish).expect_err(url);
        assert!(refused.contains("not public"), "{url}: {refused}");
    }

    // The operator can open a network on purpose.
    let opened = work(
        Environment::Production,
        &[("OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8")],
    );
    download_client(&opened.finish)
        .get(&by_name)
        .send()
        .await
        .expect("an allowed network is reached");
    assert_eq!(receiver.received().len(), 1);

    // Development reaches local fakes.
    let development = work(Environment::Development, &[]);
    download_client(&development.finish)
        .get(&by_name)
        .send()
        .await
        .expect("development reaches loopback");
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn production_api_calls_refuse_private_addresses() {
    let receiver = Receiver::start().await;
    let api = settings::Url::parse(&receiver.url("/").replace("127.0.0.1", "localhost")).unwrap();
    let production = work(Environment::Production, &[]);
    let replicate = Replicate::new(
        &api,
        Some(settings::SecretString::from("r8_test_token")),
        std::time::Duration::from_secs(2),
        &production.finish.outbound,
    );
    assert!(
        replicate.get("gm3qorzdhgbfurvjtvhg6dckhu").await.is_err(),
        "Replicate's API is not reached on loopback in production"
    );
    assert!(receiver.received().is_empty());
}
