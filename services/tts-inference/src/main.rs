fn main() -> std::process::ExitCode {
    // SAFETY: first thing in main; no other thread has been started.
    #[allow(unsafe_code)]
    unsafe {
        voice::keep_candle_on_rayon();
    }
    lifecycle::cli::run(tts_inference::service())
}
