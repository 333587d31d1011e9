fn main() -> std::process::ExitCode {
    lifecycle::cli::run(replicate_simulator::service())
}
