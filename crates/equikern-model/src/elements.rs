//! Chemical elements: symbols and masses for atomic numbers 1–118.
//!
//! Masses (amu) are the IUPAC standard atomic weights (conventional/abridged values where IUPAC
//! gives an interval); for elements without a standard atomic weight, the atomic mass of a
//! long-lived isotope (Tc-98, Pm-145, Po-209, …, Lr-262), and the mass number beyond Z = 103.
//! They are what MD uses for each species.

/// `(symbol, mass in amu)` for atomic numbers 1..=118, index `Z − 1`.
const TABLE: [(&str, f64); 118] = [
    ("H", 1.008),
    ("He", 4.002602),
    ("Li", 6.94),
    ("Be", 9.0121831),
    ("B", 10.81),
    ("C", 12.011),
    ("N", 14.007),
    ("O", 15.999),
    ("F", 18.998403163),
    ("Ne", 20.1797),
    ("Na", 22.98976928),
    ("Mg", 24.305),
    ("Al", 26.9815385),
    ("Si", 28.085),
    ("P", 30.973761998),
    ("S", 32.06),
    ("Cl", 35.45),
    ("Ar", 39.948),
    ("K", 39.0983),
    ("Ca", 40.078),
    ("Sc", 44.955908),
    ("Ti", 47.867),
    ("V", 50.9415),
    ("Cr", 51.9961),
    ("Mn", 54.938044),
    ("Fe", 55.845),
    ("Co", 58.933194),
    ("Ni", 58.6934),
    ("Cu", 63.546),
    ("Zn", 65.38),
    ("Ga", 69.723),
    ("Ge", 72.630),
    ("As", 74.921595),
    ("Se", 78.971),
    ("Br", 79.904),
    ("Kr", 83.798),
    ("Rb", 85.4678),
    ("Sr", 87.62),
    ("Y", 88.90584),
    ("Zr", 91.224),
    ("Nb", 92.90637),
    ("Mo", 95.95),
    ("Tc", 97.90721),
    ("Ru", 101.07),
    ("Rh", 102.90550),
    ("Pd", 106.42),
    ("Ag", 107.8682),
    ("Cd", 112.414),
    ("In", 114.818),
    ("Sn", 118.710),
    ("Sb", 121.760),
    ("Te", 127.60),
    ("I", 126.90447),
    ("Xe", 131.293),
    ("Cs", 132.90545196),
    ("Ba", 137.327),
    ("La", 138.90547),
    ("Ce", 140.116),
    ("Pr", 140.90766),
    ("Nd", 144.242),
    ("Pm", 144.91276),
    ("Sm", 150.36),
    ("Eu", 151.964),
    ("Gd", 157.25),
    ("Tb", 158.92535),
    ("Dy", 162.500),
    ("Ho", 164.93033),
    ("Er", 167.259),
    ("Tm", 168.93422),
    ("Yb", 173.045),
    ("Lu", 174.9668),
    ("Hf", 178.49),
    ("Ta", 180.94788),
    ("W", 183.84),
    ("Re", 186.207),
    ("Os", 190.23),
    ("Ir", 192.217),
    ("Pt", 195.084),
    ("Au", 196.966569),
    ("Hg", 200.592),
    ("Tl", 204.38),
    ("Pb", 207.2),
    ("Bi", 208.98040),
    ("Po", 208.98243),
    ("At", 209.98715),
    ("Rn", 222.01758),
    ("Fr", 223.01974),
    ("Ra", 226.02541),
    ("Ac", 227.02775),
    ("Th", 232.0377),
    ("Pa", 231.03588),
    ("U", 238.02891),
    ("Np", 237.04817),
    ("Pu", 244.06421),
    ("Am", 243.06138),
    ("Cm", 247.07035),
    ("Bk", 247.07031),
    ("Cf", 251.07959),
    ("Es", 252.083),
    ("Fm", 257.09511),
    ("Md", 258.09843),
    ("No", 259.101),
    ("Lr", 262.11),
    ("Rf", 267.0),
    ("Db", 268.0),
    ("Sg", 269.0),
    ("Bh", 270.0),
    ("Hs", 269.0),
    ("Mt", 278.0),
    ("Ds", 281.0),
    ("Rg", 282.0),
    ("Cn", 285.0),
    ("Nh", 286.0),
    ("Fl", 289.0),
    ("Mc", 290.0),
    ("Lv", 293.0),
    ("Ts", 294.0),
    ("Og", 294.0),
];

/// Largest atomic number known here.
pub const MAX_Z: u32 = TABLE.len() as u32;

/// The symbol of atomic number `z` (`None` outside 1..=118).
pub fn symbol(z: u32) -> Option<&'static str> {
    (z >= 1)
        .then(|| TABLE.get(z as usize - 1).map(|e| e.0))
        .flatten()
}

/// The mass (amu) of atomic number `z` (`None` outside 1..=118).
pub fn mass(z: u32) -> Option<f64> {
    (z >= 1)
        .then(|| TABLE.get(z as usize - 1).map(|e| e.1))
        .flatten()
}

/// The atomic number of a symbol. Exact symbols (`"Si"`) and case variants (`"SI"`, `"si"`)
/// are accepted; anything else is `None`.
pub fn atomic_number(sym: &str) -> Option<u32> {
    let mut chars = sym.chars();
    let first = chars.next()?.to_ascii_uppercase();
    let norm: String = std::iter::once(first)
        .chain(chars.map(|c| c.to_ascii_lowercase()))
        .collect();
    TABLE.iter().position(|e| e.0 == norm).map(|i| i as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_round_trip_and_masses_increase_roughly() {
        for z in 1..=MAX_Z {
            let s = symbol(z).unwrap();
            assert_eq!(atomic_number(s), Some(z));
            assert_eq!(atomic_number(&s.to_uppercase()), Some(z));
            let m = mass(z).unwrap();
            // mass ≈ 2–2.6 × Z beyond hydrogen: catches a shifted row
            assert!(m > 0.9 * z as f64 && m < 3.0 * z as f64 + 1.0, "{s} {m}");
        }
        assert_eq!(symbol(0), None);
        assert_eq!(symbol(119), None);
        assert_eq!(atomic_number("Xx"), None);
        assert_eq!(atomic_number(""), None);
        assert_eq!(mass(14), Some(28.085));
        assert_eq!(symbol(8), Some("O"));
    }
}
