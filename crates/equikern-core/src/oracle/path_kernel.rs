//! One instruction lowered to an explicit sum, evaluated for one sample.
//!
//! Every connection mode is the same computation with a different index list (§3.2):
//! `z[o, k] += W[wi] · Σ_{(i,j,k) ∈ nnz} (c·C_ijk) · x[u, i] · y[v, j]` over a list of
//! `(u, v) → [(o, wi), …]` entries. Unweighted instructions use `W ≡ 1`.

use super::real::Real;
use super::OracleError;
use crate::spec::{ConnectionMode, Path, TensorProduct};

/// One `(u, v)` input pair and the `(output mul index o, weight index wi)` terms it feeds.
#[derive(Clone, Debug)]
struct Pair {
    u: usize,
    v: usize,
    terms: std::ops::Range<usize>,
}

#[derive(Clone, Debug)]
pub(super) struct PathKernel<T> {
    x_off: usize,
    y_off: usize,
    z_off: usize,
    d1: usize,
    d2: usize,
    dout: usize,
    /// Offset of this path's weights in a sample's weight row; `None` = unweighted (W ≡ 1).
    w_off: Option<usize>,
    /// CG nonzeros with the path coefficient folded in: `(i, j, k, c·C_ijk)`.
    nz: Vec<(usize, usize, usize, T)>,
    pairs: Vec<Pair>,
    /// `(o, wi)`, grouped by pair.
    terms: Vec<(usize, usize)>,
}

/// `triu_indices(m, m, offset=1)` row-major: (0,1), (0,2), …, (1,2), …
fn upper_pairs(m: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..m).flat_map(move |u| (u + 1..m).map(move |v| (u, v)))
}

/// `(u, v, [(o, wi), …])`: one input pair and the outputs/weights it feeds.
type PairTerms = (usize, usize, Vec<(usize, usize)>);

/// The `(u, v, o, wi)` enumeration of §3.2 for one mode.
fn mode_terms(mode: ConnectionMode, m1: usize, m2: usize, mo: usize) -> Vec<PairTerms> {
    use ConnectionMode::*;
    let all_uv = || (0..m1).flat_map(move |u| (0..m2).map(move |v| (u, v)));
    match mode {
        Uvw => all_uv()
            .map(|(u, v)| (u, v, (0..mo).map(|w| (w, (u * m2 + v) * mo + w)).collect()))
            .collect(),
        Uvu => all_uv()
            .map(|(u, v)| (u, v, vec![(u, u * m2 + v)]))
            .collect(),
        Uvv => all_uv()
            .map(|(u, v)| (u, v, vec![(v, u * m2 + v)]))
            .collect(),
        Uuw => (0..m1)
            .map(|u| (u, u, (0..mo).map(|w| (w, u * mo + w)).collect()))
            .collect(),
        Uuu => (0..m1).map(|u| (u, u, vec![(u, u)])).collect(),
        Uvuv => all_uv()
            .map(|(u, v)| (u, v, vec![(u * m2 + v, u * m2 + v)]))
            .collect(),
        UvuLtV => upper_pairs(m1)
            .enumerate()
            .map(|(q, (u, v))| (u, v, vec![(q, q)]))
            .collect(),
        ULtVw => upper_pairs(m1)
            .enumerate()
            .map(|(q, (u, v))| (u, v, (0..mo).map(|w| (w, q * mo + w)).collect()))
            .collect(),
    }
}

fn invalid(k: usize, why: String) -> OracleError {
    OracleError::InvalidTensorProduct(format!("path {k}: {why}"))
}

impl<T: Real> PathKernel<T> {
    /// Lowers path `k`, checking every index it will touch against the tensor product's dims
    /// (the fields are public, so a hand-made `TensorProduct` must not make us panic).
    pub(super) fn new(tp: &TensorProduct, k: usize, p: &Path) -> Result<Self, OracleError> {
        let (d1, d2, dout) = (
            2 * p.l1 as usize + 1,
            2 * p.l2 as usize + 1,
            2 * p.lo as usize + 1,
        );
        let block_end =
            |off: usize, m: usize, d: usize| m.checked_mul(d).and_then(|n| n.checked_add(off));
        let fits = |end: Option<usize>, dim: usize| matches!(end, Some(e) if e <= dim);
        if !fits(block_end(p.in1_offset, p.m1, d1), tp.dim_in1)
            || !fits(block_end(p.in2_offset, p.m2, d2), tp.dim_in2)
            || !fits(block_end(p.out_offset, p.mo, dout), tp.dim_out)
        {
            return Err(invalid(k, "block exceeds the irreps dimension".into()));
        }
        let mode = p.instruction.mode;
        if mode
            .check_multiplicities(p.m1, p.m2, p.mo, p.instruction.has_weight)
            .is_err()
            || p.path_shape != mode.path_shape(p.m1, p.m2, p.mo)
        {
            return Err(invalid(
                k,
                "multiplicities or path_shape inconsistent with the mode".into(),
            ));
        }
        let w_off = match (p.instruction.has_weight, p.weight_offset) {
            (true, Some(off)) => {
                let n = p
                    .path_shape
                    .iter()
                    .try_fold(1usize, |a, &s| a.checked_mul(s));
                if !fits(n.and_then(|n| n.checked_add(off)), tp.weight_numel) {
                    return Err(invalid(k, "weights exceed weight_numel".into()));
                }
                Some(off)
            }
            (false, None) => None,
            _ => return Err(invalid(k, "weight_offset disagrees with has_weight".into())),
        };
        let mut nz = Vec::with_capacity(p.cg.len());
        for &(i, j, kk, c) in &p.cg {
            let (i, j, kk) = (i as usize, j as usize, kk as usize);
            if i >= d1 || j >= d2 || kk >= dout {
                return Err(invalid(k, format!("CG index ({i},{j},{kk}) out of range")));
            }
            nz.push((i, j, kk, T::from_f64(p.coefficient * c)));
        }
        let mut pairs = Vec::new();
        let mut terms = Vec::new();
        for (u, v, ts) in mode_terms(mode, p.m1, p.m2, p.mo) {
            let start = terms.len();
            terms.extend(ts);
            pairs.push(Pair {
                u,
                v,
                terms: start..terms.len(),
            });
        }
        Ok(PathKernel {
            x_off: p.in1_offset,
            y_off: p.in2_offset,
            z_off: p.out_offset,
            d1,
            d2,
            dout,
            w_off,
            nz,
            pairs,
            terms,
        })
    }

    fn weight(&self, w: &[T], wi: usize) -> T {
        match self.w_off {
            Some(off) => w[off + wi],
            None => T::ONE,
        }
    }

    pub(super) fn scratch_len(&self) -> usize {
        self.dout
    }

    /// `t[k] = Σ c·C_ijk x[u,i] y[v,j]` for one pair.
    fn contract(&self, x: &[T], y: &[T], pair: &Pair, t: &mut [T]) {
        let xu = &x[self.x_off + pair.u * self.d1..][..self.d1];
        let yv = &y[self.y_off + pair.v * self.d2..][..self.d2];
        t.fill(T::ZERO);
        for &(i, j, k, c) in &self.nz {
            t[k] += c * xu[i] * yv[j];
        }
    }

    /// `z += this path's contribution` for one sample (rows of one sample; `w` its weight row).
    pub(super) fn forward(&self, x: &[T], y: &[T], w: &[T], z: &mut [T], t: &mut [T]) {
        let t = &mut t[..self.dout];
        for pair in &self.pairs {
            self.contract(x, y, pair, t);
            for &(o, wi) in &self.terms[pair.terms.clone()] {
                let wv = self.weight(w, wi);
                let zo = &mut z[self.z_off + o * self.dout..][..self.dout];
                for (zk, &tk) in zo.iter_mut().zip(t.iter()) {
                    *zk += wv * tk;
                }
            }
        }
    }

    /// Accumulates `∂<gz, z>/∂x`, `/∂y`, `/∂w` for one sample into whichever sinks are given.
    /// `g` and `t` are scratch of [`Self::scratch_len`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward(
        &self,
        x: &[T],
        y: &[T],
        w: &[T],
        gz: &[T],
        mut gx: Option<&mut [T]>,
        mut gy: Option<&mut [T]>,
        mut gw: Option<&mut [T]>,
        g: &mut [T],
        t: &mut [T],
    ) {
        let (g, t) = (&mut g[..self.dout], &mut t[..self.dout]);
        let gz_row = |o: usize| &gz[self.z_off + o * self.dout..][..self.dout];
        for pair in &self.pairs {
            let terms = &self.terms[pair.terms.clone()];
            if gx.is_some() || gy.is_some() {
                // g[k] = Σ_terms W · gz[o, k]: the gradient flowing into this pair's product.
                g.fill(T::ZERO);
                for &(o, wi) in terms {
                    let wv = self.weight(w, wi);
                    for (gk, &gzk) in g.iter_mut().zip(gz_row(o)) {
                        *gk += wv * gzk;
                    }
                }
                let xu = &x[self.x_off + pair.u * self.d1..][..self.d1];
                let yv = &y[self.y_off + pair.v * self.d2..][..self.d2];
                if let Some(gx) = gx.as_deref_mut() {
                    let gxu = &mut gx[self.x_off + pair.u * self.d1..][..self.d1];
                    for &(i, j, k, c) in &self.nz {
                        gxu[i] += c * yv[j] * g[k];
                    }
                }
                if let Some(gy) = gy.as_deref_mut() {
                    let gyv = &mut gy[self.y_off + pair.v * self.d2..][..self.d2];
                    for &(i, j, k, c) in &self.nz {
                        gyv[j] += c * xu[i] * g[k];
                    }
                }
            }
            if let (Some(gw), Some(off)) = (gw.as_deref_mut(), self.w_off) {
                self.contract(x, y, pair, t);
                for &(o, wi) in terms {
                    let mut s = T::ZERO;
                    for (&tk, &gzk) in t.iter().zip(gz_row(o)) {
                        s += tk * gzk;
                    }
                    gw[off + wi] += s;
                }
            }
        }
    }
}
