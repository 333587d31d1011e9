//! The VITS inference path of a Piper voice, in candle.
//!
//! Stages, each public so tests can compare it with the reference model:
//!
//! 1. [`Vits::encode`]: phoneme ids → text encoder (relative-position transformer) → hidden
//!    states `x` and the prior's mean `m_p` and log-scale `logs_p`;
//! 2. [`Vits::log_durations`]: the stochastic duration predictor run in reverse (noise → flows
//!    → `logw`, one log-duration per phoneme);
//! 3. [`durations`] and [`Vits::expand`]: length regulation, `ceil(exp(logw) * length_scale)`
//!    frames per phoneme;
//! 4. [`Vits::prior_sample`] and [`Vits::flow_reverse`]: sample the prior and run the residual
//!    coupling flows in reverse to get the latent `z`;
//! 5. [`Vits::decode`]: the HiFi-GAN generator turns `z` into audio in `[-1, 1]`.
//!
//! Every tensor here has batch size 1 and no padding: Piper synthesises one sentence at a time,
//! so the masks of the reference implementation are all ones and are left out.
//! Layouts follow PyTorch's: `[batch, channels, time]`.

use candle_core::{DType, Device, IndexOp, Tensor};

use crate::{
    Error, Weights,
    fused::{self, ChannelNorm, RelativeBand},
    kernels::{Activation, TimeConv, TimeUpsample},
    spline,
};

type Result<T> = std::result::Result<T, Error>;

/// Attention heads of the text encoder (not recoverable from the weights; 2 in every Piper voice).
const HEADS: usize = 2;
/// Relative-position window of the text encoder's attention.
const WINDOW: usize = 4;
/// Spline bins and tail bound of the duration predictor's `ConvFlow`s.
const SPLINE_BINS: usize = 10;
const SPLINE_TAIL: f32 = 5.0;
/// LayerNorm epsilon of the reference implementation.
const LN_EPS: f64 = 1e-5;
/// HiFi-GAN's leaky-ReLU slope inside the generator (the final one uses PyTorch's 0.01).
const LRELU_SLOPE: f64 = 0.1;

/// A 1-D convolution with optional bias.
#[derive(Debug, Clone)]
struct Conv1d {
    weight: Tensor,
    /// For ungrouped kernels wider than 1: the weight as `[Cout, K * Cin]`, offset-major, the
    /// left operand of the one matrix product that [`Conv1d::forward`] reduces a block to.
    stacked: Option<Tensor>,
    bias: Option<Tensor>,
    padding: usize,
    dilation: usize,
    groups: usize,
}

impl Conv1d {
    fn load(
        w: &Weights,
        prefix: &str,
        padding: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Self> {
        let bias_name = format!("{prefix}.bias");
        let bias = if w.contains(&bias_name) {
            Some(w.get(&bias_name)?.reshape(((), 1))?)
        } else {
            None
        };
        let weight = w.get(&format!("{prefix}.weight"))?.clone();
        let (c_out, c_in, kernel) = weight.dims3()?;
        let stacked = if kernel > 1 && groups == 1 {
            Some(
                weight
                    .permute((0, 2, 1))?
                    .contiguous()?
                    .reshape((c_out, kernel * c_in))?,
            )
        } else {
            None
        };
        Ok(Self {
            weight,
            stacked,
            bias,
            padding,
            dilation,
            groups,
        })
    }

    /// A convolution whose padding keeps the length ("same"), from the kernel size in the weights.
    fn same(w: &Weights, prefix: &str, dilation: usize, groups: usize) -> Result<Self> {
        let kernel = w.get(&format!("{prefix}.weight"))?.dim(2)?;
        Self::load(
            w,
            prefix,
            (kernel * dilation - dilation) / 2,
            dilation,
            groups,
        )
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if self.weight.dim(2)? == 1 && self.groups == 1 {
            // A pointwise convolution is a matrix product; candle's conv path would im2col first.
            let w = self.weight.squeeze(2)?;
            w.broadcast_matmul(x)?
        } else if let Some(stacked) = &self.stacked {
            self.forward_stacked(stacked, x)?
        } else if self.groups > 1
            && self.weight.dim(1)? == 1
            && self.groups == self.weight.dim(0)?
        {
            self.forward_depthwise(x)?
        } else {
            x.conv1d(&self.weight, self.padding, 1, self.dilation, self.groups)?
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

impl Conv1d {
    /// A depthwise convolution (one filter per channel, as in the duration predictor's
    /// separable convolutions) as `K` shifted, per-channel-scaled copies of the input added up.
    /// candle's grouped `conv1d` runs one small convolution per group instead, and for the
    /// duration predictor's 192 groups that overhead dominated the time to first audio.
    fn forward_depthwise(&self, x: &Tensor) -> Result<Tensor> {
        let (_, channels, len) = x.dims3()?;
        let kernel = self.weight.dim(2)?;
        let span = self.dilation * (kernel - 1);
        let padded = x.pad_with_zeros(2, self.padding, self.padding)?;
        let out_len = len + 2 * self.padding - span;
        let taps = self.weight.reshape((channels, kernel))?;
        let mut y: Option<Tensor> = None;
        for k in 0..kernel {
            let tap = taps.narrow(1, k, 1)?.reshape((1, channels, 1))?;
            let term = padded
                .narrow(2, k * self.dilation, out_len)?
                .broadcast_mul(&tap)?;
            y = Some(match y {
                Some(sum) => (sum + term)?,
                None => term,
            });
        }
        Ok(y.expect("a kernel has at least one tap"))
    }

    /// Samples per block in [`Conv1d::forward_stacked`]: small enough that a block's stacked
    /// input (`K * Cin` rows) stays in cache, large enough to keep the matrix product efficient.
    /// Measured on the decoder's sizes: about twice as fast as candle's `conv1d` at 2048.
    const BLOCK: usize = 2048;

    /// The convolution as one matrix product per block of time: the `K` shifted (dilated) views
    /// of the padded input are stacked into `[K * Cin, n]` and multiplied by the stacked weight.
    /// This is im2col in the layout gemm likes, done block by block.
    fn forward_stacked(&self, stacked: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (_, _, len) = x.dims3()?;
        let kernel = self.weight.dim(2)?;
        let span = self.dilation * (kernel - 1);
        let padded = x
            .squeeze(0)?
            .pad_with_zeros(1, self.padding, self.padding)?;
        let out_len = padded.dim(1)? - span;
        debug_assert_eq!(out_len, len + 2 * self.padding - span);
        let mut blocks = Vec::with_capacity(out_len.div_ceil(Self::BLOCK));
        let mut start = 0;
        while start < out_len {
            let n = Self::BLOCK.min(out_len - start);
            let views = (0..kernel)
                .map(|k| padded.narrow(1, start + k * self.dilation, n))
                .collect::<candle_core::Result<Vec<_>>>()?;
            blocks.push(stacked.matmul(&Tensor::cat(&views, 0)?)?);
            start += n;
        }
        Ok(Tensor::cat(&blocks, 1)?.unsqueeze(0)?)
    }
}

/// LayerNorm over the channel axis of a `[1, C, T]` tensor (VITS's `modules.LayerNorm`).
fn channel_norm(w: &Weights, prefix: &str) -> Result<ChannelNorm> {
    ChannelNorm::new(
        w.get(&format!("{prefix}.gamma"))?,
        w.get(&format!("{prefix}.beta"))?,
        LN_EPS as f32,
    )
}

/// Multi-head self-attention with relative-position keys and values (Shaw et al.), window 4.
#[derive(Debug, Clone)]
struct RelativeAttention {
    q: Conv1d,
    k: Conv1d,
    v: Conv1d,
    o: Conv1d,
    /// `[2 * WINDOW + 1, head_dim]`: one embedding per relative offset -4..=4.
    rel_k: Tensor,
    rel_v: Tensor,
}

impl RelativeAttention {
    fn load(w: &Weights, prefix: &str) -> Result<Self> {
        Ok(Self {
            q: Conv1d::same(w, &format!("{prefix}.conv_q"), 1, 1)?,
            k: Conv1d::same(w, &format!("{prefix}.conv_k"), 1, 1)?,
            v: Conv1d::same(w, &format!("{prefix}.conv_v"), 1, 1)?,
            o: Conv1d::same(w, &format!("{prefix}.conv_o"), 1, 1)?,
            rel_k: w.get(&format!("{prefix}.emb_rel_k"))?.squeeze(0)?,
            rel_v: w.get(&format!("{prefix}.emb_rel_v"))?.squeeze(0)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, channels, t) = x.dims3()?;
        let head_dim = channels / HEADS;
        let heads = |y: Tensor| -> Result<Tensor> {
            // [1, C, T] -> [H, T, d]
            Ok(y.reshape((HEADS, head_dim, t))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let scale = 1.0 / (head_dim as f64).sqrt();
        let q = (heads(self.q.forward(x)?)? * scale)?;
        let k = heads(self.k.forward(x)?)?;
        let v = heads(self.v.forward(x)?)?;

        let band = RelativeBand { window: WINDOW };
        let scores = q.matmul(&k.t()?)?; // [H, T, T]
        // Relative keys: logits per offset, added on the band around the diagonal.
        let rel_logits = q.broadcast_matmul(&self.rel_k.t()?)?; // [H, T, 2W+1]
        let scores = band.add_to_scores(&scores, &rel_logits)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;

        let out = p.matmul(&v)?; // [H, T, d]
        // Relative values: attention weights gathered per offset, times the offset embeddings.
        let rel_weights = band.gather(&p)?; // [H, T, 2W+1]
        let out = (out + rel_weights.broadcast_matmul(&self.rel_v)?)?;
        let out = out.transpose(1, 2)?.reshape((1, channels, t))?;
        self.o.forward(&out)
    }
}

/// The transformer layer's feed-forward block: two "same" convolutions with ReLU between.
#[derive(Debug, Clone)]
struct ConvFeedForward {
    conv_1: Conv1d,
    conv_2: Conv1d,
}

impl ConvFeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv_1.forward(x)?.relu()?;
        self.conv_2.forward(&h)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    attn: RelativeAttention,
    norm_1: ChannelNorm,
    ffn: ConvFeedForward,
    norm_2: ChannelNorm,
}

/// The text encoder (`enc_p`).
#[derive(Debug, Clone)]
struct TextEncoder {
    embedding: Tensor,
    layers: Vec<EncoderLayer>,
    proj: Conv1d,
}

impl TextEncoder {
    fn load(w: &Weights) -> Result<Self> {
        let mut layers = Vec::new();
        for i in 0.. {
            let p = format!("enc_p.encoder.attn_layers.{i}");
            if !w.contains(&format!("{p}.conv_q.weight")) {
                break;
            }
            let ffn = format!("enc_p.encoder.ffn_layers.{i}");
            layers.push(EncoderLayer {
                attn: RelativeAttention::load(w, &p)?,
                norm_1: channel_norm(w, &format!("enc_p.encoder.norm_layers_1.{i}"))?,
                ffn: ConvFeedForward {
                    conv_1: Conv1d::same(w, &format!("{ffn}.conv_1"), 1, 1)?,
                    conv_2: Conv1d::same(w, &format!("{ffn}.conv_2"), 1, 1)?,
                },
                norm_2: channel_norm(w, &format!("enc_p.encoder.norm_layers_2.{i}"))?,
            });
        }
        if layers.is_empty() {
            return Err(Error::MissingTensor(
                "enc_p.encoder.attn_layers.0.conv_q.weight".into(),
            ));
        }
        Ok(Self {
            embedding: w.get("enc_p.emb.weight")?.clone(),
            layers,
            proj: Conv1d::same(w, "enc_p.proj", 1, 1)?,
        })
    }

    fn forward(&self, ids: &[i64]) -> Result<Encoded> {
        let device = self.embedding.device();
        let t = ids.len();
        let hidden = self.embedding.dim(1)?;
        let symbols = self.embedding.dim(0)? as i64;
        if let Some(bad) = ids.iter().find(|&&id| !(0..symbols).contains(&id)) {
            return Err(Error::Format(format!(
                "phoneme id {bad} is outside the voice's {symbols} symbols"
            )));
        }
        let idx = Tensor::from_slice(
            &ids.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            t,
            device,
        )?;
        let mut x = (self.embedding.index_select(&idx, 0)? * (hidden as f64).sqrt())?
            .t()?
            .unsqueeze(0)?
            .contiguous()?;
        for layer in &self.layers {
            let y = layer.attn.forward(&x)?;
            x = layer.norm_1.forward(&(x + y)?)?;
            let y = layer.ffn.forward(&x)?;
            x = layer.norm_2.forward(&(x + y)?)?;
        }
        let stats = self.proj.forward(&x)?;
        let out = stats.dim(1)? / 2;
        Ok(Encoded {
            m_p: stats.narrow(1, 0, out)?,
            logs_p: stats.narrow(1, out, out)?,
            x,
        })
    }
}

/// The text encoder's outputs for one sentence, each `[1, C, T]`.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Hidden states (input of the duration predictor).
    pub x: Tensor,
    /// Mean of the prior, per phoneme.
    pub m_p: Tensor,
    /// Log standard deviation of the prior, per phoneme.
    pub logs_p: Tensor,
}

/// Dilated depthwise-separable convolutions (`modules.DDSConv`).
#[derive(Debug, Clone)]
struct DdsConv {
    layers: Vec<(Conv1d, ChannelNorm, Conv1d, ChannelNorm)>,
}

impl DdsConv {
    fn load(w: &Weights, prefix: &str) -> Result<Self> {
        let mut layers = Vec::new();
        for i in 0.. {
            let sep = format!("{prefix}.convs_sep.{i}");
            if !w.contains(&format!("{sep}.weight")) {
                break;
            }
            let sep_w = w.get(&format!("{sep}.weight"))?;
            let (channels, kernel) = (sep_w.dim(0)?, sep_w.dim(2)?);
            let dilation = kernel.pow(i as u32);
            layers.push((
                Conv1d::same(w, &sep, dilation, channels)?,
                channel_norm(w, &format!("{prefix}.norms_1.{i}"))?,
                Conv1d::same(w, &format!("{prefix}.convs_1x1.{i}"), 1, 1)?,
                channel_norm(w, &format!("{prefix}.norms_2.{i}"))?,
            ));
        }
        Ok(Self { layers })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (sep, norm_1, pointwise, norm_2) in &self.layers {
            let y = norm_1.forward(&sep.forward(&x)?)?.gelu_erf()?;
            let y = norm_2.forward(&pointwise.forward(&y)?)?.gelu_erf()?;
            x = (x + y)?;
        }
        Ok(x)
    }
}

/// A spline coupling flow of the duration predictor (`modules.ConvFlow`), inverse direction only.
#[derive(Debug, Clone)]
struct ConvFlow {
    pre: Conv1d,
    convs: DdsConv,
    proj: Conv1d,
    filter_channels: usize,
}

impl ConvFlow {
    fn load(w: &Weights, prefix: &str) -> Result<Self> {
        let pre = Conv1d::same(w, &format!("{prefix}.pre"), 1, 1)?;
        let filter_channels = pre.weight.dim(0)?;
        Ok(Self {
            pre,
            convs: DdsConv::load(w, &format!("{prefix}.convs"))?,
            proj: Conv1d::same(w, &format!("{prefix}.proj"), 1, 1)?,
            filter_channels,
        })
    }

    /// `z` is `[1, 2, T]`; `cond` the predictor's conditioning `[1, F, T]`.
    fn reverse(&self, z: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let x0 = z.narrow(1, 0, 1)?;
        let x1 = z.narrow(1, 1, 1)?;
        let h = (self.pre.forward(&x0)? + cond)?;
        let h = self.proj.forward(&self.convs.forward(&h)?)?; // [1, 3K - 1, T]
        let t = h.dim(2)?;
        let params = h.squeeze(0)?.t()?.contiguous()?.to_vec2::<f32>()?; // [T, 3K - 1]
        let scale = 1.0 / (self.filter_channels as f32).sqrt();
        let inputs = x1.flatten_all()?.to_vec1::<f32>()?;
        let mut outputs = Vec::with_capacity(t);
        for (y, p) in inputs.iter().zip(&params) {
            let widths: Vec<f32> = p[..SPLINE_BINS].iter().map(|v| v * scale).collect();
            let heights: Vec<f32> = p[SPLINE_BINS..2 * SPLINE_BINS]
                .iter()
                .map(|v| v * scale)
                .collect();
            let derivatives = &p[2 * SPLINE_BINS..];
            outputs.push(spline::rq_inverse(
                *y,
                &widths,
                &heights,
                derivatives,
                SPLINE_TAIL,
            ));
        }
        let x1 = Tensor::from_vec(outputs, (1, 1, t), z.device())?;
        Ok(Tensor::cat(&[&x0, &x1], 1)?)
    }
}

/// The stochastic duration predictor (`dp`), reverse direction only.
#[derive(Debug, Clone)]
struct DurationPredictor {
    pre: Conv1d,
    convs: DdsConv,
    proj: Conv1d,
    cond: Option<Conv1d>,
    /// `ElementwiseAffine` (`dp.flows.0`): `m` and the exported `exp(-logs)`, each `[2, 1]`.
    affine_m: Tensor,
    affine_exp_neg_logs: Tensor,
    /// The spline flows applied in reverse, in the order they run (`dp.flows.7`, `.5`, `.3`).
    flows: Vec<ConvFlow>,
}

impl DurationPredictor {
    fn load(w: &Weights) -> Result<Self> {
        let cond = if w.contains("dp.cond.weight") {
            Some(Conv1d::same(w, "dp.cond", 1, 1)?)
        } else {
            None
        };
        // Training builds flows [affine, conv, flip, conv, flip, ...]; inference in reverse skips
        // the first ConvFlow (index 1), which the exporter therefore dropped.
        let mut indices = Vec::new();
        let mut i = 3;
        while w.contains(&format!("dp.flows.{i}.pre.weight")) {
            indices.push(i);
            i += 2;
        }
        indices.reverse();
        let flows = indices
            .iter()
            .map(|i| ConvFlow::load(w, &format!("dp.flows.{i}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            pre: Conv1d::same(w, "dp.pre", 1, 1)?,
            convs: DdsConv::load(w, "dp.convs")?,
            proj: Conv1d::same(w, "dp.proj", 1, 1)?,
            cond,
            affine_m: w.get("dp.flows.0.m")?.unsqueeze(0)?,
            affine_exp_neg_logs: w.get("dp.flows.0.exp_neg_logs")?.unsqueeze(0)?,
            flows,
        })
    }

    fn reverse(&self, x: &Tensor, g: Option<&Tensor>, noise: &Tensor) -> Result<Tensor> {
        let mut h = self.pre.forward(x)?;
        if let (Some(cond), Some(g)) = (&self.cond, g) {
            h = h.broadcast_add(&cond.forward(g)?)?;
        }
        let h = self.proj.forward(&self.convs.forward(&h)?)?;
        let mut z = noise.clone();
        for flow in &self.flows {
            // Each ConvFlow is preceded (in reverse order) by a Flip of the two channels.
            z = flip_channels(&z)?;
            z = flow.reverse(&z, &h)?;
        }
        z = flip_channels(&z)?;
        z = z
            .broadcast_sub(&self.affine_m)?
            .broadcast_mul(&self.affine_exp_neg_logs)?;
        Ok(z.narrow(1, 0, 1)?)
    }
}

/// VITS's `Flip`: reverses the order of the channels.
fn flip_channels(x: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    let idx: Vec<u32> = (0..c as u32).rev().collect();
    let idx = Tensor::from_vec(idx, c, x.device())?;
    Ok(x.index_select(&idx, 1)?)
}

/// WaveNet (`modules.WN`) as the coupling flows use it, without dilation, run time-major on the
/// kernels of [`kernels`]: rows of `[time, channels]` values, plain slices between the layers.
#[derive(Debug, Clone)]
struct WaveNet {
    in_layers: Vec<TimeConv>,
    res_skip: Vec<TimeConv>,
    cond: Option<Conv1d>,
    hidden: usize,
}

impl WaveNet {
    fn load(w: &Weights, prefix: &str) -> Result<Self> {
        let mut in_layers = Vec::new();
        let mut res_skip = Vec::new();
        for i in 0.. {
            let name = format!("{prefix}.in_layers.{i}");
            if !w.contains(&format!("{name}.weight")) {
                break;
            }
            // Piper's coupling flows use dilation rate 1.
            in_layers.push(time_conv_same(w, &name, 1)?);
            res_skip.push(time_conv_same(
                w,
                &format!("{prefix}.res_skip_layers.{i}"),
                1,
            )?);
        }
        let cond = if w.contains(&format!("{prefix}.cond_layer.weight")) {
            Some(Conv1d::same(w, &format!("{prefix}.cond_layer"), 1, 1)?)
        } else {
            None
        };
        let hidden = in_layers
            .first()
            .ok_or_else(|| Error::MissingTensor(format!("{prefix}.in_layers.0.weight")))?
            .channels()
            .0;
        for (i, (input, res)) in in_layers.iter().zip(&res_skip).enumerate() {
            let last = i + 1 == in_layers.len();
            let res_out = if last { hidden } else { 2 * hidden };
            if input.channels() != (hidden, 2 * hidden) || res.channels() != (hidden, res_out) {
                return Err(Error::Format(format!(
                    "{prefix}: layer {i} has the channels {:?} and {:?}",
                    input.channels(),
                    res.channels()
                )));
            }
        }
        Ok(Self {
            in_layers,
            res_skip,
            cond,
            hidden,
        })
    }

    /// `x` is `len` rows of `hidden` values; so is the result.
    fn forward(&self, mut x: Vec<f32>, len: usize, g: Option<&Tensor>) -> Result<Vec<f32>> {
        let n = self.hidden;
        // The speaker's conditioning: 2n values a layer, added to every row of its input.
        let g = match (&self.cond, g) {
            (Some(cond), Some(g)) => Some(cond.forward(g)?.flatten_all()?.to_vec1::<f32>()?),
            _ => None,
        };
        let mut output = vec![0f32; len * n];
        let mut acts = Vec::with_capacity(len * n);
        let last = self.in_layers.len() - 1;
        for (i, (in_layer, res_skip)) in self.in_layers.iter().zip(&self.res_skip).enumerate() {
            let mut x_in = in_layer.forward_rows(&x, len, Activation::IDENTITY, false)?;
            if let Some(g) = &g {
                let g = g
                    .get(i * 2 * n..(i + 1) * 2 * n)
                    .ok_or_else(|| Error::Format("the speaker conditioning is too short".into()))?;
                for row in x_in.chunks_exact_mut(2 * n) {
                    for (v, c) in row.iter_mut().zip(g) {
                        *v += c;
                    }
                }
            }
            acts.clear();
            for row in x_in.chunks_exact(2 * n) {
                let (a, b) = row.split_at(n);
                acts.extend(a.iter().zip(b).map(|(&a, &b)| fused::gate(a, b)));
            }
            let rs = res_skip.forward_rows(&acts, len, Activation::IDENTITY, false)?;
            if i < last {
                for ((rs, x), out) in rs
                    .chunks_exact(2 * n)
                    .zip(x.chunks_exact_mut(n))
                    .zip(output.chunks_exact_mut(n))
                {
                    let (res, skip) = rs.split_at(n);
                    x.iter_mut().zip(res).for_each(|(x, r)| *x += r);
                    out.iter_mut().zip(skip).for_each(|(o, s)| *o += s);
                }
            } else {
                output.iter_mut().zip(&rs).for_each(|(o, s)| *o += s);
            }
        }
        Ok(output)
    }
}

/// A mean-only residual coupling layer (`modules.ResidualCouplingLayer`), reverse direction,
/// time-major.
#[derive(Debug, Clone)]
struct CouplingLayer {
    pre: TimeConv,
    enc: WaveNet,
    post: TimeConv,
}

impl CouplingLayer {
    fn load(w: &Weights, prefix: &str) -> Result<Self> {
        let layer = Self {
            pre: time_conv_same(w, &format!("{prefix}.pre"), 1)?,
            enc: WaveNet::load(w, &format!("{prefix}.enc"))?,
            post: time_conv_same(w, &format!("{prefix}.post"), 1)?,
        };
        let (half, hidden) = layer.pre.channels();
        if layer.post.channels() != (hidden, half) || layer.enc.hidden != hidden {
            return Err(Error::Format(format!(
                "{prefix}: a coupling layer of {half} channels with {:?} after it",
                layer.post.channels()
            )));
        }
        Ok(layer)
    }

    /// `x` is `len` rows of twice the layer's half channels: the second half of each row loses
    /// the mean the network predicts from the first.
    fn reverse(&self, x: &mut [f32], len: usize, g: Option<&Tensor>) -> Result<()> {
        let half = self.pre.channels().0;
        let x0: Vec<f32> = x
            .chunks_exact(2 * half)
            .flat_map(|row| row[..half].iter().copied())
            .collect();
        let h = self
            .pre
            .forward_rows(&x0, len, Activation::IDENTITY, false)?;
        let h = self.enc.forward(h, len, g)?;
        let m = self
            .post
            .forward_rows(&h, len, Activation::IDENTITY, false)?;
        for (row, m) in x.chunks_exact_mut(2 * half).zip(m.chunks_exact(half)) {
            row[half..].iter_mut().zip(m).for_each(|(v, m)| *v -= m);
        }
        Ok(())
    }
}

/// A HiFi-GAN residual block: `ResBlock1` (two convolutions per dilation) or `ResBlock2` (one).
/// Its convolutions run time-major (`[1, time, channels]`), as [`kernels`] describes.
#[derive(Debug, Clone)]
enum ResBlock {
    One(Vec<(TimeConv, TimeConv)>),
    Two(Vec<TimeConv>),
}

impl ResBlock {
    /// How far an output sample sees on either side, in samples: its convolutions' reaches add up.
    fn reach(&self) -> usize {
        match self {
            Self::One(pairs) => pairs.iter().map(|(a, b)| a.reach() + b.reach()).sum(),
            Self::Two(convs) => convs.iter().map(TimeConv::reach).sum(),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let act = Activation::leaky(LRELU_SLOPE as f32);
        let mut x = x.clone();
        match self {
            Self::One(pairs) => {
                for (c1, c2) in pairs {
                    let xt = c1.forward(&x, act, false)?;
                    x = (c2.forward(&xt, act, false)? + x)?;
                }
            }
            Self::Two(convs) => {
                for c in convs {
                    x = c.forward(&x, act, true)?;
                }
            }
        }
        Ok(x)
    }
}

/// A time-major convolution from the weights, with the padding that keeps the length.
fn time_conv_same(w: &Weights, prefix: &str, dilation: usize) -> Result<TimeConv> {
    let weight = w.get(&format!("{prefix}.weight"))?;
    let kernel = weight.dim(2)?;
    let bias_name = format!("{prefix}.bias");
    let bias = if w.contains(&bias_name) {
        Some(w.get(&bias_name)?)
    } else {
        None
    };
    TimeConv::new(weight, bias, dilation, dilation * (kernel - 1) / 2)
}

/// Cuts `frames` latent frames into windows as `(start, end)` pairs in order: the first of
/// `first` frames, each next one twice as long as the one before, up to `window`.
/// ([`Vits::decode_windowed`] uses equal windows; a stream sizes its windows by its pace, see
/// [`crate::Voice::synthesize_parts`].)
pub fn windows(frames: usize, first: usize, window: usize) -> Vec<(usize, usize)> {
    let window = window.max(1);
    let mut bounds = Vec::new();
    let mut start = 0;
    let mut size = first.clamp(1, window);
    while start < frames {
        let end = (start + size).min(frames);
        bounds.push((start, end));
        start = end;
        size = (2 * size).min(window);
    }
    bounds
}

/// The HiFi-GAN generator (`dec`), run time-major on the fused kernels of [`kernels`].
#[derive(Debug, Clone)]
struct Generator {
    conv_pre: TimeConv,
    cond: Option<Conv1d>,
    ups: Vec<TimeUpsample>,
    /// `ups.len()` groups of residual blocks, averaged within a group.
    resblocks: Vec<Vec<ResBlock>>,
    conv_post: TimeConv,
    /// Output samples per latent frame (the product of the upsampling strides).
    hop: usize,
    /// Latent frames on either side of a frame that can change its audio (rounded up, plus one).
    context: usize,
    /// For each level, the samples (at its rate) on either side of an output sample that the
    /// layers after it read: what a window keeps of the level's output (see
    /// [`Generator::forward_frames`]).
    reach_after: Vec<usize>,
}

impl Generator {
    fn load(w: &Weights) -> Result<Self> {
        let mut ups = Vec::new();
        for i in 0.. {
            let name = format!("dec.ups.{i}");
            if !w.contains(&format!("{name}.weight")) {
                break;
            }
            let weight = w.get(&format!("{name}.weight"))?;
            let kernel = weight.dim(2)?;
            // Every Piper voice pairs kernel 2u with rate u (16/8, 8/4, 4/2), padding (k - u) / 2.
            let stride = kernel / 2;
            ups.push(TimeUpsample::new(
                weight,
                w.get(&format!("{name}.bias"))?,
                stride,
                (kernel - stride) / 2,
            )?);
        }
        let mut blocks = Vec::new();
        for j in 0.. {
            let p = format!("dec.resblocks.{j}");
            if w.contains(&format!("{p}.convs.0.weight")) {
                // ResBlock2: dilations per kernel size, as in Piper's medium config.
                let kernel = w.get(&format!("{p}.convs.0.weight"))?.dim(2)?;
                let dilations: &[usize] = match kernel {
                    3 => &[1, 2],
                    5 => &[2, 6],
                    7 => &[3, 12],
                    k => {
                        return Err(Error::Format(format!(
                            "ResBlock2 with kernel {k} is unknown"
                        )));
                    }
                };
                let convs = dilations
                    .iter()
                    .enumerate()
                    .map(|(n, &d)| time_conv_same(w, &format!("{p}.convs.{n}"), d))
                    .collect::<Result<Vec<_>>>()?;
                blocks.push(ResBlock::Two(convs));
            } else if w.contains(&format!("{p}.convs1.0.weight")) {
                // ResBlock1 (Piper's high quality): dilations 1, 3, 5, each followed by dilation 1.
                let pairs = [1usize, 3, 5]
                    .iter()
                    .enumerate()
                    .map(|(n, &d)| {
                        Ok((
                            time_conv_same(w, &format!("{p}.convs1.{n}"), d)?,
                            time_conv_same(w, &format!("{p}.convs2.{n}"), 1)?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                blocks.push(ResBlock::One(pairs));
            } else {
                break;
            }
        }
        if ups.is_empty() || blocks.is_empty() || blocks.len() % ups.len() != 0 {
            return Err(Error::Format(format!(
                "the decoder has {} upsampling layers and {} residual blocks",
                ups.len(),
                blocks.len()
            )));
        }
        let per_level = blocks.len() / ups.len();
        let mut resblocks: Vec<Vec<ResBlock>> = Vec::new();
        let mut blocks = blocks.into_iter();
        for _ in 0..ups.len() {
            resblocks.push(blocks.by_ref().take(per_level).collect());
        }
        let cond = if w.contains("dec.cond.weight") {
            Some(Conv1d::same(w, "dec.cond", 1, 1)?)
        } else {
            None
        };
        let conv_pre = time_conv_same(w, "dec.conv_pre", 1)?;
        let conv_post = time_conv_same(w, "dec.conv_post", 1)?;
        // The receptive field in latent frames: each layer's reach in its own samples, divided
        // by the samples per frame at its level. A transposed convolution with kernel 2s reads
        // one input sample on either side.
        let mut rate = 1;
        let mut reach = conv_pre.reach() as f64;
        for (up, blocks) in ups.iter().zip(&resblocks) {
            reach += 1.0 / rate as f64;
            rate *= up.stride();
            let widest = blocks.iter().map(ResBlock::reach).max().unwrap_or(0);
            reach += widest as f64 / rate as f64;
        }
        reach += conv_post.reach() as f64 / rate as f64;
        // Backwards from the output: what the layers after each level's residual blocks read,
        // in that level's samples, rounded up and one more for safety. Between the end of level
        // L and the end of level L + 1 run L + 1's upsampler (one input sample on either side)
        // and its blocks.
        let mut reach_after = vec![0; ups.len()];
        let mut after = conv_post.reach() + 1;
        for level in (0..ups.len()).rev() {
            reach_after[level] = after;
            let widest = resblocks[level]
                .iter()
                .map(ResBlock::reach)
                .max()
                .unwrap_or(0);
            after = (after + widest).div_ceil(ups[level].stride()) + 2;
        }
        Ok(Self {
            conv_pre,
            cond,
            ups,
            resblocks,
            conv_post,
            hop: rate,
            context: reach.ceil() as usize + 1,
            reach_after,
        })
    }

    /// [`Generator::forward`] in windows of latent frames; see [`Vits::decode_windowed`].
    fn forward_windowed(&self, z: &Tensor, g: Option<&Tensor>, window: usize) -> Result<Vec<f32>> {
        let frames = z.dim(2)?;
        let mut audio = Vec::with_capacity(frames * self.hop);
        for (start, end) in windows(frames, window, window) {
            audio.extend(self.forward_frames(z, g, start, end)?);
        }
        Ok(audio)
    }

    /// The audio of latent frames `start .. end` alone, decoded with the frames around them that
    /// it depends on (`context` on either side, where the latent has them) and trimmed back.
    /// After each level only the samples the rest of the decoder reads for the window are kept
    /// (`reach_after`), so the context is paid in full only at the first, cheapest level: at the
    /// last, where the decoder works on 256 samples a frame, it is a few dozen samples instead
    /// of thousands. A sample within reach of a cut is wrong (the next convolution pads the cut
    /// with zeros), and those are exactly the samples dropped by the next cut.
    fn forward_frames(
        &self,
        z: &Tensor,
        g: Option<&Tensor>,
        start: usize,
        end: usize,
    ) -> Result<Vec<f32>> {
        let (hop, frames) = (self.hop, z.dim(2)?);
        let (lo, hi) = (
            start.saturating_sub(self.context),
            (end + self.context).min(frames),
        );
        let (first, audio) =
            self.forward_kept(&z.narrow(2, lo, hi - lo)?, g, Some((lo, start, end)))?;
        let audio = audio.flatten_all()?.to_vec1::<f32>()?;
        // The samples of frames start .. end, from the first kept one at `first`.
        let (from, to) = (start * hop - first, end * hop - first);
        if to > audio.len() {
            return Err(Error::Format(format!(
                "the decoder made {} samples from sample {first}, short of frame {end}",
                audio.len()
            )));
        }
        Ok(audio[from..to].to_vec())
    }

    fn forward(&self, z: &Tensor, g: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.forward_kept(z, g, None)?.1)
    }

    /// The decoder on latent `z`; with `window = (lo, start, end)`, `z` holds frames `lo ..` of a
    /// longer latent and only frames `start .. end` are wanted: each level keeps the samples the
    /// rest needs for them. Returns the absolute index of the first output sample, and the audio.
    fn forward_kept(
        &self,
        z: &Tensor,
        g: Option<&Tensor>,
        window: Option<(usize, usize, usize)>,
    ) -> Result<(usize, Tensor)> {
        let z = z.transpose(1, 2)?.contiguous()?;
        let mut x = self.conv_pre.forward(&z, Activation::IDENTITY, false)?;
        if let (Some(cond), Some(g)) = (&self.cond, g) {
            x = x.broadcast_add(&cond.forward(g)?.transpose(1, 2)?)?;
        }
        // The absolute index of x's first row, at the current rate.
        let (mut first, mut rate) = (window.map_or(0, |(lo, _, _)| lo), 1);
        // Each level ends in the mean of its residual blocks; the 1 / n is applied by the next
        // layer's activation (leaky ReLU commutes with a positive scale).
        let mut scale = 1.0;
        for (level, (up, blocks)) in self.ups.iter().zip(&self.resblocks).enumerate() {
            x = up.forward(&x, Activation::leaky(LRELU_SLOPE as f32).scaled(scale))?;
            first *= up.stride();
            rate *= up.stride();
            let mut sum: Option<Tensor> = None;
            for block in blocks {
                let y = block.forward(&x)?;
                sum = Some(match sum {
                    Some(s) => (s + y)?,
                    None => y,
                });
            }
            x = sum.expect("at least one block");
            scale = 1.0 / blocks.len() as f32;
            if let Some((_, start, end)) = window {
                let rows = x.dim(1)?;
                let reach = self.reach_after[level];
                let keep_lo = (start * rate).saturating_sub(reach).max(first);
                let keep_hi = (end * rate + reach).min(first + rows);
                if keep_hi <= keep_lo {
                    return Err(Error::Format(format!(
                        "the decoder's window {start}..{end} lost its samples at level {level}"
                    )));
                }
                if (keep_lo, keep_hi) != (first, first + rows) {
                    x = x
                        .narrow(1, keep_lo - first, keep_hi - keep_lo)?
                        .contiguous()?;
                    first = keep_lo;
                }
            }
        }
        // The last activation uses PyTorch's default slope, not HiFi-GAN's 0.1.
        let audio = self
            .conv_post
            .forward(&x, Activation::leaky(0.01).scaled(scale), false)?
            .tanh()?;
        // [1, time, 1] and [1, 1, time] hold the same values in the same order.
        Ok((first, audio.reshape((1, 1, ()))?))
    }
}

/// Latent frames [`Vits::synthesize`] decodes at once (about 4.6 s of audio at 22,050 Hz): a
/// longer sentence is decoded in windows ([`Vits::decode_windowed`]), so the decoder's memory
/// (about 70 MB per window for a medium voice) does not grow with the sentence.
pub const DECODE_WINDOW_FRAMES: usize = 400;

/// Synthesis scales (Piper's `scales` input).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// Scale of the prior's noise; 0 makes the output deterministic given the durations.
    pub noise_scale: f32,
    /// Multiplies every duration: above 1 is slower speech.
    pub length_scale: f32,
    /// Scale of the duration predictor's noise; 0 makes durations deterministic.
    pub noise_w: f32,
}

impl From<crate::config::InferenceConfig> for Scales {
    fn from(c: crate::config::InferenceConfig) -> Self {
        Self {
            noise_scale: c.noise_scale,
            length_scale: c.length_scale,
            noise_w: c.noise_w,
        }
    }
}

/// A loaded VITS voice model.
#[derive(Debug, Clone)]
pub struct Vits {
    enc: TextEncoder,
    dp: DurationPredictor,
    /// Coupling layers in the order they run in reverse (`flow.flows.6`, `.4`, `.2`, `.0`).
    flows: Vec<CouplingLayer>,
    dec: Generator,
    speakers: Option<Tensor>,
    device: Device,
}

impl Vits {
    /// Builds the model from a voice's weights.
    pub fn load(w: &Weights, device: &Device) -> Result<Self> {
        let mut flows = Vec::new();
        let mut i = 0;
        while w.contains(&format!("flow.flows.{i}.pre.weight")) {
            let p = format!("flow.flows.{i}");
            flows.push(CouplingLayer::load(w, &p)?);
            // Coupling layers alternate with Flips, which have no weights.
            i += 2;
        }
        flows.reverse();
        let speakers = if w.contains("emb_g.weight") {
            Some(w.get("emb_g.weight")?.clone())
        } else {
            None
        };
        Ok(Self {
            enc: TextEncoder::load(w)?,
            dp: DurationPredictor::load(w)?,
            flows,
            dec: Generator::load(w)?,
            speakers,
            device: device.clone(),
        })
    }

    /// The number of speakers the weights hold an embedding for (1 for single-speaker voices).
    pub fn num_speakers(&self) -> usize {
        self.speakers.as_ref().map_or(1, |s| s.dim(0).unwrap_or(1))
    }

    /// The speaker conditioning `g` (`[1, gin, 1]`) for multi-speaker voices, `None` otherwise.
    pub fn speaker(&self, speaker: Option<u32>) -> Result<Option<Tensor>> {
        let Some(table) = &self.speakers else {
            return Ok(None);
        };
        let id = speaker.unwrap_or(0);
        let n = table.dim(0)?;
        if id as usize >= n {
            return Err(Error::Format(format!(
                "speaker {id} is outside the voice's {n} speakers"
            )));
        }
        Ok(Some(table.i(id as usize)?.reshape((1, (), 1))?))
    }

    /// Stage 1: the text encoder.
    pub fn encode(&self, ids: &[i64]) -> Result<Encoded> {
        if ids.is_empty() {
            return Err(Error::Format("no phonemes to speak".into()));
        }
        self.enc.forward(ids)
    }

    /// Stage 2: log-durations `[1, 1, T]` from the duration predictor, with noise scaled by `noise_w`.
    pub fn log_durations(&self, x: &Tensor, g: Option<&Tensor>, noise_w: f32) -> Result<Tensor> {
        let t = x.dim(2)?;
        let noise = if noise_w == 0.0 {
            Tensor::zeros((1, 2, t), DType::F32, &self.device)?
        } else {
            (Tensor::randn(0f32, 1f32, (1, 2, t), &self.device)? * f64::from(noise_w))?
        };
        self.dp.reverse(x, g, &noise)
    }

    /// Stage 3b: repeats each phoneme's prior statistics for its number of frames.
    pub fn expand(&self, encoded: &Encoded, frames: &[usize]) -> Result<(Tensor, Tensor)> {
        let idx: Vec<u32> = frames
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| std::iter::repeat_n(i as u32, n))
            .collect();
        if idx.is_empty() {
            // The reference clamps the length to one frame of zeros.
            let c = encoded.m_p.dim(1)?;
            let zeros = Tensor::zeros((1, c, 1), DType::F32, &self.device)?;
            return Ok((zeros.clone(), zeros));
        }
        let n = idx.len();
        let idx = Tensor::from_vec(idx, n, &self.device)?;
        Ok((
            encoded.m_p.index_select(&idx, 2)?,
            encoded.logs_p.index_select(&idx, 2)?,
        ))
    }

    /// Stage 4a: `z_p = m + noise * exp(logs) * noise_scale`.
    pub fn prior_sample(&self, m: &Tensor, logs: &Tensor, noise_scale: f32) -> Result<Tensor> {
        if noise_scale == 0.0 {
            return Ok(m.clone());
        }
        let noise = Tensor::randn(0f32, 1f32, m.shape(), &self.device)?;
        Ok((m + (noise * logs.exp()?)? * f64::from(noise_scale))?)
    }

    /// Stage 4b: the coupling flows in reverse, prior sample → latent `z`.
    pub fn flow_reverse(&self, z_p: &Tensor, g: Option<&Tensor>) -> Result<Tensor> {
        let (_, channels, len) = z_p.dims3()?;
        // Time-major rows, as the flows' kernels run; a Flip reverses each row.
        let mut z = z_p
            .squeeze(0)?
            .t()?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for layer in &self.flows {
            z.chunks_exact_mut(channels).for_each(<[f32]>::reverse);
            layer.reverse(&mut z, len, g)?;
        }
        Ok(Tensor::from_vec(z, (len, channels), z_p.device())?
            .t()?
            .contiguous()?
            .unsqueeze(0)?)
    }

    /// Stage 5: the HiFi-GAN decoder, latent `[1, C, F]` → audio `[1, 1, F * hop]`.
    pub fn decode(&self, z: &Tensor, g: Option<&Tensor>) -> Result<Tensor> {
        self.dec.forward(z, g)
    }

    /// Stage 5 in windows of at most `window` latent frames, each decoded with the frames around
    /// it that its audio depends on (the decoder's receptive field) and trimmed back: the same
    /// audio as [`Vits::decode`], with memory bounded by the window instead of the sentence.
    pub fn decode_windowed(
        &self,
        z: &Tensor,
        g: Option<&Tensor>,
        window: usize,
    ) -> Result<Vec<f32>> {
        self.dec.forward_windowed(z, g, window)
    }

    /// All stages: phoneme ids → audio samples in `[-1, 1]`.
    pub fn synthesize(
        &self,
        ids: &[i64],
        speaker: Option<u32>,
        scales: Scales,
    ) -> Result<Vec<f32>> {
        let latent = self.latent(ids, speaker, scales)?;
        self.decode_windowed(&latent.z, latent.g.as_ref(), DECODE_WINDOW_FRAMES)
    }

    /// Stages 1 to 4: phoneme ids → the latent the decoder turns into audio.
    pub fn latent(&self, ids: &[i64], speaker: Option<u32>, scales: Scales) -> Result<Latent> {
        let plan = self.plan(ids, speaker, scales)?;
        self.latent_of(plan, scales)
    }

    /// Stages 1 to 3a: the text encoder and the duration predictor, which say how many frames
    /// (and so how much audio) the ids will make before the flows and the decoder, which do
    /// most of the work, run on them.
    pub fn plan(&self, ids: &[i64], speaker: Option<u32>, scales: Scales) -> Result<Plan> {
        let g = self.speaker(speaker)?;
        let encoded = self.encode(ids)?;
        let logw = self.log_durations(&encoded.x, g.as_ref(), scales.noise_w)?;
        let frames = durations(&logw, scales.length_scale)?;
        Ok(Plan { encoded, g, frames })
    }

    /// Stages 3b and 4 on a [`Vits::plan`]: the latent the decoder turns into audio.
    pub fn latent_of(&self, plan: Plan, scales: Scales) -> Result<Latent> {
        let (m, logs) = self.expand(&plan.encoded, &plan.frames)?;
        let z_p = self.prior_sample(&m, &logs, scales.noise_scale)?;
        let z = self.flow_reverse(&z_p, plan.g.as_ref())?;
        Ok(Latent { z, g: plan.g })
    }

    /// Audio samples the decoder makes per latent frame.
    pub fn samples_per_frame(&self) -> usize {
        self.dec.hop
    }

    /// Latent frames on either side of a window that [`Vits::decode_frames`] decodes with it.
    pub fn decoder_context(&self) -> usize {
        self.dec.context
    }

    /// Stage 5 for latent frames `start .. end` alone (see [`windows`]): the same samples
    /// [`Vits::decode`] makes for those frames, decoded with only the frames around them that
    /// they depend on. This is how a long sentence is streamed window by window.
    pub fn decode_frames(&self, latent: &Latent, start: usize, end: usize) -> Result<Vec<f32>> {
        if start >= end || end > latent.z.dim(2)? {
            return Err(Error::Format(format!(
                "frames {start}..{end} are not inside the latent"
            )));
        }
        self.dec
            .forward_frames(&latent.z, latent.g.as_ref(), start, end)
    }
}

/// A sentence after the text encoder and the duration predictor: see [`Vits::plan`].
#[derive(Debug, Clone)]
pub struct Plan {
    encoded: Encoded,
    g: Option<Tensor>,
    frames: Vec<usize>,
}

impl Plan {
    /// Latent frames the sentence will have (at least one).
    pub fn total_frames(&self) -> usize {
        self.frames.iter().sum::<usize>().max(1)
    }

    /// Latent frames of each phoneme id, in order (their sum, when not zero, is
    /// [`Plan::total_frames`]).
    pub fn frames(&self) -> &[usize] {
        &self.frames
    }
}

/// The decoder's input for one sentence: the latent `z` (`[1, C, F]`) and the speaker
/// conditioning, if the voice has speakers.
#[derive(Debug, Clone)]
pub struct Latent {
    pub z: Tensor,
    pub g: Option<Tensor>,
}

/// Stage 3a: frames per phoneme, `ceil(exp(logw) * length_scale)`.
pub fn durations(logw: &Tensor, length_scale: f32) -> Result<Vec<usize>> {
    let logw = logw.flatten_all()?.to_vec1::<f32>()?;
    Ok(logw
        .iter()
        .map(|l| {
            let w = (l.exp() * length_scale).ceil();
            if w.is_finite() && w > 0.0 {
                w as usize
            } else {
                0
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::fused::tests::max_diff;

    /// A HiFi-GAN decoder of Piper's "high" shape (ResBlock1 with kernels 3/7/11, four
    /// upsamplers 8·8·2·2 with kernels 16/16/4/4), narrow and with random weights, written the
    /// PyTorch way for [`Weights::from_tensors`]: no installed voice has this shape.
    fn high_quality_decoder(latent: usize, first: usize) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        let mut put = |name: String, shape: &[usize]| {
            let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
            let std = (1.0 / fan_in as f64).sqrt();
            t.insert(name, Tensor::randn(0f32, std as f32, shape, &dev).unwrap());
        };
        put("dec.conv_pre.weight".into(), &[first, latent, 7]);
        put("dec.conv_pre.bias".into(), &[first]);
        let rates = [8, 8, 2, 2];
        let mut channels = first;
        let mut block = 0;
        for (i, rate) in rates.iter().enumerate() {
            let out = channels / 2;
            put(format!("dec.ups.{i}.weight"), &[channels, out, 2 * rate]);
            put(format!("dec.ups.{i}.bias"), &[out]);
            for kernel in [3, 7, 11] {
                for n in 0..3 {
                    for convs in ["convs1", "convs2"] {
                        let p = format!("dec.resblocks.{block}.{convs}.{n}");
                        put(format!("{p}.weight"), &[out, out, kernel]);
                        put(format!("{p}.bias"), &[out]);
                    }
                }
                block += 1;
            }
            channels = out;
        }
        put("dec.conv_post.weight".into(), &[1, channels, 7]);
        t
    }

    /// The same decoder written directly with candle's channel-major operators, as HiFi-GAN
    /// defines it.
    fn reference_decode(w: &HashMap<String, Tensor>, z: &Tensor) -> Tensor {
        let conv = |x: &Tensor, name: &str, dilation: usize| {
            let weight = &w[&format!("{name}.weight")];
            let k = weight.dim(2).unwrap();
            let y = x
                .conv1d(weight, dilation * (k - 1) / 2, 1, dilation, 1)
                .unwrap();
            match w.get(&format!("{name}.bias")) {
                Some(b) => y.broadcast_add(&b.reshape((1, (), 1)).unwrap()).unwrap(),
                None => y,
            }
        };
        let leaky = |x: &Tensor, slope: f64| x.maximum(&(x * slope).unwrap()).unwrap();
        let mut x = conv(z, "dec.conv_pre", 1);
        let mut block = 0;
        for i in 0..4 {
            let weight = &w[&format!("dec.ups.{i}.weight")];
            let k = weight.dim(2).unwrap();
            let up = leaky(&x, 0.1)
                .conv_transpose1d(weight, (k - k / 2) / 2, 0, k / 2, 1, 1)
                .unwrap()
                .broadcast_add(&w[&format!("dec.ups.{i}.bias")].reshape((1, (), 1)).unwrap())
                .unwrap();
            let mut sum: Option<Tensor> = None;
            for _ in 0..3 {
                let mut y = up.clone();
                for (n, d) in [1, 3, 5].into_iter().enumerate() {
                    let p = format!("dec.resblocks.{block}");
                    let xt = conv(&leaky(&y, 0.1), &format!("{p}.convs1.{n}"), d);
                    let xt = conv(&leaky(&xt, 0.1), &format!("{p}.convs2.{n}"), 1);
                    y = (xt + y).unwrap();
                }
                sum = Some(match sum {
                    Some(s) => (s + y).unwrap(),
                    None => y,
                });
                block += 1;
            }
            x = (sum.unwrap() / 3.0).unwrap();
        }
        conv(&leaky(&x, 0.01), "dec.conv_post", 1).tanh().unwrap()
    }

    #[test]
    fn a_high_quality_decoder_matches_its_direct_definition() {
        let tensors = high_quality_decoder(6, 32);
        let generator = Generator::load(&Weights::from_tensors(tensors.clone())).unwrap();
        assert_eq!(generator.hop, 256);
        let z = Tensor::randn(0f32, 1.0, (1, 6, 48), &Device::Cpu).unwrap();
        let want = reference_decode(&tensors, &z);
        let ours = generator.forward(&z, None).unwrap();
        assert_eq!(ours.dims(), &[1, 1, 48 * 256]);
        let diff = max_diff(&ours, &want);
        assert!(diff < 1e-5, "{diff}");
        // Its receptive field, and so windowed decoding, holds for this shape too.
        // Windows of 5 frames, each far smaller than its context (about 14 frames each side).
        let windowed = generator.forward_windowed(&z, None, 5).unwrap();
        let windowed = Tensor::from_vec(windowed, (1, 1, 48 * 256), &Device::Cpu).unwrap();
        let diff = max_diff(&ours, &windowed);
        assert!(diff < 1e-5, "windowed: {diff}");
    }

    #[test]
    fn windows_grow_from_the_first_to_the_largest() {
        assert_eq!(
            windows(1000, 100, 400),
            [(0, 100), (100, 300), (300, 700), (700, 1000)]
        );
        assert_eq!(windows(50, 100, 400), [(0, 50)]);
        assert_eq!(windows(5, 0, 0), [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]);
        assert!(windows(0, 100, 400).is_empty());
    }

    #[test]
    fn durations_round_up_and_scale() {
        let logw = Tensor::new(&[[[0.0f32, (2.5f32).ln(), -30.0]]], &Device::Cpu).unwrap();
        assert_eq!(durations(&logw, 1.0).unwrap(), vec![1, 3, 1]);
        assert_eq!(durations(&logw, 2.0).unwrap(), vec![2, 5, 1]);
    }

    #[test]
    fn flip_reverses_channels() {
        let x = Tensor::new(&[[[1f32], [2.], [3.]]], &Device::Cpu).unwrap();
        let y = flip_channels(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![3.0, 2.0, 1.0]);
    }

    #[test]
    fn channel_norm_normalises_each_frame() {
        let x = Tensor::new(&[[[1f32, 10.], [3., 10.], [5., 40.]]], &Device::Cpu).unwrap();
        let norm = ChannelNorm::new(
            &Tensor::ones((3, 1), DType::F32, &Device::Cpu).unwrap(),
            &Tensor::zeros((3, 1), DType::F32, &Device::Cpu).unwrap(),
            1e-5,
        )
        .unwrap();
        let y = norm
            .forward(&x)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // Frame 0 is (1, 3, 5): mean 3, variance 8/3.
        let s = (8.0f32 / 3.0 + 1e-5).sqrt();
        assert!((y[0][0] + 2.0 / s).abs() < 1e-5);
        assert!(y[1][0].abs() < 1e-6);
        assert!((y[2][0] - 2.0 / s).abs() < 1e-5);
    }
}
