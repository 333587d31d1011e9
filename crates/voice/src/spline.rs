//! The inverse of the piecewise rational-quadratic spline (Durkan et al., "Neural Spline
//! Flows", 2019) with linear tails, as the stochastic duration predictor's `ConvFlow` uses it.
//!
//! It works on one scalar at a time: in this model the spline transforms a single channel, so a
//! plain loop over frames is simpler and faster than tensor gathers.

/// Smallest bin width, height and derivative, as in the reference implementation.
const MIN_BIN_WIDTH: f32 = 1e-3;
const MIN_BIN_HEIGHT: f32 = 1e-3;
const MIN_DERIVATIVE: f32 = 1e-3;

/// Inverts the spline at `y`.
///
/// `widths` and `heights` are the unnormalised bin widths and heights (`K` each, already divided
/// by `sqrt(filter_channels)` by the caller), `derivatives` the `K - 1` unnormalised inner knot
/// derivatives; `tail_bound` is the half-width of the interval the spline covers. Outside that
/// interval the transform is the identity.
pub fn rq_inverse(
    y: f32,
    widths: &[f32],
    heights: &[f32],
    derivatives: &[f32],
    tail_bound: f32,
) -> f32 {
    let bins = widths.len();
    debug_assert_eq!(heights.len(), bins);
    debug_assert_eq!(derivatives.len(), bins - 1);
    if !(-tail_bound..=tail_bound).contains(&y) {
        return y;
    }
    let (left, right, bottom, top) = (-tail_bound, tail_bound, -tail_bound, tail_bound);
    let cumwidths = knots(widths, MIN_BIN_WIDTH, left, right);
    let cumheights = knots(heights, MIN_BIN_HEIGHT, bottom, top);

    // The outer knots' derivatives are fixed so that softplus gives exactly 1: the spline then
    // joins the identity tails smoothly.
    let boundary = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln();
    let derivative = |k: usize| -> f32 {
        let u = if k == 0 || k == bins {
            boundary
        } else {
            derivatives[k - 1]
        };
        MIN_DERIVATIVE + softplus(u)
    };

    // The bin whose output range holds `y` (the last knot nudged up so `top` falls inside).
    let mut bin = 0;
    for (k, &c) in cumheights.iter().enumerate() {
        let c = if k == bins { c + 1e-6 } else { c };
        if y >= c {
            bin = k;
        }
    }
    let bin = bin.min(bins - 1);

    let x_k = cumwidths[bin];
    let w_k = cumwidths[bin + 1] - cumwidths[bin];
    let y_k = cumheights[bin];
    let h_k = cumheights[bin + 1] - cumheights[bin];
    let delta = h_k / w_k;
    let d_k = derivative(bin);
    let d_k1 = derivative(bin + 1);

    // Solve the rational-quadratic for the position inside the bin (a quadratic in theta), in
    // the numerically stable form.
    let dy = y - y_k;
    let a = dy * (d_k + d_k1 - 2.0 * delta) + h_k * (delta - d_k);
    let b = h_k * d_k - dy * (d_k + d_k1 - 2.0 * delta);
    let c = -delta * dy;
    let discriminant = b * b - 4.0 * a * c;
    let theta = (2.0 * c) / (-b - discriminant.max(0.0).sqrt());
    theta * w_k + x_k
}

/// The forward transform, used only to test the inverse.
#[cfg(test)]
fn rq_forward(
    x: f32,
    widths: &[f32],
    heights: &[f32],
    derivatives: &[f32],
    tail_bound: f32,
) -> f32 {
    let bins = widths.len();
    if !(-tail_bound..=tail_bound).contains(&x) {
        return x;
    }
    let cumwidths = knots(widths, MIN_BIN_WIDTH, -tail_bound, tail_bound);
    let cumheights = knots(heights, MIN_BIN_HEIGHT, -tail_bound, tail_bound);
    let boundary = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln();
    let derivative = |k: usize| {
        let u = if k == 0 || k == bins {
            boundary
        } else {
            derivatives[k - 1]
        };
        MIN_DERIVATIVE + softplus(u)
    };
    let mut bin = 0;
    for (k, &c) in cumwidths.iter().enumerate() {
        let c = if k == bins { c + 1e-6 } else { c };
        if x >= c {
            bin = k;
        }
    }
    let bin = bin.min(bins - 1);
    let (x_k, w_k) = (cumwidths[bin], cumwidths[bin + 1] - cumwidths[bin]);
    let (y_k, h_k) = (cumheights[bin], cumheights[bin + 1] - cumheights[bin]);
    let delta = h_k / w_k;
    let (d_k, d_k1) = (derivative(bin), derivative(bin + 1));
    let theta = (x - x_k) / w_k;
    let t1 = theta * (1.0 - theta);
    let numerator = h_k * (delta * theta * theta + d_k * t1);
    let denominator = delta + (d_k + d_k1 - 2.0 * delta) * t1;
    y_k + numerator / denominator
}

/// Knot positions from unnormalised sizes: softmax, a floor on each bin, cumulative sum, scaled
/// to `[lo, hi]` with the ends pinned exactly.
fn knots(unnormalised: &[f32], min_size: f32, lo: f32, hi: f32) -> Vec<f32> {
    let bins = unnormalised.len();
    let max = unnormalised
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = unnormalised.iter().map(|u| (u - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut out = Vec::with_capacity(bins + 1);
    out.push(lo);
    let mut acc = 0.0f32;
    for e in &exps {
        acc += min_size + (1.0 - min_size * bins as f32) * (e / sum);
        out.push((hi - lo) * acc + lo);
    }
    out[bins] = hi;
    out
}

fn softplus(x: f32) -> f32 {
    // ln(1 + e^x) without overflow for large x.
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_outside_the_tails() {
        let w = [0.0; 10];
        let d = [0.0; 9];
        assert_eq!(rq_inverse(7.5, &w, &w, &d, 5.0), 7.5);
        assert_eq!(rq_inverse(-5.01, &w, &w, &d, 5.0), -5.01);
    }

    #[test]
    fn uniform_bins_with_unit_slopes_are_the_identity() {
        // Equal widths and heights and derivative 1 everywhere make every bin linear.
        let w = [0.0; 10];
        let one = (1.0f32 - MIN_DERIVATIVE).exp_m1().ln();
        let d = [one; 9];
        for y in [-4.9f32, -1.0, 0.0, 0.3, 2.5, 4.99] {
            assert!((rq_inverse(y, &w, &w, &d, 5.0) - y).abs() < 1e-5, "{y}");
        }
    }

    #[test]
    fn inverse_undoes_forward() {
        let w = [0.3, -1.2, 0.8, 2.0, -0.5, 0.1, 0.0, 1.5, -2.0, 0.7];
        let h = [-0.4, 1.1, 0.2, -1.5, 0.9, 0.3, -0.2, 0.6, 1.8, -0.9];
        let d = [0.5, -0.3, 1.2, -2.0, 0.0, 0.8, -1.1, 2.2, 0.4];
        for x in [-4.8f32, -3.3, -1.0, -0.01, 0.0, 0.77, 2.1, 3.9, 4.95] {
            let y = rq_forward(x, &w, &h, &d, 5.0);
            assert!(
                (y - x).abs() > 1e-4 || x == 0.0,
                "the spline should move {x}"
            );
            let back = rq_inverse(y, &w, &h, &d, 5.0);
            assert!((back - x).abs() < 1e-4, "{x} -> {y} -> {back}");
        }
    }
}
