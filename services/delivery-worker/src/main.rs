fn main() -> std::process::ExitCode {
    lifecycle::cli::run(delivery_worker::service())
}
