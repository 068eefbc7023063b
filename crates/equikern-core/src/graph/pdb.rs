//! Minimal PDB reader: coordinates of ATOM/HETATM records (fixed columns 31–54).

use super::{GraphError, Structure};

/// Positions of every ATOM/HETATM record of the first model. A `CRYST1` record with 90°
/// angles makes the structure periodic; otherwise it is open.
pub fn read_pdb(text: &str) -> Result<Structure, GraphError> {
    let mut positions = vec![];
    let mut cell = None;
    for (n, line) in text.lines().enumerate() {
        let field = |a: usize, b: usize| -> Result<f64, GraphError> {
            line.get(a..b)
                .map(str::trim)
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or_else(|| GraphError::Pdb {
                    line: n + 1,
                    why: format!("columns {}-{} are not a number", a + 1, b),
                })
        };
        if line.starts_with("ENDMDL") {
            break;
        }
        if line.starts_with("ATOM") || line.starts_with("HETATM") {
            positions.push([field(30, 38)?, field(38, 46)?, field(46, 54)?]);
        } else if line.starts_with("CRYST1") {
            let (a, b, c) = (field(6, 15)?, field(15, 24)?, field(24, 33)?);
            let angles = [field(33, 40)?, field(40, 47)?, field(47, 54)?];
            // Only orthorhombic boxes are periodic here; 1×1×1 is the "no box" convention.
            if angles.iter().all(|&x| (x - 90.0).abs() < 1e-6) && a * b * c > 1.0 {
                cell = Some([a, b, c]);
            }
        }
    }
    Ok(Structure { positions, cell })
}
