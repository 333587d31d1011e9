//! The CTranslate2 file is read correctly and maps onto candle's Whisper.

use listener::{Ct2Model, Dtype, to_tensor};

use crate::common::{listener, model_dir};

#[test]
fn model_bin_holds_whisper_tiny_en_in_fp16() {
    let bytes = std::fs::read(model_dir().join("model.bin")).unwrap();
    let m = Ct2Model::parse(&bytes).unwrap();
    assert_eq!(m.spec, "WhisperSpec");
    let emb = m.get("decoder/embeddings/weight").unwrap();
    assert_eq!(emb.shape, [51864, 384]);
    assert_eq!(emb.dtype, Dtype::F16);
    // The output projection is stored once, as an alias of the token embeddings.
    assert_eq!(
        m.aliases
            .get("decoder/projection/weight")
            .map(String::as_str),
        Some("decoder/embeddings/weight")
    );
    assert_eq!(m.get("decoder/num_heads").unwrap().scalar_int(), Some(6));
}

#[test]
fn the_config_comes_from_the_weights() {
    let l = listener();
    let c = l.config();
    assert_eq!((c.d_model, c.encoder_layers, c.decoder_layers), (384, 4, 4));
    assert_eq!(
        (c.encoder_attention_heads, c.decoder_attention_heads),
        (6, 6)
    );
    assert_eq!((c.num_mel_bins, c.vocab_size), (80, 51864));
    assert_eq!(
        (c.max_source_positions, c.max_target_positions),
        (1500, 448)
    );
}

/// candle recomputes the encoder's sinusoidal positions instead of loading them; that is only
/// right if the stored ones are those same sinusoids.
#[test]
fn stored_encoder_positions_are_whispers_sinusoids() {
    let bytes = std::fs::read(model_dir().join("model.bin")).unwrap();
    let m = Ct2Model::parse(&bytes).unwrap();
    let v = m.get("encoder/position_encodings/encodings").unwrap();
    let stored: Vec<Vec<f32>> = to_tensor(v, &candle_core::Device::Cpu)
        .unwrap()
        .to_vec2()
        .unwrap();
    let (len, channels) = (stored.len(), stored[0].len());
    let half = channels / 2;
    // whisper/model.py `sinusoids`: log(10000) / (half - 1) between timescales.
    let step = 10_000f64.ln() / (half as f64 - 1.0);
    let mut worst = 0f64;
    for (t, row) in stored.iter().enumerate().take(len) {
        for i in 0..half {
            let angle = t as f64 * (-step * i as f64).exp();
            worst = worst
                .max((f64::from(row[i]) - angle.sin()).abs())
                .max((f64::from(row[half + i]) - angle.cos()).abs());
        }
    }
    // fp16 keeps about 3 decimal digits.
    assert!(worst < 1e-3, "largest difference {worst}");
}
