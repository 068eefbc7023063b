//! Index expressions: how a contribution finds its operand rows from the output row `r` and
//! the loop counter `t`. Writers print them; the interpreter evaluates them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A `u32` expression in the output row `R` and loop counter `T`. All arithmetic is unsigned
/// and the lowering guarantees no underflow or overflow for in-range `R`, `T`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ix {
    R,
    T,
    C(u32),
    Add(Box<Ix>, Box<Ix>),
    Sub(Box<Ix>, Box<Ix>),
    Mul(Box<Ix>, Box<Ix>),
    Div(Box<Ix>, Box<Ix>),
    Mod(Box<Ix>, Box<Ix>),
    /// `tables[id][index]`.
    Table(u32, Box<Ix>),
}

impl Ix {
    pub fn eval(&self, r: u32, t: u32, tables: &[Vec<u32>]) -> u32 {
        match self {
            Ix::R => r,
            Ix::T => t,
            Ix::C(c) => *c,
            Ix::Add(a, b) => a.eval(r, t, tables) + b.eval(r, t, tables),
            Ix::Sub(a, b) => a.eval(r, t, tables) - b.eval(r, t, tables),
            Ix::Mul(a, b) => a.eval(r, t, tables) * b.eval(r, t, tables),
            Ix::Div(a, b) => a.eval(r, t, tables) / b.eval(r, t, tables),
            Ix::Mod(a, b) => a.eval(r, t, tables) % b.eval(r, t, tables),
            Ix::Table(id, i) => tables[*id as usize][i.eval(r, t, tables) as usize],
        }
    }

    /// Like [`Ix::eval`] but `None` on overflow, underflow, division by zero or a table index
    /// out of range (the interpreter uses it so a lowering bug is an error, not a panic).
    pub fn try_eval(&self, r: u32, t: u32, tables: &[Vec<u32>]) -> Option<u32> {
        let two = |a: &Ix, b: &Ix| Some((a.try_eval(r, t, tables)?, b.try_eval(r, t, tables)?));
        match self {
            Ix::R => Some(r),
            Ix::T => Some(t),
            Ix::C(c) => Some(*c),
            Ix::Add(a, b) => two(a, b).and_then(|(a, b)| a.checked_add(b)),
            Ix::Sub(a, b) => two(a, b).and_then(|(a, b)| a.checked_sub(b)),
            Ix::Mul(a, b) => two(a, b).and_then(|(a, b)| a.checked_mul(b)),
            Ix::Div(a, b) => two(a, b).and_then(|(a, b)| a.checked_div(b)),
            Ix::Mod(a, b) => two(a, b).and_then(|(a, b)| a.checked_rem(b)),
            Ix::Table(id, i) => {
                let i = i.try_eval(r, t, tables)?;
                tables.get(*id as usize)?.get(i as usize).copied()
            }
        }
    }

    /// True if the expression mentions `T` (writers may hoist it out of the loop otherwise).
    pub fn uses_t(&self) -> bool {
        match self {
            Ix::T => true,
            Ix::R | Ix::C(_) => false,
            Ix::Add(a, b) | Ix::Sub(a, b) | Ix::Mul(a, b) | Ix::Div(a, b) | Ix::Mod(a, b) => {
                a.uses_t() || b.uses_t()
            }
            Ix::Table(_, i) => i.uses_t(),
        }
    }

    /// The constant value, if the expression is a literal.
    pub fn as_const(&self) -> Option<u32> {
        match self {
            Ix::C(c) => Some(*c),
            _ => None,
        }
    }

    // Smart constructors: fold constants and trivial identities so printed kernels stay short.

    #[allow(clippy::should_implement_trait)]
    pub fn add(a: Ix, b: Ix) -> Ix {
        match (a, b) {
            (Ix::C(x), Ix::C(y)) => Ix::C(x + y),
            (Ix::C(0), e) | (e, Ix::C(0)) => e,
            (a, b) => Ix::Add(Box::new(a), Box::new(b)),
        }
    }
    #[allow(clippy::should_implement_trait)]
    pub fn sub(a: Ix, b: Ix) -> Ix {
        match (a, b) {
            (Ix::C(x), Ix::C(y)) if x >= y => Ix::C(x - y),
            (e, Ix::C(0)) => e,
            (a, b) => Ix::Sub(Box::new(a), Box::new(b)),
        }
    }
    #[allow(clippy::should_implement_trait)]
    pub fn mul(a: Ix, b: Ix) -> Ix {
        match (a, b) {
            (Ix::C(x), Ix::C(y)) => Ix::C(x * y),
            (Ix::C(0), _) | (_, Ix::C(0)) => Ix::C(0),
            (Ix::C(1), e) | (e, Ix::C(1)) => e,
            (a, b) => Ix::Mul(Box::new(a), Box::new(b)),
        }
    }
    #[allow(clippy::should_implement_trait)]
    pub fn div(a: Ix, b: Ix) -> Ix {
        match (a, b) {
            (Ix::C(x), Ix::C(y)) if y != 0 => Ix::C(x / y),
            (e, Ix::C(1)) => e,
            (a, b) => Ix::Div(Box::new(a), Box::new(b)),
        }
    }
    #[allow(clippy::should_implement_trait)]
    pub fn rem(a: Ix, b: Ix) -> Ix {
        match (a, b) {
            (Ix::C(x), Ix::C(y)) if y != 0 => Ix::C(x % y),
            (_, Ix::C(1)) => Ix::C(0),
            (a, b) => Ix::Mod(Box::new(a), Box::new(b)),
        }
    }

    /// The expression with `R` replaced by `r` and `T` by `t` (re-folded by the smart
    /// constructors).
    pub fn subst(&self, r: &Ix, t: &Ix) -> Ix {
        match self {
            Ix::R => r.clone(),
            Ix::T => t.clone(),
            Ix::C(c) => Ix::C(*c),
            Ix::Add(a, b) => Ix::add(a.subst(r, t), b.subst(r, t)),
            Ix::Sub(a, b) => Ix::sub(a.subst(r, t), b.subst(r, t)),
            Ix::Mul(a, b) => Ix::mul(a.subst(r, t), b.subst(r, t)),
            Ix::Div(a, b) => Ix::div(a.subst(r, t), b.subst(r, t)),
            Ix::Mod(a, b) => Ix::rem(a.subst(r, t), b.subst(r, t)),
            Ix::Table(id, i) => Ix::Table(*id, Box::new(i.subst(r, t))),
        }
    }

    /// Inclusive upper bound given `R <= rmax`, `T <= tmax` (`None` if unknown).
    pub fn upper(&self, rmax: u64, tmax: u64, tables: &[Vec<u32>]) -> Option<u64> {
        Some(match self {
            Ix::R => rmax,
            Ix::T => tmax,
            Ix::C(c) => *c as u64,
            Ix::Add(a, b) => a.upper(rmax, tmax, tables)? + b.upper(rmax, tmax, tables)?,
            Ix::Sub(a, _) => a.upper(rmax, tmax, tables)?,
            Ix::Mul(a, b) => a.upper(rmax, tmax, tables)? * b.upper(rmax, tmax, tables)?,
            Ix::Div(a, b) => a.upper(rmax, tmax, tables)? / b.as_const().filter(|&c| c > 0)? as u64,
            Ix::Mod(a, b) => {
                let c = b.as_const().filter(|&c| c > 0)? as u64;
                a.upper(rmax, tmax, tables).map_or(c - 1, |u| u.min(c - 1))
            }
            Ix::Table(id, _) => *tables.get(*id as usize)?.iter().max()? as u64,
        })
    }

    /// Re-fold bottom-up, substituting `T` by `t` if given and dropping `a / n` (→ 0) and
    /// `a % n` (→ a) where the bounds show `a < n`.
    pub fn simplify(&self, rmax: u64, tmax: u64, t: Option<u32>, tables: &[Vec<u32>]) -> Ix {
        let s = |e: &Ix| e.simplify(rmax, tmax, t, tables);
        match self {
            Ix::R => Ix::R,
            Ix::T => t.map_or(Ix::T, Ix::C),
            Ix::C(c) => Ix::C(*c),
            Ix::Add(a, b) => Ix::add(s(a), s(b)),
            Ix::Sub(a, b) => Ix::sub(s(a), s(b)),
            Ix::Mul(a, b) => Ix::mul(s(a), s(b)),
            Ix::Div(a, b) => {
                let (a, b) = (s(a), s(b));
                match (a.upper(rmax, tmax, tables), b.as_const()) {
                    (Some(u), Some(n)) if u < n as u64 => Ix::C(0),
                    _ => Ix::div(a, b),
                }
            }
            Ix::Mod(a, b) => {
                let (a, b) = (s(a), s(b));
                match (a.upper(rmax, tmax, tables), b.as_const()) {
                    (Some(u), Some(n)) if u < n as u64 => a,
                    _ => Ix::rem(a, b),
                }
            }
            Ix::Table(id, i) => {
                let i = s(i);
                match i
                    .as_const()
                    .and_then(|c| tables.get(*id as usize)?.get(c as usize))
                {
                    Some(v) => Ix::C(*v),
                    None => Ix::Table(*id, Box::new(i)),
                }
            }
        }
    }
}

fn prec(e: &Ix) -> u8 {
    match e {
        Ix::Add(..) | Ix::Sub(..) => 1,
        Ix::Mul(..) | Ix::Div(..) | Ix::Mod(..) => 2,
        _ => 3,
    }
}

impl fmt::Display for Ix {
    /// C-like infix form (`r`, `t`, `tab0[...]`), parenthesised only where needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bin = |f: &mut fmt::Formatter<'_>, a: &Ix, op: &str, b: &Ix, p: u8| {
            if prec(a) < p {
                write!(f, "({a})")?;
            } else {
                write!(f, "{a}")?;
            }
            write!(f, " {op} ")?;
            // Right operand of a non-associative or equal-precedence op needs parentheses.
            if prec(b) <= p {
                write!(f, "({b})")
            } else {
                write!(f, "{b}")
            }
        };
        match self {
            Ix::R => write!(f, "r"),
            Ix::T => write!(f, "t"),
            Ix::C(c) => write!(f, "{c}"),
            Ix::Add(a, b) => bin(f, a, "+", b, 1),
            Ix::Sub(a, b) => bin(f, a, "-", b, 1),
            Ix::Mul(a, b) => bin(f, a, "*", b, 2),
            Ix::Div(a, b) => bin(f, a, "/", b, 2),
            Ix::Mod(a, b) => bin(f, a, "%", b, 2),
            Ix::Table(id, i) => write!(f, "tab{id}[{i}]"),
        }
    }
}
