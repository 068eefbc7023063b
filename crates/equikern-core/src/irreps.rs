//! Irreducible representations of O(3) and their direct sums, with e3nn's grammar and layout.
//!
//! Layout: a block `mul x ir` is `[mul][2l+1]` row-major ("mul_ir"); blocks concatenate in order.
//!
//! Grammar (e3nn's, `shared/notes/e3nn-conventions.md` §1): `irreps := "" | term ("+" term)*`,
//! `term := [int "x"] irrep`, `irrep := int ("e" | "o" | "y")`. Integers follow Python's `int()`
//! (surrounding whitespace, optional sign, `_` between digits) because e3nn parses with it;
//! negative values are rejected afterwards, as e3nn's assertions do.

use std::fmt;
use std::ops::{Add, Range};
use std::str::FromStr;

/// Parity of an irrep. Declared odd-first so the derived order is e3nn's `(l, p)` tuple order
/// (`0o < 0e < 1o < 1e …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Parity {
    Odd,
    Even,
}

/// One irrep `(l, p)`; field order makes the derived `Ord` the e3nn order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Irrep {
    pub l: u32,
    pub p: Parity,
}

/// `mul` copies of one irrep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MulIr {
    pub mul: usize,
    pub ir: Irrep,
}

/// An ordered direct sum of irreps (structural equality, as e3nn's tuple equality).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Irreps(pub Vec<MulIr>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IrrepsError {
    #[error("invalid irreps string {input:?}: bad token {token:?}: {why}")]
    BadToken {
        input: String,
        token: String,
        why: String,
    },
}

/// Result of [`Irreps::sort`]: `p[old] = new`, `inv[new] = old`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sorted {
    pub irreps: Irreps,
    pub p: Vec<usize>,
    pub inv: Vec<usize>,
}

impl Parity {
    /// `+1` (even) or `-1` (odd).
    pub fn sign(self) -> i32 {
        match self {
            Parity::Even => 1,
            Parity::Odd => -1,
        }
    }

    /// Parity of a product: `p1 · p2`.
    pub fn times(self, other: Parity) -> Parity {
        if self == other {
            Parity::Even
        } else {
            Parity::Odd
        }
    }

    /// `p^l` for the spherical-harmonic parity convention.
    pub fn pow(self, l: u32) -> Parity {
        if self == Parity::Odd && l % 2 == 1 {
            Parity::Odd
        } else {
            Parity::Even
        }
    }
}

impl Irrep {
    pub fn new(l: u32, p: Parity) -> Self {
        Irrep { l, p }
    }

    pub fn dim(&self) -> usize {
        2 * self.l as usize + 1
    }

    /// Parses one irrep (`"1o"`, `"2e"`, `"3y"`).
    pub fn parse(s: &str) -> Result<Irrep, IrrepsError> {
        Irrep::parse_token(s, s)
    }

    /// e3nn's selection rule: `out ∈ self ⊗ other` ⇔ parity product and triangle inequality.
    /// No `l1+l2+l_out even` rule (`1o⊗1o→1e` is the cross product).
    pub fn couples_to(self, other: Irrep, out: Irrep) -> bool {
        out.p == self.p.times(other.p)
            && self.l.abs_diff(other.l) <= out.l
            && u64::from(out.l) <= u64::from(self.l) + u64::from(other.l)
    }

    /// `self ⊗ other` = `Irrep(l, p1·p2)` for `l = |l1−l2| ..= l1+l2`, ascending.
    pub fn product(self, other: Irrep) -> impl Iterator<Item = Irrep> {
        let p = self.p.times(other.p);
        (self.l.abs_diff(other.l)..=self.l.saturating_add(other.l)).map(move |l| Irrep { l, p })
    }

    /// Parses e3nn's irrep syntax; `token` is the string reported in errors.
    fn parse_token(s: &str, input: &str) -> Result<Irrep, IrrepsError> {
        let bad = |why: &str| IrrepsError::BadToken {
            input: input.to_string(),
            token: s.to_string(),
            why: why.to_string(),
        };
        let name = s.trim();
        let letter = name
            .chars()
            .next_back()
            .ok_or_else(|| bad("empty irrep (expected e.g. \"1o\")"))?;
        let digits = &name[..name.len() - letter.len_utf8()];
        let l = python_int(digits).ok_or_else(|| bad("degree l is not an integer"))?;
        if l < 0 {
            return Err(bad("degree l must be >= 0"));
        }
        let l = u32::try_from(l).map_err(|_| bad("degree l is too large"))?;
        let p = match letter {
            'e' => Parity::Even,
            'o' => Parity::Odd,
            'y' => Parity::Odd.pow(l),
            _ => return Err(bad("parity letter must be one of 'e', 'o', 'y'")),
        };
        Ok(Irrep { l, p })
    }
}

/// Python `int(s)` for decimal strings: whitespace around, optional sign, `_` only between digits.
/// `None` on anything else (including overflow of i128).
fn python_int(s: &str) -> Option<i128> {
    let t = s.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if body.is_empty() || body.starts_with('_') || body.ends_with('_') || body.contains("__") {
        return None;
    }
    let mut v: i128 = 0;
    for c in body.chars() {
        if c == '_' {
            continue;
        }
        let d = c.to_digit(10)?;
        v = v.checked_mul(10)?.checked_add(d as i128)?;
    }
    Some(if neg { -v } else { v })
}

impl FromStr for Irrep {
    type Err = IrrepsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Irrep::parse(s)
    }
}

impl fmt::Display for Irrep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letter = match self.p {
            Parity::Even => 'e',
            Parity::Odd => 'o',
        };
        write!(f, "{}{}", self.l, letter)
    }
}

impl MulIr {
    pub fn new(mul: usize, ir: Irrep) -> Self {
        MulIr { mul, ir }
    }
    /// `mul · (2l+1)`, saturating (absurd multiplicities must not panic).
    pub fn dim(&self) -> usize {
        self.mul.saturating_mul(self.ir.dim())
    }
}

impl fmt::Display for MulIr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.mul, self.ir)
    }
}

impl Irreps {
    /// Parses e3nn's irreps grammar; never panics. Errors name the offending token.
    pub fn parse(input: &str) -> Result<Irreps, IrrepsError> {
        if input.trim().is_empty() {
            return Ok(Irreps::default());
        }
        let mut out = Vec::new();
        for term in input.split('+') {
            let bad = |why: &str| IrrepsError::BadToken {
                input: input.to_string(),
                token: term.to_string(),
                why: why.to_string(),
            };
            let t = term.trim();
            if t.is_empty() {
                return Err(IrrepsError::BadToken {
                    input: input.to_string(),
                    token: "+".to_string(),
                    why: "empty term (stray '+')".to_string(),
                });
            }
            // An empty irrep part is reported with its whole term ("1x" rather than "").
            let irrep = |part: &str| {
                if part.trim().is_empty() {
                    Err(bad("missing irrep (expected e.g. \"1o\")"))
                } else {
                    Irrep::parse_token(part, input)
                }
            };
            let parts: Vec<&str> = t.split('x').collect();
            let (mul, ir) = match parts.as_slice() {
                [ir] => (1, irrep(ir)?),
                [mul, ir] => {
                    let m = python_int(mul).ok_or_else(|| bad("multiplicity is not an integer"))?;
                    if m < 0 {
                        return Err(bad("multiplicity must be >= 0"));
                    }
                    let m = usize::try_from(m).map_err(|_| bad("multiplicity is too large"))?;
                    (m, irrep(ir)?)
                }
                _ => return Err(bad("more than one 'x' in a term")),
            };
            out.push(MulIr { mul, ir });
        }
        Ok(Irreps(out))
    }

    /// `1x0e + 1x1o + 1x2e + …` up to `lmax` with parity `p^l` (e3nn default `p = Odd`).
    pub fn spherical_harmonics(lmax: u32) -> Irreps {
        Irreps::spherical_harmonics_with_parity(lmax, Parity::Odd)
    }

    pub fn spherical_harmonics_with_parity(lmax: u32, p: Parity) -> Irreps {
        Irreps(
            (0..=lmax)
                .map(|l| MulIr::new(1, Irrep::new(l, p.pow(l))))
                .collect(),
        )
    }

    /// `Σ mul·(2l+1)`, saturating; see [`Irreps::checked_dim`].
    pub fn dim(&self) -> usize {
        self.0.iter().fold(0usize, |a, m| a.saturating_add(m.dim()))
    }
    /// `Σ mul·(2l+1)`, `None` on overflow.
    pub fn checked_dim(&self) -> Option<usize> {
        self.0
            .iter()
            .try_fold(0usize, |a, m| a.checked_add(m.mul.checked_mul(m.ir.dim())?))
    }
    /// Number of entries `(mul, ir)` in the list (not the sum of multiplicities).
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, MulIr> {
        self.0.iter()
    }
    /// `Σ mul`.
    pub fn num_irreps(&self) -> usize {
        self.0.iter().fold(0usize, |a, m| a.saturating_add(m.mul))
    }
    /// Each `l` repeated `mul` times (allocates `num_irreps` entries).
    pub fn ls(&self) -> Vec<u32> {
        self.0
            .iter()
            .flat_map(|m| std::iter::repeat_n(m.ir.l, m.mul))
            .collect()
    }
    /// `max(ls)`; `None` when `ls` is empty (e3nn raises).
    pub fn lmax(&self) -> Option<u32> {
        self.0.iter().filter(|m| m.mul > 0).map(|m| m.ir.l).max()
    }
    /// Total multiplicity of `ir`.
    pub fn count(&self, ir: Irrep) -> usize {
        self.0
            .iter()
            .filter(|m| m.ir == ir)
            .fold(0usize, |a, m| a.saturating_add(m.mul))
    }
    /// Whether any entry (even with multiplicity 0) is `ir`, like e3nn's `ir in irreps`.
    pub fn contains(&self, ir: Irrep) -> bool {
        self.0.iter().any(|m| m.ir == ir)
    }
    /// `[start, stop)` of each block in the flat feature vector.
    pub fn slices(&self) -> Vec<Range<usize>> {
        let mut off: usize = 0;
        self.0
            .iter()
            .map(|m| {
                let r = off..off.saturating_add(m.dim());
                off = r.end;
                r
            })
            .collect()
    }
    /// Drops zero multiplicities and merges adjacent equal irreps; does not sort.
    pub fn simplify(&self) -> Irreps {
        let mut out: Vec<MulIr> = Vec::new();
        for m in self.0.iter().filter(|m| m.mul > 0) {
            match out.last_mut() {
                Some(last) if last.ir == m.ir => last.mul = last.mul.saturating_add(m.mul),
                _ => out.push(*m),
            }
        }
        Irreps(out)
    }
    pub fn remove_zero_multiplicities(&self) -> Irreps {
        Irreps(self.0.iter().filter(|m| m.mul > 0).copied().collect())
    }
    /// Stable sort by `(ir, original index)`; `p[old] = new`, `inv[new] = old`.
    pub fn sort(&self) -> Sorted {
        let mut inv: Vec<usize> = (0..self.0.len()).collect();
        inv.sort_by_key(|&i| (self.0[i].ir, i));
        let mut p = vec![0; inv.len()];
        for (new, &old) in inv.iter().enumerate() {
            p[old] = new;
        }
        let irreps = Irreps(inv.iter().map(|&i| self.0[i]).collect());
        Sorted { irreps, p, inv }
    }
    /// Keeps the entries whose irrep is in `keep` (e3nn's `filter(keep=…)`).
    pub fn filter_keep(&self, keep: &[Irrep]) -> Irreps {
        Irreps(
            self.0
                .iter()
                .filter(|m| keep.contains(&m.ir))
                .copied()
                .collect(),
        )
    }
    /// Drops the entries whose irrep is in `drop` (e3nn's `filter(drop=…)`).
    pub fn filter_drop(&self, drop: &[Irrep]) -> Irreps {
        Irreps(
            self.0
                .iter()
                .filter(|m| !drop.contains(&m.ir))
                .copied()
                .collect(),
        )
    }
    /// Keeps the entries with `l <= lmax` (e3nn's `filter(lmax=…)`).
    pub fn filter_lmax(&self, lmax: u32) -> Irreps {
        Irreps(self.0.iter().filter(|m| m.ir.l <= lmax).copied().collect())
    }
    /// `sort().irreps.simplify()`.
    pub fn regroup(&self) -> Irreps {
        self.sort().irreps.simplify()
    }
    /// The whole list repeated `n` times (e3nn's `Irreps * int`).
    pub fn repeat(&self, n: usize) -> Irreps {
        Irreps(
            std::iter::repeat_n(self.0.iter().copied(), n)
                .flatten()
                .collect(),
        )
    }
}

impl FromStr for Irreps {
    type Err = IrrepsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Irreps::parse(s)
    }
}

impl TryFrom<&str> for Irreps {
    type Error = IrrepsError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Irreps::parse(s)
    }
}

/// e3nn's `repr`: `"16x0e+8x1o"`, explicit multiplicities, no spaces; empty → `""`.
impl fmt::Display for Irreps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

/// Concatenation (e3nn's `Irreps + Irreps`).
impl Add for Irreps {
    type Output = Irreps;
    fn add(mut self, rhs: Irreps) -> Irreps {
        self.0.extend(rhs.0);
        self
    }
}

impl Add for &Irreps {
    type Output = Irreps;
    fn add(self, rhs: &Irreps) -> Irreps {
        Irreps(self.0.iter().chain(rhs.0.iter()).copied().collect())
    }
}

impl From<Irrep> for Irreps {
    fn from(ir: Irrep) -> Irreps {
        Irreps(vec![MulIr::new(1, ir)])
    }
}

impl<'a> IntoIterator for &'a Irreps {
    type Item = &'a MulIr;
    type IntoIter = std::slice::Iter<'a, MulIr>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Serialised as e3nn's string form.
impl serde::Serialize for Irreps {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Irreps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Irreps::parse(&s).map_err(serde::de::Error::custom)
    }
}
