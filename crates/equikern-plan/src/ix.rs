//! Index expressions: how a contribution finds its operand rows from the output row `r` and
//! the loop counter `t`. Writers print them; the interpreter evaluates them.

use serde::{Deserialize, Serialize};

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
}
