//! One instruction lowered to an explicit sum, evaluated for one sample.
//!
//! Every connection mode is the same computation with a different index list (§3.2):
//! `z[o, k] += W[wi] · Σ_{(i,j,k) ∈ nnz} (c·C_ijk) · x[u, i] · y[v, j]` over a list of
//! `(u, v) → [(o, wi), …]` entries. Unweighted instructions use `W ≡ 1`. In every mode the
//! `(o, wi)` of one pair form a run `(o0 + t, wi0 + t)`, `t < n`, stored as such.

use super::real::Real;
use super::OracleError;
use crate::spec::{ConnectionMode, Path, TensorProduct};

/// One `(u, v)` input pair feeding the terms `(o, wi) = (o0 + t, wi0 + t)` for `t < n`
/// (output multiplicity index o, weight index wi within the path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pair {
    u: usize,
    v: usize,
    o0: usize,
    wi0: usize,
    n: usize,
}

impl Pair {
    fn terms(&self) -> impl Iterator<Item = (usize, usize)> {
        let (o0, wi0) = (self.o0, self.wi0);
        (0..self.n).map(move |t| (o0 + t, wi0 + t))
    }
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
    /// CG nonzeros with the path coefficient folded in, grouped by output component:
    /// `nz[by_k[k]..by_k[k+1]]` are the `(i, j, c·C_ijk)` of component k.
    nz: Vec<(usize, usize, T)>,
    by_k: Vec<usize>,
    pairs: Vec<Pair>,
}

/// `triu_indices(m, m, offset=1)` row-major: (0,1), (0,2), …, (1,2), …
fn upper_pairs(m: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..m).flat_map(move |u| (u + 1..m).map(move |v| (u, v)))
}

/// The pair list of §3.2 for one mode (row-major weight index of `path_shape`).
fn mode_pairs(mode: ConnectionMode, m1: usize, m2: usize, mo: usize) -> Vec<Pair> {
    use ConnectionMode::*;
    let pair = |u, v, o0, wi0, n| Pair { u, v, o0, wi0, n };
    let all_uv = || (0..m1).flat_map(move |u| (0..m2).map(move |v| (u, v)));
    match mode {
        // out[w] += W[u,v,w] x_u y_v
        Uvw => all_uv()
            .map(|(u, v)| pair(u, v, 0, (u * m2 + v) * mo, mo))
            .collect(),
        // out[u] += W[u,v] x_u y_v
        Uvu => all_uv()
            .map(|(u, v)| pair(u, v, u, u * m2 + v, 1))
            .collect(),
        // out[v] += W[u,v] x_u y_v
        Uvv => all_uv()
            .map(|(u, v)| pair(u, v, v, u * m2 + v, 1))
            .collect(),
        // out[w] += W[u,w] x_u y_u
        Uuw => (0..m1).map(|u| pair(u, u, 0, u * mo, mo)).collect(),
        // out[u] += W[u] x_u y_u
        Uuu => (0..m1).map(|u| pair(u, u, u, u, 1)).collect(),
        // out[u·m2+v] += W[u,v] x_u y_v
        Uvuv => all_uv()
            .map(|(u, v)| pair(u, v, u * m2 + v, u * m2 + v, 1))
            .collect(),
        // out[q] += W[q] x_{u_q} y_{v_q}
        UvuLtV => upper_pairs(m1)
            .enumerate()
            .map(|(q, (u, v))| pair(u, v, q, q, 1))
            .collect(),
        // out[w] += W[q,w] x_{u_q} y_{v_q}
        ULtVw => upper_pairs(m1)
            .enumerate()
            .map(|(q, (u, v))| pair(u, v, 0, q * mo, mo))
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
        // ∏ path_shape bounds every weight index (and m1·m2) computed below.
        let numel = p
            .path_shape
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s))
            .ok_or_else(|| invalid(k, "path_shape size overflows usize".into()))?;
        if p.m1.checked_mul(p.m2).is_none() {
            return Err(invalid(k, "m1·m2 overflows usize".into()));
        }
        let w_off = match (p.instruction.has_weight, p.weight_offset) {
            (true, Some(off)) => {
                if !fits(numel.checked_add(off), tp.weight_numel) {
                    return Err(invalid(k, "weights exceed weight_numel".into()));
                }
                Some(off)
            }
            (false, None) => None,
            _ => return Err(invalid(k, "weight_offset disagrees with has_weight".into())),
        };
        let mut grouped: Vec<Vec<(usize, usize, T)>> = vec![Vec::new(); dout];
        for &(i, j, kk, c) in &p.cg {
            let (i, j, kk) = (i as usize, j as usize, kk as usize);
            if i >= d1 || j >= d2 || kk >= dout {
                return Err(invalid(k, format!("CG index ({i},{j},{kk}) out of range")));
            }
            grouped[kk].push((i, j, T::from_f64(p.coefficient * c)));
        }
        let mut by_k = vec![0];
        let mut nz = Vec::with_capacity(p.cg.len());
        for g in grouped {
            nz.extend(g);
            by_k.push(nz.len());
        }
        let pairs = mode_pairs(mode, p.m1, p.m2, p.mo);
        Ok(PathKernel {
            x_off: p.in1_offset,
            y_off: p.in2_offset,
            z_off: p.out_offset,
            d1,
            d2,
            dout,
            w_off,
            nz,
            by_k,
            pairs,
        })
    }

    /// Whether this path reads weights (unweighted paths use W ≡ 1, constant in w).
    pub(super) fn weighted(&self) -> bool {
        self.w_off.is_some()
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
        for (k, tk) in t.iter_mut().enumerate() {
            let mut s = T::ZERO;
            for &(i, j, c) in &self.nz[self.by_k[k]..self.by_k[k + 1]] {
                s += c * xu[i] * yv[j];
            }
            *tk = s;
        }
    }

    /// `z += this path's contribution` for one sample (rows of one sample; `w` its weight row).
    pub(super) fn forward(&self, x: &[T], y: &[T], w: &[T], z: &mut [T], t: &mut [T]) {
        let t = &mut t[..self.dout];
        for pair in &self.pairs {
            self.contract(x, y, pair, t);
            for (o, wi) in pair.terms() {
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
            if gx.is_some() || gy.is_some() {
                // g[k] = Σ_terms W · gz[o, k]: the gradient flowing into this pair's product.
                g.fill(T::ZERO);
                for (o, wi) in pair.terms() {
                    let wv = self.weight(w, wi);
                    for (gk, &gzk) in g.iter_mut().zip(gz_row(o)) {
                        *gk += wv * gzk;
                    }
                }
                let xu = &x[self.x_off + pair.u * self.d1..][..self.d1];
                let yv = &y[self.y_off + pair.v * self.d2..][..self.d2];
                if let Some(gx) = gx.as_deref_mut() {
                    let gxu = &mut gx[self.x_off + pair.u * self.d1..][..self.d1];
                    for (k, &gk) in g.iter().enumerate() {
                        for &(i, j, c) in &self.nz[self.by_k[k]..self.by_k[k + 1]] {
                            gxu[i] += c * yv[j] * gk;
                        }
                    }
                }
                if let Some(gy) = gy.as_deref_mut() {
                    let gyv = &mut gy[self.y_off + pair.v * self.d2..][..self.d2];
                    for (k, &gk) in g.iter().enumerate() {
                        for &(i, j, c) in &self.nz[self.by_k[k]..self.by_k[k + 1]] {
                            gyv[j] += c * xu[i] * gk;
                        }
                    }
                }
            }
            if let (Some(gw), Some(off)) = (gw.as_deref_mut(), self.w_off) {
                self.contract(x, y, pair, t);
                for (o, wi) in pair.terms() {
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
