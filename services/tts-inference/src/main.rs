fn main() -> std::process::ExitCode {
    // SAFETY: first thing in main; no other thread has been started.
    #[allow(unsafe_code)]
    unsafe {
        tts_inference::prepare_process();
    }
    lifecycle::cli::run(tts_inference::service())
}
