//! Element-wise steps fused into single passes, as candle custom ops on channel-major tensors
//! (`[1, channels, time]`). Composed from candle's generic operators, a layer norm is six passes
//! with strided reductions and WaveNet's gate is four passes with two copies; for the short
//! tensors of the text side (a sentence has tens to hundreds of phonemes) those passes cost more
//! than the arithmetic. Each op here is one loop, and its test compares it with the composition
//! it replaces.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use crate::Error;

type Result<T> = std::result::Result<T, Error>;

/// The contiguous f32 values of a rank-3 tensor, and its dimensions.
pub(crate) fn rank3<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<(&'a [f32], [usize; 3])> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expects f32 values");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: expects a contiguous tensor");
    };
    let &[a, b, c] = layout.dims() else {
        candle_core::bail!("{op}: expects rank 3, got {:?}", layout.dims());
    };
    Ok((&data[start..end], [a, b, c]))
}

/// The values of a contiguous `[1, a, b]` f32 tensor (a batch of one), with `a` and `b`.
pub(crate) fn single<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (values, [batch, a, b]) = rank3(storage, layout, op)?;
    if batch != 1 {
        candle_core::bail!("{op}: expects a batch of one, got {:?}", layout.dims());
    }
    Ok((values, a, b))
}

/// Layer norm over the channels of each frame, then a per-channel affine map
/// (VITS's `modules.LayerNorm`).
#[derive(Debug, Clone)]
pub(crate) struct ChannelNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl ChannelNorm {
    pub fn new(gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Self> {
        let gamma = gamma.flatten_all()?.to_vec1::<f32>()?;
        let beta = beta.flatten_all()?.to_vec1::<f32>()?;
        if gamma.len() != beta.len() {
            return Err(Error::Format(format!(
                "layer norm with {} scales and {} shifts",
                gamma.len(),
                beta.len()
            )));
        }
        Ok(Self { gamma, beta, eps })
    }

    /// `x` is `[1, C, T]`, contiguous.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.apply_op1_no_bwd(self)?)
    }
}

impl CustomOp1 for ChannelNorm {
    fn name(&self) -> &'static str {
        "voice-channel-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, channels, time) = single(storage, layout, self.name())?;
        if channels != self.gamma.len() {
            candle_core::bail!(
                "{}: {channels} channels, {} scales",
                self.name(),
                self.gamma.len()
            );
        }
        if time == 0 {
            return Ok((CpuStorage::F32(Vec::new()), Shape::from((1, channels, 0))));
        }
        let n = channels as f32;
        let mut mean = vec![0f32; time];
        for row in x.chunks_exact(time) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f32; time];
        for row in x.chunks_exact(time) {
            for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                let d = v - m;
                *s += d * d;
            }
        }
        let inv: Vec<f32> = var
            .iter()
            .map(|s| 1.0 / (s / n + self.eps).sqrt())
            .collect();
        let mut out = vec![0f32; x.len()];
        for (c, (dst, row)) in out
            .chunks_exact_mut(time)
            .zip(x.chunks_exact(time))
            .enumerate()
        {
            let (g, b) = (self.gamma[c], self.beta[c]);
            for (((o, v), m), i) in dst.iter_mut().zip(row).zip(&mean).zip(&inv) {
                *o = (v - m) * i * g + b;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((1, channels, time))))
    }
}

/// WaveNet's gated activation `tanh(a) * sigmoid(b)`, with sigmoid(b) = (1 + tanh(b / 2)) / 2:
/// the rational [`tanh`] vectorises, libm's does not.
#[inline]
pub(crate) fn gate(a: f32, b: f32) -> f32 {
    tanh(a) * (0.5 + 0.5 * tanh(0.5 * b))
}

/// Relative-position attention's band (Shaw et al., window `W`): query `i` and key `j` interact
/// through offset `j - i + W` when `|j - i| <= W`. Two ops read and write that band directly,
/// where a dense formulation needs a `[T, 2W + 1, T]` one-hot tensor and batched products.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelativeBand {
    pub window: usize,
}

impl RelativeBand {
    /// `scores[h, i, j] + rel_logits[h, i, j - i + W]` on the band; `scores` is `[H, T, T]`,
    /// `rel_logits` `[H, T, 2W + 1]`.
    pub fn add_to_scores(self, scores: &Tensor, rel_logits: &Tensor) -> Result<Tensor> {
        Ok(scores.apply_op2_no_bwd(rel_logits, &BandAdd(self))?)
    }

    /// `out[h, i, k] = p[h, i, i + k - W]`, zero off the sequence; `p` is `[H, T, T]`.
    pub fn gather(self, p: &Tensor) -> Result<Tensor> {
        Ok(p.apply_op1_no_bwd(&BandGather(self))?)
    }

    /// The keys `j` on the band of query `i`, with their offsets `k`.
    fn band(self, i: usize, t: usize) -> impl Iterator<Item = (usize, usize)> {
        let lo = i.saturating_sub(self.window);
        let hi = (i + self.window + 1).min(t);
        (lo..hi).map(move |j| (j, j + self.window - i))
    }
}

struct BandAdd(RelativeBand);
struct BandGather(RelativeBand);

impl CustomOp2 for BandAdd {
    fn name(&self) -> &'static str {
        "voice-relative-band-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (scores, [h, t, t2]) = rank3(s1, l1, self.name())?;
        let (rel, [h2, t3, width]) = rank3(s2, l2, self.name())?;
        if t != t2 || h != h2 || t != t3 || width != 2 * self.0.window + 1 {
            candle_core::bail!(
                "{}: shapes {:?} and {:?}",
                self.name(),
                l1.dims(),
                l2.dims()
            );
        }
        let mut out = scores.to_vec();
        if t == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((h, 0, 0))));
        }
        for (row, (dst, rel)) in out
            .chunks_exact_mut(t)
            .zip(rel.chunks_exact(width))
            .enumerate()
        {
            for (j, k) in self.0.band(row % t, t) {
                dst[j] += rel[k];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((h, t, t))))
    }
}

impl CustomOp1 for BandGather {
    fn name(&self) -> &'static str {
        "voice-relative-band-gather"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (p, [h, t, t2]) = rank3(storage, layout, self.name())?;
        if t != t2 {
            candle_core::bail!("{}: {:?} is not square", self.name(), layout.dims());
        }
        let width = 2 * self.0.window + 1;
        let mut out = vec![0f32; h * t * width];
        if t == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((h, 0, width))));
        }
        for (row, (dst, p)) in out
            .chunks_exact_mut(width)
            .zip(p.chunks_exact(t))
            .enumerate()
        {
            for (j, k) in self.0.band(row % t, t) {
                dst[k] = p[j];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((h, t, width))))
    }
}

/// `tanh` as a rational function of odd degree 13 over even degree 6 on `[-7.905, 7.905]` (and
/// saturating beyond), a minimax fit within 1e-6 of the exact value (tested). Only
/// multiplications, additions and one division: the compiler vectorises loops of it. (Not
/// `mul_add`: without a target FMA feature that is a slow library call.)
#[inline]
fn tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let p = x2 * -2.760_768_5e-16 + 2.000_188e-13;
    let p = x2 * p + -8.604_672e-11;
    let p = x2 * p + 5.122_297e-8;
    let p = x2 * p + 1.485_722_4e-5;
    let p = x2 * p + 6.372_619_3e-4;
    let p = x2 * p + 4.893_524_6e-3;
    let q = x2 * 1.198_258_4e-6 + 1.185_347_1e-4;
    let q = x2 * q + 2.268_434_6e-3;
    let q = x2 * q + 4.893_525e-3;
    x * p / q
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// The largest absolute difference between two tensors of the same shape.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn channel_norm_matches_the_composed_operators() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 2.0, (1, 24, 37), &dev).unwrap() + 3.0).unwrap();
        let gamma = Tensor::randn(1f32, 0.2, (24, 1), &dev).unwrap();
        let beta = Tensor::randn(0f32, 0.2, (24, 1), &dev).unwrap();
        let ours = ChannelNorm::new(&gamma, &beta, 1e-5)
            .unwrap()
            .forward(&x)
            .unwrap();
        let mean = x.mean_keepdim(1).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(1).unwrap();
        let want = centred
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&gamma)
            .unwrap()
            .broadcast_add(&beta)
            .unwrap();
        assert!(max_diff(&ours, &want) < 1e-5);
    }

    /// The `[T, 2W+1, T]` one-hot band of the dense formulation: (i, k, j) is 1 when key j sits
    /// at offset k - W from query i.
    fn dense_band(t: usize, w: usize) -> Tensor {
        let width = 2 * w + 1;
        let mut band = vec![0f32; t * width * t];
        for i in 0..t {
            for k in 0..width {
                let j = i as isize + k as isize - w as isize;
                if (0..t as isize).contains(&j) {
                    band[(i * width + k) * t + j as usize] = 1.0;
                }
            }
        }
        Tensor::from_vec(band, (t, width, t), &Device::Cpu).unwrap()
    }

    #[test]
    fn the_band_sits_around_the_diagonal() {
        // p[0, i, j] = 10 i + j, so a gathered value names the key it came from.
        let t = 6;
        let p: Vec<f32> = (0..t * t).map(|n| (10 * (n / t) + n % t) as f32).collect();
        let p = Tensor::from_vec(p, (1, t, t), &Device::Cpu).unwrap();
        let g = RelativeBand { window: 4 }
            .gather(&p)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let w = 4;
        // Query 0 sees keys 0..=4 at offsets W..=W+4 and nothing at negative offsets.
        assert_eq!(g[0][0][w], 0.0);
        assert_eq!(g[0][0][w + 4], 4.0);
        assert_eq!(g[0][0][..w], [0.0; 4]);
        // Query 5 sees key 1 at offset 0 (5 + 0 - 4) and nothing beyond the last key.
        assert_eq!(g[0][5][0], 51.0);
        assert_eq!(g[0][5][w], 55.0);
        assert_eq!(g[0][5][w + 1..], [0.0; 4]);
    }

    #[test]
    fn the_band_ops_match_the_dense_formulation() {
        let dev = Device::Cpu;
        let rb = RelativeBand { window: 4 };
        for t in [1, 3, 9, 20] {
            let band = dense_band(t, 4);
            let scores = Tensor::randn(0f32, 1.0, (2, t, t), &dev).unwrap();
            let rel = Tensor::randn(0f32, 1.0, (2, t, 9), &dev).unwrap();
            let dense = (&scores
                + rel
                    .transpose(0, 1)
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .matmul(&band)
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap())
            .unwrap();
            assert!(max_diff(&rb.add_to_scores(&scores, &rel).unwrap(), &dense) < 1e-6);
            let dense = scores
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
                .matmul(&band.transpose(1, 2).unwrap().contiguous().unwrap())
                .unwrap()
                .transpose(0, 1)
                .unwrap();
            assert!(max_diff(&rb.gather(&scores).unwrap(), &dense) < 1e-6);
        }
    }

    #[test]
    fn rational_tanh_is_accurate() {
        let mut worst = 0f32;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((tanh(x) - x.tanh()).abs());
        }
        assert!(worst < 1e-6, "largest error {worst}");
        assert!((tanh(50.0) - 1.0).abs() < 1e-6 && (tanh(-50.0) + 1.0).abs() < 1e-6);
        assert!(tanh(f32::INFINITY) <= 1.0 && tanh(f32::NEG_INFINITY) >= -1.0);
    }

    #[test]
    fn gate_matches_the_composed_operators() {
        let x = Tensor::randn(0f32, 3.0, (2, 400), &Device::Cpu).unwrap();
        let (a, b) = (x.get(0).unwrap(), x.get(1).unwrap());
        let want = (a.tanh().unwrap() * candle_nn::ops::sigmoid(&b).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        for ((a, b), want) in a.iter().zip(&b).zip(&want) {
            assert!((gate(*a, *b) - want).abs() < 1e-6, "gate({a}, {b})");
        }
    }
}
