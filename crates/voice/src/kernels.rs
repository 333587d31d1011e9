//! Time-major convolution kernels for the HiFi-GAN decoder, as candle custom ops.
//!
//! The decoder is nearly all of a voice's arithmetic: three levels of transposed convolution,
//! each followed by residual blocks of dilated convolutions, on signals up to 256 times longer
//! than the latent. Written with candle's generic operators each convolution costs many passes
//! over memory (activation, padding, im2col, bias, residual) around its matrix product. These
//! kernels do one convolution in one pass instead, with tensors laid out time-major
//! (`[1, time, channels]`), where:
//!
//! - a block of output rows is a contiguous slice, so blocks run in parallel on rayon without
//!   sharing anything;
//! - the input rows a block needs are contiguous too: for an undilated kernel the im2col matrix
//!   is an overlapping view of them (row `t` is `K * Cin` consecutive values), so it is never
//!   built; a dilated kernel becomes one product per tap on shifted views;
//! - a transposed convolution with kernel `2s` and stride `s` is one product whose output rows,
//!   read as `[time * s, channels]`, are already the interleaved (polyphase) output.
//!
//! The activation (HiFi-GAN's leaky ReLU, with an optional input scale) is applied while a block's
//! input is copied into per-thread scratch, and the bias and residual initialise the output
//! before the product accumulates into it. The products are `gemm`'s, the engine candle's own
//! CPU matmul uses.
//!
//! This is the only module of the workspace with `unsafe` code: the one call into
//! `gemm::gemm`, behind [`matmul_acc`], which checks every bound the call relies on.
#![allow(unsafe_code)]

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::{Error, fused::single};

type Result<T> = std::result::Result<T, Error>;

/// Scratch values (f32) a block aims to keep within: its input rows and output rows together
/// should stay in a core's L2 cache.
const BLOCK_BUDGET: usize = 48 * 1024;
/// Fewest rows in a block, so that small layers are not cut into slivers.
const MIN_BLOCK_ROWS: usize = 16;

/// The activation applied to a convolution's input: `leaky_relu(scale * x)`, or `scale * x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Activation {
    pub scale: f32,
    pub slope: Option<f32>,
}

impl Activation {
    pub const IDENTITY: Self = Self {
        scale: 1.0,
        slope: None,
    };

    pub fn leaky(slope: f32) -> Self {
        Self {
            scale: 1.0,
            slope: Some(slope),
        }
    }

    pub fn scaled(self, scale: f32) -> Self {
        Self {
            scale: self.scale * scale,
            ..self
        }
    }

    /// Writes `act(src)` into `dst` (same length).
    fn apply(self, src: &[f32], dst: &mut [f32]) {
        match self.slope {
            None if self.scale == 1.0 => dst.copy_from_slice(src),
            None => {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = s * self.scale;
                }
            }
            Some(slope) => {
                for (d, s) in dst.iter_mut().zip(src) {
                    let v = s * self.scale;
                    *d = if v >= 0.0 { v } else { v * slope };
                }
            }
        }
    }
}

/// `dst[m × n] += lhs[m × k] · rhs[k × n]`, every matrix row-major with unit column stride and
/// the given row strides. `lhs` rows may overlap (`lhs_rs < k`): that is how an undilated
/// convolution reads its im2col matrix straight from the input rows.
#[allow(clippy::too_many_arguments)]
fn matmul_acc(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    lhs_rs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    // The bounds gemm reads and writes through its raw pointers.
    assert!(
        dst_rs >= n && dst.len() >= (m - 1) * dst_rs + n,
        "dst out of bounds"
    );
    assert!(lhs.len() >= (m - 1) * lhs_rs + k, "lhs out of bounds");
    assert!(
        rhs_rs >= n && rhs.len() >= (k - 1) * rhs_rs + n,
        "rhs out of bounds"
    );
    let stride = |s: usize| isize::try_from(s).expect("a stride fits in isize");
    // SAFETY: the assertions above keep every element gemm touches inside the three slices:
    // element (i, j) of an operand with row stride rs is at i * rs + j, and the largest such
    // offset is the one checked. `dst` rows do not overlap (dst_rs >= n) and `dst` is borrowed
    // mutably, so no other reference aliases the memory written; `lhs` and `rhs` are only read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            stride(dst_rs),
            true,
            lhs.as_ptr(),
            1,
            stride(lhs_rs),
            rhs.as_ptr(),
            1,
            stride(rhs_rs),
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// gemm's own parallelism over rayon's threads, for a product not already run in parallel blocks.
fn gemm_parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

thread_local! {
    /// Per-thread scratch for a block's input rows (and the upsampler's unsliced output).
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Rows per block for `row_values` values per row, and at least a few blocks for the threads.
fn block_rows(rows: usize, row_values: usize) -> usize {
    let by_cache = (BLOCK_BUDGET / row_values.max(1)).max(MIN_BLOCK_ROWS);
    let by_threads = rows
        .div_ceil(2 * rayon::current_num_threads())
        .max(MIN_BLOCK_ROWS);
    by_cache.min(by_threads)
}

/// The input of a time-major op, `[1, time, channels]` with the channels its weights expect:
/// its values, its length and its channels.
fn input_rows<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
    channels: usize,
) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (x, len, c_in) = single(storage, layout, op)?;
    if c_in != channels {
        candle_core::bail!("{op}: {c_in} input channels, the weights want {channels}");
    }
    Ok((x, len, c_in))
}

/// Fills `dst` with `rows` rows of `act(x)` from signal row `first` on; rows before the signal
/// (`first` may be negative) or past its `len` rows are zero. Rows are `width` values.
fn load_rows(
    x: &[f32],
    len: usize,
    width: usize,
    first: isize,
    rows: usize,
    act: Activation,
    dst: &mut Vec<f32>,
) {
    dst.clear();
    dst.resize(rows * width, 0.0);
    let lo = (-first).clamp(0, rows as isize) as usize;
    let hi = (len as isize - first).clamp(0, rows as isize) as usize;
    if lo < hi {
        let src = (first + lo as isize) as usize;
        act.apply(
            &x[src * width..(src + hi - lo) * width],
            &mut dst[lo * width..hi * width],
        );
    }
}

/// A 1-D convolution over a time-major signal.
#[derive(Debug, Clone)]
pub(crate) struct TimeConv {
    /// `[K * Cin, Cout]`: tap-major rows, so tap `k`'s `[Cin, Cout]` matrix starts at row `k * Cin`.
    taps: Vec<f32>,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    dilation: usize,
    padding: usize,
}

impl TimeConv {
    /// From a PyTorch `Conv1d` weight `[Cout, Cin, K]` and bias `[Cout]`.
    pub fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        dilation: usize,
        padding: usize,
    ) -> Result<Self> {
        let (c_out, c_in, kernel) = weight.dims3()?;
        let taps = weight
            .permute((2, 1, 0))?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = match bias {
            Some(b) => b.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; c_out],
        };
        if bias.len() != c_out || dilation == 0 || kernel == 0 {
            return Err(Error::Format(format!(
                "convolution with {c_out} outputs, {} biases, kernel {kernel}, dilation {dilation}",
                bias.len()
            )));
        }
        Ok(Self {
            taps,
            bias,
            c_in,
            c_out,
            kernel,
            dilation,
            padding,
        })
    }

    /// How far an output sample sees on either side of its own position, in input samples
    /// (for "same" padding).
    pub fn reach(&self) -> usize {
        self.dilation * (self.kernel - 1) / 2
    }

    /// Input channels and output channels.
    pub fn channels(&self) -> (usize, usize) {
        (self.c_in, self.c_out)
    }

    /// [`TimeConv::forward`] on plain rows: `x` is `len` rows of `Cin` values, time-major; the
    /// result is the output's rows of `Cout` values.
    pub fn forward_rows(
        &self,
        x: &[f32],
        len: usize,
        act: Activation,
        residual: bool,
    ) -> Result<Vec<f32>> {
        Ok(self.op(act, residual)?.run(x, len)?)
    }

    /// `conv(act(x)) + bias`, plus `x` itself when `residual`; `x` is `[1, time, Cin]`.
    pub fn forward(&self, x: &Tensor, act: Activation, residual: bool) -> Result<Tensor> {
        Ok(x.apply_op1_no_bwd(&self.op(act, residual)?)?)
    }

    /// The op that runs this convolution, once a residual one is known to keep its channels.
    fn op(&self, act: Activation, residual: bool) -> Result<ConvOp<'_>> {
        if residual && self.c_in != self.c_out {
            return Err(Error::Format(
                "a residual convolution keeps its channels".into(),
            ));
        }
        Ok(ConvOp {
            conv: self,
            act,
            residual,
        })
    }
}

struct ConvOp<'a> {
    conv: &'a TimeConv,
    act: Activation,
    residual: bool,
}

impl CustomOp1 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "voice-time-conv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, len, _) = input_rows(storage, layout, self.name(), self.conv.c_in)?;
        let out = self.run(x, len)?;
        let out_len = out.len() / self.conv.c_out;
        Ok((
            CpuStorage::F32(out),
            Shape::from((1, out_len, self.conv.c_out)),
        ))
    }
}

impl ConvOp<'_> {
    /// The convolution of `len` rows of `c_in` values: `out_len` rows of `c_out`.
    fn run(&self, x: &[f32], len: usize) -> candle_core::Result<Vec<f32>> {
        let c = self.conv;
        let c_in = c.c_in;
        if x.len() != len * c_in {
            candle_core::bail!("{}: {} values are not {len} rows", self.name(), x.len());
        }
        let span = c.dilation * (c.kernel - 1);
        let Some(out_len) = (len + 2 * c.padding).checked_sub(span) else {
            candle_core::bail!("{}: {len} samples are shorter than the kernel", self.name());
        };
        if self.residual && out_len != len {
            candle_core::bail!("{}: a residual convolution keeps the length", self.name());
        }
        let c_out = c.c_out;
        let mut out = vec![0f32; out_len * c_out];
        // Weights of more values than a block's budget, over few rows (the coupling flows): one
        // product over every row, which gemm spreads over the threads itself, rather than
        // blocks that each pack the weights again for a few rows.
        let whole = c.taps.len() > BLOCK_BUDGET && out_len * c_out < 4 * c.taps.len();
        let (rows, parallelism) = if whole {
            (out_len.max(1), gemm_parallelism())
        } else {
            (block_rows(out_len, c_in + c_out), gemm::Parallelism::None)
        };
        out.par_chunks_mut(rows * c_out)
            .enumerate()
            .for_each(|(b, dst)| {
                let t0 = b * rows;
                let n = dst.len() / c_out;
                SCRATCH.with_borrow_mut(|(input, _)| {
                    // The block's input rows t0 - padding .. t0 + n + span - padding, activated,
                    // zero outside the signal.
                    let first = t0 as isize - c.padding as isize;
                    load_rows(x, len, c_in, first, n + span, self.act, input);
                    for (i, row) in dst.chunks_exact_mut(c_out).enumerate() {
                        row.copy_from_slice(&c.bias);
                        if self.residual {
                            let t = t0 + i;
                            for (o, r) in row.iter_mut().zip(&x[t * c_in..(t + 1) * c_in]) {
                                *o += r;
                            }
                        }
                    }
                    if c.dilation == 1 {
                        // Row i of the im2col matrix is input rows i .. i + K, already adjacent.
                        matmul_acc(
                            n,
                            c_out,
                            c.kernel * c_in,
                            dst,
                            c_out,
                            input,
                            c_in,
                            &c.taps,
                            c_out,
                            parallelism,
                        );
                    } else {
                        for k in 0..c.kernel {
                            matmul_acc(
                                n,
                                c_out,
                                c_in,
                                dst,
                                c_out,
                                &input[k * c.dilation * c_in..],
                                c_in,
                                &c.taps[k * c_in * c_out..],
                                c_out,
                                parallelism,
                            );
                        }
                    }
                });
            });
        Ok(out)
    }
}

/// A transposed 1-D convolution with kernel `2 * stride` (every HiFi-GAN upsampler in Piper),
/// over a time-major signal.
#[derive(Debug, Clone)]
pub(crate) struct TimeUpsample {
    /// `[2 * Cin, stride * Cout]`: rows for input `q - 1` (taps `r + s`), then for input `q`
    /// (taps `r`); column `(r, co)` makes output phase `r` of channel `co`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    stride: usize,
    padding: usize,
}

impl TimeUpsample {
    /// From a PyTorch `ConvTranspose1d` weight `[Cin, Cout, K]` and bias `[Cout]`.
    pub fn new(weight: &Tensor, bias: &Tensor, stride: usize, padding: usize) -> Result<Self> {
        let (c_in, c_out, kernel) = weight.dims3()?;
        if kernel != 2 * stride || 2 * padding != stride {
            return Err(Error::Format(format!(
                "upsampling with kernel {kernel}, stride {stride}, padding {padding} is not \
                 supported (the kernel must be twice the stride and the padding half of it, so that\
                 each input sample makes exactly `stride` output samples)"
            )));
        }
        // [Cin, Cout, 2, s] → [2, Cin, s, Cout]; half j = 1 holds taps s.., j = 0 taps 0..s.
        let halves = weight
            .reshape((c_in, c_out, 2, stride))?
            .permute((2, 0, 3, 1))?
            .contiguous()?;
        let weight = Tensor::cat(&[halves.get(1)?, halves.get(0)?], 0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = bias.flatten_all()?.to_vec1::<f32>()?;
        if bias.len() != c_out {
            return Err(Error::Format(format!(
                "{} biases for {c_out} channels",
                bias.len()
            )));
        }
        Ok(Self {
            weight,
            bias,
            c_in,
            c_out,
            stride,
            padding,
        })
    }

    /// Output samples per input sample.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// `conv_transpose(act(x)) + bias`; `x` is `[1, time, Cin]`, the result
    /// `[1, (time + 1) * stride - 2 * padding, Cout]`.
    pub fn forward(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        Ok(x.apply_op1_no_bwd(&UpsampleOp { up: self, act })?)
    }
}

struct UpsampleOp<'a> {
    up: &'a TimeUpsample,
    act: Activation,
}

impl CustomOp1 for UpsampleOp<'_> {
    fn name(&self) -> &'static str {
        "voice-time-upsample"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let u = self.up;
        let (x, len, c_in) = input_rows(storage, layout, self.name(), u.c_in)?;
        let (s, p, c_out) = (u.stride, u.padding, u.c_out);
        let out_len = (len + 1) * s - 2 * p;
        let mut out = vec![0f32; out_len * c_out];
        // Blocks of whole input steps: `steps` inputs make `steps * s` output rows.
        let steps = block_rows(len + 1, c_in + s * c_out);
        out.par_chunks_mut(steps * s * c_out)
            .enumerate()
            .for_each(|(b, dst)| {
                let n = dst.len() / c_out;
                // Output rows t0 .. t0 + n are unpadded rows t0 + p .., made by steps q0 .. q1.
                let t0 = b * steps * s;
                let q0 = t0 / s;
                let q1 = ((t0 + n + p).div_ceil(s)).min(len + 1);
                let qn = q1 - q0;
                SCRATCH.with_borrow_mut(|(input, full)| {
                    // Input rows q0 - 1 .. q1 (qn + 1 of them), activated, zero outside the signal.
                    load_rows(x, len, c_in, q0 as isize - 1, qn + 1, self.act, input);
                    full.clear();
                    full.resize(qn * s * c_out, 0.0);
                    // Row q of the product is [x[q - 1], x[q]] · weight: all s phases of step q.
                    matmul_acc(
                        qn,
                        s * c_out,
                        2 * c_in,
                        full,
                        s * c_out,
                        input,
                        c_in,
                        &u.weight,
                        s * c_out,
                        gemm::Parallelism::None,
                    );
                    let from = (t0 + p - q0 * s) * c_out;
                    for (row, src) in dst
                        .chunks_exact_mut(c_out)
                        .zip(full[from..from + n * c_out].chunks_exact(c_out))
                    {
                        for ((o, v), b) in row.iter_mut().zip(src).zip(&u.bias) {
                            *o = v + b;
                        }
                    }
                });
            });
        Ok((CpuStorage::F32(out), Shape::from((1, out_len, c_out))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::fused::tests::max_diff;

    fn leaky(x: &Tensor, slope: f64) -> Tensor {
        x.maximum(&(x * slope).unwrap()).unwrap()
    }

    /// Compares with candle's own conv1d, channel-major, for the decoder's shapes and lengths
    /// that do and do not fill whole blocks.
    #[test]
    fn conv_matches_candle() {
        let dev = Device::Cpu;
        for (c_in, c_out, kernel, dilation, len) in [
            (8, 8, 3, 1, 5),
            (16, 16, 7, 12, 300),
            (32, 8, 5, 2, 1001),
            (12, 1, 7, 1, 77),
        ] {
            let w = Tensor::randn(0f32, 0.3, (c_out, c_in, kernel), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.3, c_out, &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, c_in, len), &dev).unwrap();
            let pad = dilation * (kernel - 1) / 2;
            let conv = TimeConv::new(&w, Some(&b), dilation, pad).unwrap();
            let xt = x.transpose(1, 2).unwrap().contiguous().unwrap();
            let act = Activation::leaky(0.1).scaled(0.5);
            let ours = conv
                .forward(&xt, act, false)
                .unwrap()
                .transpose(1, 2)
                .unwrap();
            let want = leaky(&(&x * 0.5).unwrap(), 0.1)
                .conv1d(&w, pad, 1, dilation, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, c_out, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), want.dims());
            assert!(
                max_diff(&ours, &want) < 1e-4,
                "{c_in}->{c_out} k{kernel} d{dilation}"
            );
            if c_in == c_out {
                let res = conv
                    .forward(&xt, act, true)
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap();
                assert!(max_diff(&res, &(&want + &x).unwrap()) < 1e-4);
            }
        }
    }

    #[test]
    fn upsample_matches_candle() {
        let dev = Device::Cpu;
        for (c_in, c_out, stride, len) in [(16, 8, 8, 3), (8, 4, 4, 1000), (12, 6, 8, 37)] {
            let kernel = 2 * stride;
            let pad = (kernel - stride) / 2;
            let w = Tensor::randn(0f32, 0.3, (c_in, c_out, kernel), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.3, c_out, &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, c_in, len), &dev).unwrap();
            let up = TimeUpsample::new(&w, &b, stride, pad).unwrap();
            let xt = x.transpose(1, 2).unwrap().contiguous().unwrap();
            let ours = up
                .forward(&xt, Activation::leaky(0.1))
                .unwrap()
                .transpose(1, 2)
                .unwrap();
            let want = leaky(&x, 0.1)
                .conv_transpose1d(&w, pad, 0, stride, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, c_out, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), want.dims());
            assert!(
                max_diff(&ours, &want) < 1e-4,
                "{c_in}->{c_out} s{stride} len {len}"
            );
        }
    }

    #[test]
    fn unsupported_upsampler_is_refused() {
        let w = Tensor::zeros((4, 4, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(TimeUpsample::new(&w, &b, 2, 1).is_err());
    }
}
