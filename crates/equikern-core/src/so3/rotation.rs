//! Rotation matrices and e3nn's YXY Euler angles (conventions notes §2.5).
//!
//! Matrices are `[[f64; 3]; 3]`, row-major, acting on column vectors (x, y, z).

use std::f64::consts::PI;

/// A 3×3 matrix, row-major.
pub type Mat3 = [[f64; 3]; 3];

/// Active rotation by `theta` about x.
pub fn matrix_x(theta: f64) -> Mat3 {
    let (s, c) = theta.sin_cos();
    [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]]
}

/// Active rotation by `theta` about y.
pub fn matrix_y(theta: f64) -> Mat3 {
    let (s, c) = theta.sin_cos();
    [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
}

/// Active rotation by `theta` about z.
pub fn matrix_z(theta: f64) -> Mat3 {
    let (s, c) = theta.sin_cos();
    [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
}

/// `a · b`.
pub fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut r = [[0.0; 3]; 3];
    for (i, row) in r.iter_mut().enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    r
}

/// `aᵀ`.
pub fn transpose(a: &Mat3) -> Mat3 {
    let mut r = [[0.0; 3]; 3];
    for (i, row) in r.iter_mut().enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x = a[j][i];
        }
    }
    r
}

/// Determinant.
pub fn det(a: &Mat3) -> f64 {
    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
}

/// `R_y(α) · R_x(β) · R_y(γ)` (γ is applied first), as e3nn's `angles_to_matrix`.
pub fn angles_to_matrix(alpha: f64, beta: f64, gamma: f64) -> Mat3 {
    matmul(&matmul(&matrix_y(alpha), &matrix_x(beta)), &matrix_y(gamma))
}

/// Inverse of [`angles_to_matrix`] for a proper rotation (det = +1): `(α, β, γ)` with
/// `α, γ ∈ (-π, π]`, `β ∈ [0, π]`, as e3nn's `matrix_to_angles`.
///
/// β is taken as `atan2(√(v_x²+v_z²), v_y)` rather than e3nn's `acos(v_y)`: the same angle,
/// but without acos's loss of precision near β = 0 or π. An improper or non-orthogonal input
/// gives meaningless (finite) angles rather than a panic.
pub fn matrix_to_angles(r: &Mat3) -> (f64, f64, f64) {
    // v = R ŷ is where the polar axis goes: it fixes α and β.
    let (alpha, beta) = xyz_to_angles([r[0][1], r[1][1], r[2][1]]);
    // What remains after undoing R_y(α) R_x(β) is R_y(γ).
    let rest = matmul(&transpose(&matmul(&matrix_y(alpha), &matrix_x(beta))), r);
    let gamma = rest[0][2].atan2(rest[0][0]);
    (alpha, beta, gamma)
}

/// The unit vector `R_y(α) R_x(β) ŷ = (sin β sin α, cos β, sin β cos α)`.
pub fn angles_to_xyz(alpha: f64, beta: f64) -> [f64; 3] {
    let (sa, ca) = alpha.sin_cos();
    let (sb, cb) = beta.sin_cos();
    [sb * sa, cb, sb * ca]
}

/// Inverse of [`angles_to_xyz`] for any nonzero vector: `(α, β)` with `β ∈ [0, π]`.
pub fn xyz_to_angles(v: [f64; 3]) -> (f64, f64) {
    (v[0].atan2(v[2]), v[0].hypot(v[2]).atan2(v[1]))
}

/// `(α, β, γ)` of a Haar-uniform random rotation from three numbers uniform in [0, 1):
/// α, γ uniform in [0, 2π), cos β uniform in [-1, 1] (e3nn's `rand_angles`).
pub fn uniform_angles(u1: f64, u2: f64, u3: f64) -> (f64, f64, f64) {
    let cos_beta = (2.0 * u2 - 1.0).clamp(-1.0, 1.0);
    (2.0 * PI * u1, cos_beta.acos(), 2.0 * PI * u3)
}

/// A Haar-uniform random rotation matrix from three numbers uniform in [0, 1).
pub fn uniform_rotation(u1: f64, u2: f64, u3: f64) -> Mat3 {
    let (a, b, g) = uniform_angles(u1, u2, u3);
    angles_to_matrix(a, b, g)
}
