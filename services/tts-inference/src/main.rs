fn main() -> std::process::ExitCode {
    // First thing, while this is the process's only thread (see its docs).
    tts_inference::prepare_process();
    lifecycle::cli::run(tts_inference::service())
}
