fn main() -> std::process::ExitCode {
    lifecycle::cli::run(audio_generation::service())
}
