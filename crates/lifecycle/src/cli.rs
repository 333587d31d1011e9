//! The entry point every service binary calls from `main`.
//!
//! ```text
//! <service>            serve (the default)
//! <service> serve      serve until SIGTERM/SIGINT, then drain
//! <service> migrate    apply this service's database migrations and exit
//! <service> generate-internal-key   print a new internal signing key and its public entry
//! <service> --help | --version
//! ```
//!
//! Settings are loaded before anything else: a missing or bad one prints one line naming it on
//! standard error and exits with code 64, before any log line or connection.

use std::{future::Future, pin::Pin, process::ExitCode};

use settings::{CommonSettings, EXIT_CONFIG, LogFormat, SettingError, Sources};

use crate::Signals;

/// A boxed future returned by a service's entry points.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A one-off subcommand, such as `migrate`, given the arguments after its name.
pub type CommandFn<S> = fn(S, Vec<String>) -> BoxFuture<anyhow::Result<()>>;
/// Serves until shutdown.
pub type ServeFn<S> = fn(S, Signals) -> BoxFuture<anyhow::Result<()>>;

/// What a service binary is made of.
pub struct ServiceMain<S> {
    /// The binary's name, as in `services/<name>`.
    pub name: &'static str,
    /// One line saying what the service does, for `--help`.
    pub about: &'static str,
    /// Reads the service's settings.
    pub load: fn(&Sources) -> Result<S, SettingError>,
    /// The settings every service has.
    pub common: fn(&S) -> &CommonSettings,
    /// Settings needed to serve but not by one-off commands (the internal-auth keys: `migrate`
    /// calls no one); checked before serving, with the same one line and exit code.
    pub serve_check: fn(&S) -> Result<(), SettingError>,
    /// One-off subcommands besides `serve`: `migrate` for a service with a database, and any
    /// other the service has. Each runs once and exits.
    pub commands: Vec<Command<S>>,
    /// Serves until `Signals::shutdown` is cancelled and the work in flight has drained.
    pub serve: ServeFn<S>,
}

/// A one-off subcommand.
pub struct Command<S> {
    pub name: &'static str,
    pub about: &'static str,
    /// Whether it reads arguments after its name (`gateway keys create -n 5`); a command that
    /// does not is refused with any.
    pub takes_args: bool,
    pub run: CommandFn<S>,
}

impl<S> Command<S> {
    /// The `migrate` subcommand.
    pub fn migrate(run: CommandFn<S>) -> Self {
        Self {
            name: "migrate",
            about: "apply the database migrations and exit",
            takes_args: false,
            run,
        }
    }
}

enum Invocation<S> {
    Serve,
    Once(CommandFn<S>, Vec<String>),
}

/// Runs the service as the command line asks, and returns the process's exit code.
#[allow(
    clippy::print_stdout,
    reason = "--help and --version answer on standard output, as command-line programs do"
)]
pub fn run<S: Send + 'static>(service: ServiceMain<S>) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let named = |name: &str, args: usize| {
        service
            .commands
            .iter()
            .find(|c| c.name == name && (args == 0 || c.takes_args))
            .map(|c| c.run)
    };
    let command = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["serve"] => Invocation::Serve,
        [name, rest @ ..] if named(name, rest.len()).is_some() => Invocation::Once(
            named(name, rest.len()).expect("checked"),
            rest.iter().map(|a| (*a).to_owned()).collect(),
        ),
        ["generate-internal-key"] => {
            print!(
                "{}",
                internal_rpc::settings::generate_key_text(service.name)
            );
            return ExitCode::SUCCESS;
        }
        ["--version" | "-V"] => {
            println!("{} {}", service.name, env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        ["--help" | "-h" | "help"] => {
            println!("{}", usage(&service));
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!(
                "{}: unknown arguments {:?}\n{}",
                service.name,
                args,
                usage(&service)
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    let loaded = Sources::from_env()
        .and_then(|src| (service.load)(&src))
        .and_then(|settings| match command {
            Invocation::Serve => (service.serve_check)(&settings).map(|()| settings),
            Invocation::Once(..) => Ok(settings),
        });
    let settings = match loaded {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{}: {error}", service.name);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let common = (service.common)(&settings).clone();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{}: cannot start the async runtime: {error}", service.name);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let config = telemetry::TelemetryConfig {
            // A one-off command's standard output is its answer.
            logs_to_stderr: matches!(command, Invocation::Once(..)),
            ..telemetry_config(&common)
        };
        let guard = match telemetry::init(&config) {
            Ok(guard) => guard,
            Err(telemetry::TelemetryError::Filter(problem)) => {
                eprintln!(
                    "{}: {}",
                    service.name,
                    SettingError::new("RUST_LOG", problem)
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(error) => {
                eprintln!("{}: {error}", service.name);
                return ExitCode::FAILURE;
            }
        };
        let outcome = match command {
            Invocation::Once(run, args) => run(settings, args).await,
            Invocation::Serve => {
                let signals = Signals::new();
                match signals.listen_os() {
                    Ok(()) => {
                        tracing::info!(
                            service = service.name,
                            environment = %common.environment,
                            version = env!("CARGO_PKG_VERSION"),
                            "starting"
                        );
                        (service.serve)(settings, signals).await
                    }
                    Err(error) => {
                        Err(anyhow::Error::new(error).context("cannot listen for signals"))
                    }
                }
            }
        };
        let code = match &outcome {
            Ok(()) => {
                tracing::info!(service = service.name, "stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(
                    service = service.name,
                    error = format!("{error:#}"),
                    "failed"
                );
                ExitCode::FAILURE
            }
        };
        // Flushing blocks until the exporter has sent what it buffered.
        let _ = tokio::task::spawn_blocking(move || guard.shutdown()).await;
        code
    })
}

/// The telemetry set-up that follows from the common settings.
pub fn telemetry_config(common: &CommonSettings) -> telemetry::TelemetryConfig {
    telemetry::TelemetryConfig {
        service_name: common.service_name.clone(),
        log_filter: common.log_filter.clone(),
        json_logs: common.log_format == LogFormat::Json,
        otlp_endpoint: common.otlp_endpoint.as_ref().map(ToString::to_string),
        environment: common.environment.to_string(),
        logs_to_stderr: false,
    }
}

fn usage<S>(service: &ServiceMain<S>) -> String {
    let commands: String = service
        .commands
        .iter()
        .map(|c| format!("\n  {} {}   {}", service.name, c.name, c.about))
        .collect();
    format!(
        "{name}: {about}\n\nUsage:\n  {name} [serve]   serve until SIGTERM or SIGINT{commands}\n  {name} generate-internal-key   print a new internal signing key and the entry servers trust it by\n  {name} --version\n\nSettings come from the environment (see README.md, \"Configuration\").",
        name = service.name,
        about = service.about,
    )
}
