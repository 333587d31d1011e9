//! Turning a CTranslate2 Whisper spec into the tensors and configuration that
//! `candle_transformers::models::whisper::model::Whisper` loads.
//!
//! CTranslate2 fuses projections that candle keeps apart, and names things by role:
//!
//! | CTranslate2 (`encoder/` or `decoder/` + `layer_N/`) | candle (`model.encoder.` / `model.decoder.` + `layers.N.`) |
//! | --- | --- |
//! | `self_attention/linear_0` (q, k, v stacked on rows) | `self_attn.{q,k,v}_proj` (k has no bias: its stored bias is zeros) |
//! | `self_attention/linear_1` | `self_attn.out_proj` |
//! | `self_attention/layer_norm/{gamma,beta}` | `self_attn_layer_norm.{weight,bias}` |
//! | `attention/linear_0` (decoder) | `encoder_attn.q_proj` |
//! | `attention/linear_1` (decoder; k, v stacked) | `encoder_attn.{k,v}_proj` |
//! | `attention/linear_2` (decoder) | `encoder_attn.out_proj` |
//! | `attention/layer_norm` (decoder) | `encoder_attn_layer_norm` |
//! | `ffn/linear_0`, `ffn/linear_1`, `ffn/layer_norm` | `fc1`, `fc2`, `final_layer_norm` |
//! | `encoder/conv1`, `encoder/conv2` | `conv1`, `conv2` |
//! | `{encoder,decoder}/layer_norm` | `layer_norm` |
//! | `decoder/embeddings/weight` | `embed_tokens.weight` (also the output projection, by alias) |
//! | `decoder/position_encodings/encodings` | `embed_positions.weight` |
//!
//! The encoder's `position_encodings` are Whisper's fixed sinusoids, which candle recomputes, so
//! they are not handed over (a test checks they agree).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::whisper::Config;

use crate::{
    Error,
    ct2::{Ct2Model, Dtype, Variable},
};

/// The parts of `config.json` the listener uses.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Ct2Config {
    /// Tokens never to emit.
    #[serde(default)]
    pub suppress_ids: Vec<u32>,
    /// Tokens never to emit as the first token.
    #[serde(default)]
    pub suppress_ids_begin: Vec<u32>,
}

/// Converts one stored variable to an f32 candle tensor.
pub fn to_tensor(v: &Variable, device: &Device) -> Result<Tensor, Error> {
    let dtype = match v.dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::Bf16 => DType::BF16,
        other => {
            return Err(Error::Format(format!(
                "a weight is stored as {other:?}; quantised models are not supported"
            )));
        }
    };
    let t = Tensor::from_raw_buffer(&v.data, dtype, &v.shape, device)?;
    // candle's Whisper computes in f32; tiny.en in f32 is 150 MB, which is fine for a test tool.
    Ok(t.to_dtype(DType::F32)?)
}

/// Reads the model's shape parameters from the tensors themselves (CTranslate2's `config.json`
/// does not carry them).
pub fn whisper_config(m: &Ct2Model, cfg: &Ct2Config) -> Result<Config, Error> {
    let shape = |name: &str| m.get(name).map(|v| v.shape.clone());
    let count_layers = |prefix: &str| {
        (0..)
            .take_while(|i| {
                m.variables
                    .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
            })
            .count()
    };
    let heads = |prefix: &str, d_model: usize| -> usize {
        m.variables
            .get(&format!("{prefix}/num_heads"))
            .and_then(Variable::scalar_int)
            .and_then(|h| usize::try_from(h).ok())
            // Every Whisper size uses 64-wide heads; older converters did not store the count.
            .unwrap_or(d_model / 64)
    };
    let conv1 = shape("encoder/conv1/weight")?;
    let embeddings = shape("decoder/embeddings/weight")?;
    let [vocab_size, d_model] = embeddings[..] else {
        return Err(Error::Format(format!(
            "decoder/embeddings/weight has shape {embeddings:?}"
        )));
    };
    let num_mel_bins = *conv1
        .get(1)
        .ok_or_else(|| Error::Format("encoder/conv1/weight is not 3-d".into()))?;
    Ok(Config {
        num_mel_bins,
        max_source_positions: shape("encoder/position_encodings/encodings")?[0],
        d_model,
        encoder_attention_heads: heads("encoder", d_model),
        encoder_layers: count_layers("encoder"),
        vocab_size,
        max_target_positions: shape("decoder/position_encodings/encodings")?[0],
        decoder_attention_heads: heads("decoder", d_model),
        decoder_layers: count_layers("decoder"),
        suppress_tokens: cfg.suppress_ids.clone(),
    })
}

/// Splits a fused projection into `parts` equal row blocks (weights) or segments (biases).
fn split(t: &Tensor, parts: usize) -> Result<Vec<Tensor>, Error> {
    Ok(t.chunk(parts, 0)?)
}

/// Builds the tensor map candle's `Whisper::load` expects, keyed by candle's names.
pub fn candle_tensors(
    m: &Ct2Model,
    config: &Config,
    device: &Device,
) -> Result<HashMap<String, Tensor>, Error> {
    let mut out = HashMap::new();
    let get = |name: &str| to_tensor(m.get(name)?, device);

    let put_linear = |out: &mut HashMap<String, Tensor>, from: &str, to: &str| {
        out.insert(format!("{to}.weight"), get(&format!("{from}/weight"))?);
        out.insert(format!("{to}.bias"), get(&format!("{from}/bias"))?);
        Ok::<_, Error>(())
    };
    let put_norm = |out: &mut HashMap<String, Tensor>, from: &str, to: &str| {
        out.insert(format!("{to}.weight"), get(&format!("{from}/gamma"))?);
        out.insert(format!("{to}.bias"), get(&format!("{from}/beta"))?);
        Ok::<_, Error>(())
    };
    // Splits a stacked projection whose row blocks are the given candle projections, in order.
    // Key projections have no bias in Whisper; the converter stores zeros there, which are
    // checked rather than silently dropped.
    let put_fused = |out: &mut HashMap<String, Tensor>, from: &str, to: &[String]| {
        let weights = split(&get(&format!("{from}/weight"))?, to.len())?;
        let biases = split(&get(&format!("{from}/bias"))?, to.len())?;
        for ((name, w), b) in to.iter().zip(weights).zip(biases) {
            out.insert(format!("{name}.weight"), w);
            if name.ends_with("k_proj") {
                let largest = b.abs()?.max(0)?.to_scalar::<f32>()?;
                if largest != 0.0 {
                    return Err(Error::Format(format!(
                        "{from}: the key bias is not zero (max |b| = {largest}); candle's \
                         Whisper has no key bias"
                    )));
                }
            } else {
                out.insert(format!("{name}.bias"), b);
            }
        }
        Ok::<_, Error>(())
    };

    for (side, layers) in [
        ("encoder", config.encoder_layers),
        ("decoder", config.decoder_layers),
    ] {
        for i in 0..layers {
            let from = format!("{side}/layer_{i}");
            let to = format!("model.{side}.layers.{i}");
            let proj = |block: &str, names: &[&str]| -> Vec<String> {
                names.iter().map(|n| format!("{to}.{block}.{n}")).collect()
            };
            put_fused(
                &mut out,
                &format!("{from}/self_attention/linear_0"),
                &proj("self_attn", &["q_proj", "k_proj", "v_proj"]),
            )?;
            put_linear(
                &mut out,
                &format!("{from}/self_attention/linear_1"),
                &format!("{to}.self_attn.out_proj"),
            )?;
            put_norm(
                &mut out,
                &format!("{from}/self_attention/layer_norm"),
                &format!("{to}.self_attn_layer_norm"),
            )?;
            if side == "decoder" {
                put_linear(
                    &mut out,
                    &format!("{from}/attention/linear_0"),
                    &format!("{to}.encoder_attn.q_proj"),
                )?;
                put_fused(
                    &mut out,
                    &format!("{from}/attention/linear_1"),
                    &proj("encoder_attn", &["k_proj", "v_proj"]),
                )?;
                put_linear(
                    &mut out,
                    &format!("{from}/attention/linear_2"),
                    &format!("{to}.encoder_attn.out_proj"),
                )?;
                put_norm(
                    &mut out,
                    &format!("{from}/attention/layer_norm"),
                    &format!("{to}.encoder_attn_layer_norm"),
                )?;
            }
            put_linear(
                &mut out,
                &format!("{from}/ffn/linear_0"),
                &format!("{to}.fc1"),
            )?;
            put_linear(
                &mut out,
                &format!("{from}/ffn/linear_1"),
                &format!("{to}.fc2"),
            )?;
            put_norm(
                &mut out,
                &format!("{from}/ffn/layer_norm"),
                &format!("{to}.final_layer_norm"),
            )?;
        }
        put_norm(
            &mut out,
            &format!("{side}/layer_norm"),
            &format!("model.{side}.layer_norm"),
        )?;
    }
    put_linear(&mut out, "encoder/conv1", "model.encoder.conv1")?;
    put_linear(&mut out, "encoder/conv2", "model.encoder.conv2")?;
    out.insert(
        "model.decoder.embed_tokens.weight".into(),
        get("decoder/embeddings/weight")?,
    );
    out.insert(
        "model.decoder.embed_positions.weight".into(),
        get("decoder/position_encodings/encodings")?,
    );
    Ok(out)
}
