//! The life of a service process: start-up from settings, liveness and readiness, the operational
//! HTTP endpoints, serving HTTP and gRPC, and a graceful stop.
//!
//! - [`cli`] is what every `main.rs` calls: it parses the subcommand (`serve`, `migrate`), loads
//!   the settings (a bad one stops the process with one line and exit code 64), installs
//!   telemetry, listens for signals and runs the service.
//! - [`readiness`] checks the service's dependencies on demand and reports each one.
//! - [`http`] serves `/health`, `/ready` and `/metrics`, and runs actix-web servers that drain on
//!   shutdown.
//! - [`grpc`] runs tonic servers that drain on shutdown, keeps the standard gRPC health service in
//!   step with readiness, and builds channels to gRPC peers.
//! - [`signals`] turns SIGTERM/SIGINT into a cancellation token and SIGHUP into a reload notice.

pub mod cli;
pub mod cors;
pub mod grpc;
pub mod http;
pub mod readiness;
pub mod signals;

pub use readiness::Readiness;
pub use signals::Signals;
