fn main() -> std::process::ExitCode {
    lifecycle::cli::run(tts_inference::service())
}
