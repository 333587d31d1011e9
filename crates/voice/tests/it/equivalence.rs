//! Each VITS stage against onnxruntime running the same model, noise disabled.
//!
//! Each stage is fed the reference's own input for that stage, so an error shows up in the stage
//! that makes it instead of accumulating. Tolerances are absolute; they are stated in the crate
//! documentation and are a few times the differences measured on this machine.

use candle_core::{Device, Tensor};
use voice::{Encoded, Scales, model::durations};

use crate::common::{self, max_abs_diff, reference};

// Keep these in step with the table in the crate documentation (src/lib.rs).
const ENCODER_TOL: f32 = 5e-5;
const LOGW_TOL: f32 = 1e-4;
const FLOW_TOL: f32 = 2e-4;
const DECODER_TOL: f32 = 1e-5;
const END_TO_END_TOL: f32 = 1e-4;

fn ids(case: &str) -> Vec<i64> {
    reference(case, "ids").to_vec1::<i64>().unwrap()
}

fn check_encoder(case: &str) {
    let enc = common::model().encode(&ids(case)).unwrap();
    for (name, ours) in [("x", &enc.x), ("m_p", &enc.m_p), ("logs_p", &enc.logs_p)] {
        let diff = max_abs_diff(ours, &reference(case, name));
        eprintln!("{case} encoder {name}: max |diff| = {diff:e}");
        assert!(diff < ENCODER_TOL, "{case} {name}: {diff}");
    }
}

#[test]
fn text_encoder_matches() {
    check_encoder("sentence");
    check_encoder("short");
}

#[test]
fn duration_predictor_matches_and_gives_the_same_frames() {
    for case in ["sentence", "short"] {
        let logw = common::model()
            .log_durations(&reference(case, "x"), None, 0.0)
            .unwrap();
        let expected = reference(case, "logw");
        let diff = max_abs_diff(&logw, &expected);
        eprintln!("{case} logw: max |diff| = {diff:e}");
        assert!(diff < LOGW_TOL, "{case} logw: {diff}");
        // Length regulation: the same number of frames per phoneme as the reference.
        let frames = durations(&logw, 1.0).unwrap();
        assert_eq!(frames, durations(&expected, 1.0).unwrap());
        assert_eq!(
            frames.iter().sum::<usize>(),
            reference(case, "z").dim(2).unwrap()
        );
    }
}

#[test]
fn length_regulation_expands_the_prior_like_the_reference() {
    let case = "sentence";
    let encoded = Encoded {
        x: reference(case, "x"),
        m_p: reference(case, "m_p"),
        logs_p: reference(case, "logs_p"),
    };
    let frames = durations(&reference(case, "logw"), 1.0).unwrap();
    let (m, logs) = common::model().expand(&encoded, &frames).unwrap();
    let z_p = common::model().prior_sample(&m, &logs, 0.0).unwrap();
    assert_eq!(max_abs_diff(&z_p, &reference(case, "z_p")), 0.0);
}

#[test]
fn coupling_flows_match() {
    for case in ["sentence", "short"] {
        let z = common::model()
            .flow_reverse(&reference(case, "z_p"), None)
            .unwrap();
        let diff = max_abs_diff(&z, &reference(case, "z"));
        eprintln!("{case} flows: max |diff| = {diff:e}");
        assert!(diff < FLOW_TOL, "{case} flows: {diff}");
    }
}

#[test]
fn decoder_matches_on_the_chain_and_on_its_own() {
    let audio = common::model()
        .decode(&reference("sentence", "z"), None)
        .unwrap();
    let diff = max_abs_diff(
        &audio.flatten_all().unwrap(),
        &reference("sentence", "audio"),
    );
    eprintln!("decoder (chain): max |diff| = {diff:e}");
    assert!(diff < DECODER_TOL, "decoder: {diff}");

    let audio = common::model()
        .decode(&reference("decoder", "dec_in"), None)
        .unwrap();
    let diff = max_abs_diff(
        &audio.flatten_all().unwrap(),
        &reference("decoder", "dec_out"),
    );
    eprintln!("decoder (alone): max |diff| = {diff:e}");
    assert!(diff < DECODER_TOL, "decoder alone: {diff}");
}

#[test]
fn windowed_decoding_gives_the_same_audio() {
    let z = reference("sentence", "z");
    let want = reference("sentence", "audio");
    let frames = z.dim(2).unwrap();
    // Windows far smaller than the receptive field's span, uneven ones, and one window.
    for window in [5, frames / 2 + 1, frames] {
        let audio = common::model().decode_windowed(&z, None, window).unwrap();
        let audio = candle_core::Tensor::new(audio.as_slice(), &candle_core::Device::Cpu).unwrap();
        let diff = max_abs_diff(&audio, &want);
        eprintln!("decoder in windows of {window}: max |diff| = {diff:e}");
        assert!(diff < DECODER_TOL, "window {window}: {diff}");
    }
}

#[test]
fn whole_model_matches_end_to_end() {
    let scales = Scales {
        noise_scale: 0.0,
        length_scale: 1.0,
        noise_w: 0.0,
    };
    let audio = common::model()
        .synthesize(&ids("sentence"), None, scales)
        .unwrap();
    let expected = reference("sentence", "audio");
    assert_eq!(audio.len(), expected.dim(0).unwrap());
    let audio = Tensor::from_vec(audio, expected.dim(0).unwrap(), &Device::Cpu).unwrap();
    let diff = max_abs_diff(&audio, &expected);
    eprintln!("end to end: max |diff| = {diff:e}");
    assert!(diff < END_TO_END_TOL, "end to end: {diff}");
}
