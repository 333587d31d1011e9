fn main() -> std::process::ExitCode {
    lifecycle::cli::run(webhook_ingest::service())
}
