//! Extended XYZ, as ASE reads and writes it.
//!
//! A frame is: a line with the atom count; a comment line of `key=value` pairs; one line per
//! atom with the columns `Properties` describes. Recognised keys (case-insensitive):
//! * `Lattice="ax ay az bx by bz cx cy cz"` — the cell, rows = lattice vectors (Å);
//! * `Properties=name:T:n:name:T:n…` — per-atom columns, `T` ∈ `S` (string), `R` (real),
//!   `I` (integer), `L` (logical `T`/`F`), `n` columns each; default `species:S:1:pos:R:3`;
//! * `pbc="T T F"` — periodicity (default `T T T` with a `Lattice`, `F F F` without);
//! * `energy=E` (eV), `stress="…"` (eV/Å³, ASE's sign; 9 values = full 3×3 matrix as ASE
//!   writes it, or 6 in Voigt order `xx yy zz yz xz xy`); other keys are kept verbatim.
//!
//! Per-atom columns understood: `species` (element symbol) or `Z` (atomic number), `pos`
//! (Å), `forces` (eV/Å), `momenta` (ASE units: amu·Å per ASE time unit, i.e. √(amu·eV)).
//! Other columns are kept as text and written back. Values: a bare word, `"double-quoted"`
//! (backslash escapes), or `{curly}`; a bare key means `T`.
//!
//! Every error names the source, the line (1-based) and the field.

use crate::elements;
use crate::error::{ModelError, Result};
use crate::graph::Structure;
use std::fmt::Write as _;
use std::path::Path;

type V3 = [f64; 3];

/// One structure with what the file says about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub atoms: Structure,
    /// `energy=` (eV).
    pub energy: Option<f64>,
    /// `stress=` (eV/Å³, ASE's sign), Voigt `xx yy zz yz xz xy`.
    pub stress: Option<[f64; 6]>,
    /// `forces:R:3` (eV/Å).
    pub forces: Option<Vec<V3>>,
    /// `momenta:R:3` in ASE units (√(amu·eV)); velocity in Å/fs = momenta / mass /
    /// [`ASE_TIME_FS`].
    pub momenta: Option<Vec<V3>>,
    /// Other comment-line pairs, verbatim (unquoted) values, in file order.
    pub info: Vec<(String, String)>,
    /// Other per-atom columns: name, type letter, column count, text per atom
    /// (`ncols` entries per atom, atom-major).
    pub extra: Vec<ExtraColumn>,
}

/// A per-atom property this module does not interpret, kept for writing back.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraColumn {
    pub name: String,
    pub kind: char,
    pub ncols: usize,
    pub values: Vec<String>,
}

pub use crate::units::ASE_TIME_FS;

impl Frame {
    /// A frame with only the structure.
    pub fn new(atoms: Structure) -> Self {
        Frame {
            atoms,
            energy: None,
            stress: None,
            forces: None,
            momenta: None,
            info: Vec::new(),
            extra: Vec::new(),
        }
    }
}

fn err(src: &str, line: usize, field: &str, why: impl Into<String>) -> ModelError {
    ModelError::input(format!("{src} line {line}, {field}"), why)
}

/// Splits a comment line into `(key, value)` pairs.
fn parse_comment(s: &str, src: &str, line: usize) -> Result<Vec<(String, String)>> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let read_word = |i: &mut usize| -> Result<String> {
        let mut w = String::new();
        match c.get(*i) {
            Some('"') => {
                *i += 1;
                loop {
                    match c.get(*i) {
                        None => {
                            return Err(err(src, line, "comment", "unterminated \"quoted\" value"))
                        }
                        Some('"') => {
                            *i += 1;
                            break;
                        }
                        Some('\\') => {
                            let n = c.get(*i + 1).ok_or_else(|| {
                                err(src, line, "comment", "backslash at the end of the line")
                            })?;
                            w.push(match n {
                                'n' => '\n',
                                't' => '\t',
                                other => *other,
                            });
                            *i += 2;
                        }
                        Some(ch) => {
                            w.push(*ch);
                            *i += 1;
                        }
                    }
                }
            }
            Some('{') => {
                *i += 1;
                loop {
                    match c.get(*i) {
                        None => {
                            return Err(err(src, line, "comment", "unterminated {curly} value"))
                        }
                        Some('}') => {
                            *i += 1;
                            break;
                        }
                        Some(ch) => {
                            w.push(*ch);
                            *i += 1;
                        }
                    }
                }
            }
            _ => {
                while let Some(&ch) = c.get(*i) {
                    if ch.is_whitespace() || ch == '=' {
                        break;
                    }
                    w.push(ch);
                    *i += 1;
                }
            }
        }
        Ok(w)
    };
    loop {
        while c.get(i).is_some_and(|ch| ch.is_whitespace()) {
            i += 1;
        }
        if i >= c.len() {
            break;
        }
        if c[i] == '=' {
            return Err(err(src, line, "comment", "'=' without a key"));
        }
        let key = read_word(&mut i)?;
        let mut j = i;
        while c.get(j).is_some_and(|ch| ch.is_whitespace()) {
            j += 1;
        }
        if c.get(j) == Some(&'=') {
            i = j + 1;
            while c.get(i).is_some_and(|ch| ch.is_whitespace()) {
                i += 1;
            }
            if i >= c.len() {
                return Err(err(src, line, &key, "'=' with no value"));
            }
            let v = read_word(&mut i)?;
            out.push((key, v));
        } else {
            out.push((key, "T".to_string()));
        }
    }
    Ok(out)
}

fn parse_f64(tok: &str, src: &str, line: usize, field: &str) -> Result<f64> {
    // Fortran-style exponents (1.0D+00) appear in some writers' files.
    let v: f64 = tok
        .replace(['D', 'd'], "e")
        .parse()
        .map_err(|_| err(src, line, field, format!("expected a number, got {tok:?}")))?;
    if !v.is_finite() {
        return Err(err(src, line, field, format!("non-finite value {tok:?}")));
    }
    Ok(v)
}

fn parse_bool(tok: &str, src: &str, line: usize, field: &str) -> Result<bool> {
    match tok.to_ascii_lowercase().as_str() {
        "t" | "true" | "1" => Ok(true),
        "f" | "false" | "0" => Ok(false),
        _ => Err(err(
            src,
            line,
            field,
            format!("expected T or F, got {tok:?}"),
        )),
    }
}

fn floats(v: &str, n: &[usize], src: &str, line: usize, field: &str) -> Result<Vec<f64>> {
    let toks: Vec<&str> = v.split_whitespace().collect();
    if !n.contains(&toks.len()) {
        let want: Vec<String> = n.iter().map(|x| x.to_string()).collect();
        return Err(err(
            src,
            line,
            field,
            format!("expected {} numbers, got {}", want.join(" or "), toks.len()),
        ));
    }
    toks.iter()
        .enumerate()
        .map(|(k, t)| parse_f64(t, src, line, &format!("{field}[{k}]")))
        .collect()
}

#[derive(Clone, Debug)]
struct Prop {
    name: String,
    kind: char,
    ncols: usize,
}

fn parse_properties(v: &str, src: &str, line: usize) -> Result<Vec<Prop>> {
    let parts: Vec<&str> = v.split(':').collect();
    if !parts.len().is_multiple_of(3) || v.is_empty() {
        return Err(err(
            src,
            line,
            "Properties",
            format!("expected name:type:count triples, got {v:?}"),
        ));
    }
    let mut props: Vec<Prop> = Vec::new();
    for t in parts.chunks(3) {
        let name = t[0].to_string();
        let kind = match t[1] {
            "S" | "R" | "I" | "L" => t[1].chars().next().unwrap_or('S'),
            other => {
                return Err(err(
                    src,
                    line,
                    "Properties",
                    format!("{name}: type {other:?} is not one of S, R, I, L"),
                ))
            }
        };
        let ncols: usize = t[2].parse().ok().filter(|&n| n > 0).ok_or_else(|| {
            err(
                src,
                line,
                "Properties",
                format!("{name}: column count {:?} is not a positive integer", t[2]),
            )
        })?;
        if props.iter().any(|p| p.name == name) {
            return Err(err(
                src,
                line,
                "Properties",
                format!("{name} appears twice"),
            ));
        }
        let want = match name.as_str() {
            "species" => Some(('S', 1)),
            "Z" => Some(('I', 1)),
            "pos" | "forces" | "momenta" => Some(('R', 3)),
            _ => None,
        };
        if let Some((k, n)) = want {
            if (kind, ncols) != (k, n) {
                return Err(err(
                    src,
                    line,
                    "Properties",
                    format!("{name} must be {name}:{k}:{n}, got {name}:{kind}:{ncols}"),
                ));
            }
        }
        props.push(Prop { name, kind, ncols });
    }
    if !props.iter().any(|p| p.name == "pos") {
        return Err(err(src, line, "Properties", "no pos:R:3 column"));
    }
    if !props.iter().any(|p| p.name == "species" || p.name == "Z") {
        return Err(err(
            src,
            line,
            "Properties",
            "no species:S:1 (or Z:I:1) column",
        ));
    }
    Ok(props)
}

/// Reads every frame of an extended XYZ text. `src` names the input in errors.
pub fn parse(text: &str, src: &str) -> Result<Vec<Frame>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut frames = Vec::new();
    let mut l = 0;
    loop {
        // Blank lines between/after frames are tolerated.
        while l < lines.len() && lines[l].trim().is_empty() {
            l += 1;
        }
        if l >= lines.len() {
            break;
        }
        let count_line = l + 1;
        let n: usize = lines[l].trim().parse().map_err(|_| {
            err(
                src,
                count_line,
                "atom count",
                format!(
                    "expected a non-negative integer, got {:?}{}",
                    lines[l].trim(),
                    if frames.is_empty() {
                        String::new()
                    } else {
                        " (more atom lines than the previous frame's count?)".into()
                    }
                ),
            )
        })?;
        l += 1;
        if l >= lines.len() {
            return Err(err(
                src,
                count_line + 1,
                "comment",
                "missing comment line (end of file)",
            ));
        }
        let cline = l + 1;
        let pairs = parse_comment(lines[l], src, cline)?;
        l += 1;
        let mut cell = [[0.0; 3]; 3];
        let mut have_lattice = false;
        let mut pbc: Option<[bool; 3]> = None;
        let mut props: Option<Vec<Prop>> = None;
        let mut energy = None;
        let mut stress = None;
        let mut info = Vec::new();
        for (k, v) in pairs {
            match k.to_ascii_lowercase().as_str() {
                "lattice" => {
                    let f = floats(&v, &[9], src, cline, "Lattice")?;
                    for a in 0..3 {
                        cell[a] = [f[3 * a], f[3 * a + 1], f[3 * a + 2]];
                    }
                    have_lattice = true;
                }
                "properties" => props = Some(parse_properties(&v, src, cline)?),
                "pbc" => {
                    let toks: Vec<&str> = v.split_whitespace().collect();
                    if toks.len() != 3 {
                        return Err(err(
                            src,
                            cline,
                            "pbc",
                            format!("expected 3 of T/F, got {v:?}"),
                        ));
                    }
                    let mut p = [false; 3];
                    for d in 0..3 {
                        p[d] = parse_bool(toks[d], src, cline, "pbc")?;
                    }
                    pbc = Some(p);
                }
                "energy" => energy = Some(parse_f64(v.trim(), src, cline, "energy")?),
                "stress" => {
                    let f = floats(&v, &[6, 9], src, cline, "stress")?;
                    stress = Some(if f.len() == 6 {
                        [f[0], f[1], f[2], f[3], f[4], f[5]]
                    } else {
                        // full matrix, row-major: Voigt from the symmetric part
                        [
                            f[0],
                            f[4],
                            f[8],
                            0.5 * (f[5] + f[7]),
                            0.5 * (f[2] + f[6]),
                            0.5 * (f[1] + f[3]),
                        ]
                    });
                }
                _ => info.push((k, v)),
            }
        }
        let props = match props {
            Some(p) => p,
            None => parse_properties("species:S:1:pos:R:3", src, cline)?,
        };
        let pbc = pbc.unwrap_or([have_lattice; 3]);
        if pbc.iter().any(|&p| p) && !have_lattice {
            return Err(err(
                src,
                cline,
                "pbc",
                "periodic directions without a Lattice",
            ));
        }
        let ncols_total: usize = props.iter().map(|p| p.ncols).sum();
        let mut numbers = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        let mut forces = props
            .iter()
            .any(|p| p.name == "forces")
            .then(|| Vec::with_capacity(n));
        let mut momenta = props
            .iter()
            .any(|p| p.name == "momenta")
            .then(|| Vec::with_capacity(n));
        let mut extra: Vec<ExtraColumn> = props
            .iter()
            .filter(|p| {
                !matches!(
                    p.name.as_str(),
                    "species" | "Z" | "pos" | "forces" | "momenta"
                )
            })
            .map(|p| ExtraColumn {
                name: p.name.clone(),
                kind: p.kind,
                ncols: p.ncols,
                values: Vec::new(),
            })
            .collect();
        for a in 0..n {
            let ln = l + 1;
            let Some(text) = lines.get(l) else {
                return Err(err(
                    src,
                    ln,
                    "atoms",
                    format!("end of file after {a} of {n} atom lines (atom count {n} on line {count_line})"),
                ));
            };
            let toks: Vec<&str> = text.split_whitespace().collect();
            if toks.len() != ncols_total {
                return Err(err(
                    src,
                    ln,
                    "atoms",
                    format!(
                        "expected {ncols_total} columns (Properties), got {} (atom {} of {n}; atom count on line {count_line})",
                        toks.len(),
                        a + 1
                    ),
                ));
            }
            let mut c = 0;
            let mut z_here = None;
            let mut sym_z = None;
            for p in &props {
                let cols = &toks[c..c + p.ncols];
                c += p.ncols;
                let v3 = |name: &str| -> Result<V3> {
                    let mut v = [0.0; 3];
                    for d in 0..3 {
                        v[d] = parse_f64(cols[d], src, ln, &format!("{name}[{d}]"))?;
                    }
                    Ok(v)
                };
                match p.name.as_str() {
                    "species" => {
                        sym_z = Some(elements::atomic_number(cols[0]).ok_or_else(|| {
                            err(
                                src,
                                ln,
                                "species",
                                format!("unknown element symbol {:?}", cols[0]),
                            )
                        })?)
                    }
                    "Z" => {
                        let z: u32 = cols[0]
                            .parse()
                            .ok()
                            .filter(|z| (1..=elements::MAX_Z).contains(z))
                            .ok_or_else(|| {
                                err(
                                    src,
                                    ln,
                                    "Z",
                                    format!("expected an atomic number 1..=118, got {:?}", cols[0]),
                                )
                            })?;
                        z_here = Some(z);
                    }
                    "pos" => positions.push(v3("pos")?),
                    "forces" => {
                        let v = v3("forces")?;
                        if let Some(f) = forces.as_mut() {
                            f.push(v);
                        }
                    }
                    "momenta" => {
                        let v = v3("momenta")?;
                        if let Some(m) = momenta.as_mut() {
                            m.push(v);
                        }
                    }
                    _ => {
                        for (k, t) in cols.iter().enumerate() {
                            let field = format!("{}[{k}]", p.name);
                            match p.kind {
                                'R' => {
                                    parse_f64(t, src, ln, &field)?;
                                }
                                'I' => {
                                    t.parse::<i64>().map_err(|_| {
                                        err(
                                            src,
                                            ln,
                                            &field,
                                            format!("expected an integer, got {t:?}"),
                                        )
                                    })?;
                                }
                                'L' => {
                                    parse_bool(t, src, ln, &field)?;
                                }
                                _ => {}
                            }
                        }
                        if let Some(e) = extra.iter_mut().find(|e| e.name == p.name) {
                            e.values.extend(cols.iter().map(|s| s.to_string()));
                        }
                    }
                }
            }
            let z = match (sym_z, z_here) {
                (Some(s), Some(z)) if s != z => {
                    return Err(err(
                        src,
                        ln,
                        "Z",
                        format!("atomic number {z} disagrees with species (Z = {s})"),
                    ))
                }
                (Some(s), _) => s,
                (None, Some(z)) => z,
                (None, None) => {
                    return Err(err(src, ln, "species", "no species or Z column"));
                }
            };
            numbers.push(z);
            l += 1;
        }
        frames.push(Frame {
            atoms: Structure {
                positions,
                numbers,
                cell,
                pbc,
            },
            energy,
            stress,
            forces,
            momenta,
            info,
            extra,
        });
    }
    Ok(frames)
}

/// Reads every frame of an extended XYZ file.
pub fn read(path: impl AsRef<Path>) -> Result<Vec<Frame>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// A float as written: the shortest text that reads back to the same f64.
fn num(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 || (1e-4..1e16).contains(&a) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

fn quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '=' | '{' | '}' | '\\'))
    {
        return v.to_string();
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                s.push('\\');
                s.push(c);
            }
            '\n' => s.push_str("\\n"),
            _ => s.push(c),
        }
    }
    s.push('"');
    s
}

/// Writes one frame (appends to `out`). Layout as ASE writes it: `Lattice` (when any
/// direction is periodic or the cell is non-zero), `Properties`, `energy`, `stress` (full
/// 3×3, row-major), other info, `pbc` last; columns species, pos, forces, momenta, extra.
/// Numbers are written with full f64 precision (the text reads back bit-exactly).
pub fn write_frame(out: &mut String, f: &Frame) -> Result<()> {
    let s = &f.atoms;
    s.validate()?;
    let n = s.positions.len();
    let check = |name: &str, v: &Option<Vec<V3>>| -> Result<()> {
        match v {
            Some(v) if v.len() != n => Err(ModelError::input(
                name,
                format!("{} rows for {n} atoms", v.len()),
            )),
            Some(v) if v.iter().flatten().any(|x| !x.is_finite()) => {
                Err(ModelError::input(name, "non-finite value"))
            }
            _ => Ok(()),
        }
    };
    check("forces", &f.forces)?;
    check("momenta", &f.momenta)?;
    for e in &f.extra {
        if e.values.len() != n * e.ncols {
            return Err(ModelError::input(
                format!("extra column {}", e.name),
                format!(
                    "{} values for {n} atoms × {} columns",
                    e.values.len(),
                    e.ncols
                ),
            ));
        }
    }
    let mut syms = Vec::with_capacity(n);
    for (a, &z) in s.numbers.iter().enumerate() {
        syms.push(elements::symbol(z).ok_or_else(|| {
            ModelError::input(format!("numbers[{a}]"), format!("no element with Z = {z}"))
        })?);
    }
    let _ = writeln!(out, "{n}");
    let mut head = Vec::new();
    let has_cell = s.cell.iter().flatten().any(|&x| x != 0.0);
    if has_cell || s.pbc.iter().any(|&p| p) {
        let c: Vec<String> = s.cell.iter().flatten().map(|&x| num(x)).collect();
        head.push(format!("Lattice=\"{}\"", c.join(" ")));
    }
    let mut props = String::from("species:S:1:pos:R:3");
    if f.forces.is_some() {
        props.push_str(":forces:R:3");
    }
    if f.momenta.is_some() {
        props.push_str(":momenta:R:3");
    }
    for e in &f.extra {
        let _ = write!(props, ":{}:{}:{}", e.name, e.kind, e.ncols);
    }
    head.push(format!("Properties={props}"));
    if let Some(e) = f.energy {
        if !e.is_finite() {
            return Err(ModelError::input("energy", "non-finite value"));
        }
        head.push(format!("energy={}", num(e)));
    }
    if let Some(v) = f.stress {
        if v.iter().any(|x| !x.is_finite()) {
            return Err(ModelError::input("stress", "non-finite value"));
        }
        let m = [v[0], v[5], v[4], v[5], v[1], v[3], v[4], v[3], v[2]];
        let m: Vec<String> = m.iter().map(|&x| num(x)).collect();
        head.push(format!("stress=\"{}\"", m.join(" ")));
    }
    for (k, v) in &f.info {
        let lk = k.to_ascii_lowercase();
        if matches!(
            lk.as_str(),
            "lattice" | "properties" | "pbc" | "energy" | "stress"
        ) {
            continue;
        }
        head.push(format!("{}={}", quote(k), quote(v)));
    }
    let tf = |b: bool| if b { "T" } else { "F" };
    head.push(format!(
        "pbc=\"{} {} {}\"",
        tf(s.pbc[0]),
        tf(s.pbc[1]),
        tf(s.pbc[2])
    ));
    let _ = writeln!(out, "{}", head.join(" "));
    for a in 0..n {
        let _ = write!(out, "{:<2}", syms[a]);
        let mut cols = |v: &V3| {
            for x in v {
                let _ = write!(out, " {:>24}", num(*x));
            }
        };
        cols(&s.positions[a]);
        if let Some(fr) = &f.forces {
            cols(&fr[a]);
        }
        if let Some(m) = &f.momenta {
            cols(&m[a]);
        }
        for e in &f.extra {
            for t in &e.values[a * e.ncols..][..e.ncols] {
                let _ = write!(out, " {t}");
            }
        }
        out.push('\n');
    }
    Ok(())
}

/// The text of a multi-frame file.
pub fn to_string(frames: &[Frame]) -> Result<String> {
    let mut s = String::new();
    for f in frames {
        write_frame(&mut s, f)?;
    }
    Ok(s)
}

/// Writes frames to a file (replacing it).
pub fn write(path: impl AsRef<Path>, frames: &[Frame]) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, to_string(frames)?).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })
}
