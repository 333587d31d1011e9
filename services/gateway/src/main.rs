fn main() -> std::process::ExitCode {
    lifecycle::cli::run(gateway::service())
}
