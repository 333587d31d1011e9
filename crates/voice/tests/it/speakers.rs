//! Multi-speaker conditioning, on the default voice given speaker layers.
//!
//! No multi-speaker voice is installed here, so these tests add the layers a multi-speaker Piper
//! voice has (`emb_g`, `dp.cond`, each flow's `enc.cond_layer`, `dec.cond`) to the default
//! voice's weights. They check the plumbing, not a reference: with zero conditioning weights
//! every speaker must sound exactly like the single-speaker voice, and with random ones the
//! speakers must differ from each other.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use voice::{Scales, Vits, Weights};

use crate::common;

const SPEAKERS: usize = 3;
/// Piper's multi-speaker voices use 512 conditioning channels.
const GIN: usize = 512;

const DETERMINISTIC: Scales = Scales {
    noise_scale: 0.0,
    length_scale: 1.0,
    noise_w: 0.0,
};

/// The default voice plus speaker layers, zero or random.
fn multi_speaker(random: bool) -> Vits {
    let base = common::weights();
    let mut tensors: HashMap<String, Tensor> = base
        .names()
        .into_iter()
        .map(|n| (n.to_owned(), base.get(n).unwrap().clone()))
        .collect();
    let dev = Device::Cpu;
    let make = |shape: &[usize]| -> Tensor {
        if random {
            Tensor::randn(0f32, 0.05, shape, &dev).unwrap()
        } else {
            Tensor::zeros(shape, DType::F32, &dev).unwrap()
        }
    };
    let mut conv = |name: &str, out: usize| {
        tensors.insert(format!("{name}.weight"), make(&[out, GIN, 1]));
        tensors.insert(format!("{name}.bias"), make(&[out]));
    };
    let filter = base.get("dp.pre.weight").unwrap().dim(0).unwrap();
    conv("dp.cond", filter);
    let mut flow = 0;
    while base.contains(&format!("flow.flows.{flow}.pre.weight")) {
        let p = format!("flow.flows.{flow}.enc");
        let hidden = base
            .get(&format!("{p}.in_layers.0.weight"))
            .unwrap()
            .dim(1)
            .unwrap();
        let mut layers = 0;
        while base.contains(&format!("{p}.in_layers.{layers}.weight")) {
            layers += 1;
        }
        conv(&format!("{p}.cond_layer"), 2 * hidden * layers);
        flow += 2;
    }
    let channels = base.get("dec.conv_pre.weight").unwrap().dim(0).unwrap();
    conv("dec.cond", channels);
    tensors.insert(
        "emb_g.weight".into(),
        Tensor::randn(0f32, 1.0, (SPEAKERS, GIN), &dev).unwrap(),
    );
    Vits::load(&Weights::from_tensors(tensors), &dev).expect("multi-speaker model")
}

fn ids() -> Vec<i64> {
    common::reference("sentence", "ids")
        .to_vec1::<i64>()
        .unwrap()
}

#[test]
fn zero_conditioning_leaves_every_speaker_sounding_like_the_voice() {
    let model = multi_speaker(false);
    assert_eq!(model.num_speakers(), SPEAKERS);
    let single = common::model()
        .synthesize(&ids(), None, DETERMINISTIC)
        .unwrap();
    for speaker in 0..SPEAKERS as u32 {
        let audio = model
            .synthesize(&ids(), Some(speaker), DETERMINISTIC)
            .unwrap();
        assert_eq!(audio.len(), single.len());
        let diff = common::largest_difference(&audio, &single);
        assert!(diff < 1e-6, "speaker {speaker}: {diff}");
    }
}

#[test]
fn speakers_differ_and_out_of_range_ones_are_refused() {
    let model = multi_speaker(true);
    let a = model.synthesize(&ids(), Some(0), DETERMINISTIC).unwrap();
    let b = model.synthesize(&ids(), Some(2), DETERMINISTIC).unwrap();
    assert!(a.iter().chain(&b).all(|s| s.is_finite() && s.abs() <= 1.0));
    let differ = a.len() != b.len() || common::largest_difference(&a, &b) > 1e-3;
    assert!(differ, "two speakers gave the same audio");
    // Speaker conditioning also reaches the windowed decoder.
    let g = model.speaker(Some(2)).unwrap();
    let z = common::reference("sentence", "z");
    let whole = model
        .decode(&z, g.as_ref())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let windowed = model.decode_windowed(&z, g.as_ref(), 50).unwrap();
    assert_eq!(whole.len(), windowed.len());
    let diff = common::largest_difference(&whole, &windowed);
    assert!(diff < 1e-5, "windowed decoding with a speaker: {diff}");
    assert!(
        model
            .synthesize(&ids(), Some(SPEAKERS as u32), DETERMINISTIC)
            .is_err()
    );
}
