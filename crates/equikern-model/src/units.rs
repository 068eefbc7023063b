//! Units of the model API and MD: energy eV, length Å, time fs, mass amu (unified atomic
//! mass unit), temperature K. Constants from CODATA 2018 (e = 1.602176634e-19 C exactly,
//! u = 1.66053906660e-27 kg, k_B = 1.380649e-23 J/K exactly). ASE 3.29 still defaults to
//! CODATA 2014: its kinetic energy of the same Å/fs velocities is 7.8e-9 relative higher.

/// Acceleration of a force of 1 eV/Å on 1 amu, in Å/fs²: e/(1e-10 m · u) m/s² × 1e-20.
pub const ACCEL_EV_PER_ANG_AMU_TO_ANG_PER_FS2: f64 = 1.602176634e-19 / 1.66053906660e-27 * 1e-10;

/// Kinetic energy of 1 amu at 1 Å/fs is `1 / ACCEL…` eV (≈ 103.6427 eV); i.e.
/// `E_kin[eV] = ½ m v² / ACCEL_EV_PER_ANG_AMU_TO_ANG_PER_FS2`.
pub const AMU_ANG2_PER_FS2_TO_EV: f64 = 1.0 / ACCEL_EV_PER_ANG_AMU_TO_ANG_PER_FS2;

/// Boltzmann constant in eV/K.
pub const KB_EV_PER_K: f64 = 1.380649e-23 / 1.602176634e-19;

/// ASE's unit of time, `Å·√(amu/eV)`, in fs (ASE writes momenta in amu·Å per this unit).
pub const ASE_TIME_FS: f64 = 10.180505710759414;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_agree() {
        assert!((ACCEL_EV_PER_ANG_AMU_TO_ANG_PER_FS2 - 9.648533215665e-3).abs() < 1e-14);
        assert!((AMU_ANG2_PER_FS2_TO_EV - 103.642_697).abs() < 1e-5);
        // ASE time unit² = amu·Å²/eV = 1/ACCEL fs²
        let t2 = 1.0 / ACCEL_EV_PER_ANG_AMU_TO_ANG_PER_FS2;
        assert!((ASE_TIME_FS * ASE_TIME_FS - t2).abs() < 1e-10 * t2);
        assert!((KB_EV_PER_K - 8.617333262e-5).abs() < 1e-14);
    }
}
