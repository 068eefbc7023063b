//! Extended XYZ: files in ASE's layout (written by hand from its documented format), round
//! trips, and every error naming its line and field.

use equikern_model::extxyz::{self, ExtraColumn, Frame};
use equikern_model::Structure;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// As ASE writes a periodic structure with a single-point calculator attached.
const ASE_SI: &str = r#"2
Lattice="0.0 2.715 2.715 2.715 0.0 2.715 2.715 2.715 0.0" Properties=species:S:1:pos:R:3:forces:R:3 energy=-10.79337 stress="-0.01 0.001 0.002 0.001 -0.02 0.003 0.002 0.003 -0.03" free_energy=-10.79337 pbc="T T T"
Si       0.00000000       0.00000000       0.00000000       0.01000000      -0.02000000       0.03000000
Si       1.35750000       1.35750000       1.35750000      -0.01000000       0.02000000      -0.03000000
"#;

/// Two frames: a molecule (no Lattice, pbc F F F) and a slab (pbc T T F), extra columns
/// and comment keys of every quoting style.
const ASE_TWO: &str = "3
Properties=species:S:1:pos:R:3 config_type=\"water molecule\" note={a b c} is_ok pbc=\"F F F\"
O        0.00000000       0.00000000       0.11926200
H        0.00000000       0.76323900      -0.47704700
H        0.00000000      -0.76323900      -0.47704700
2
Lattice=\"3.0 0.0 0.0 0.0 3.0 0.0 0.0 0.0 20.0\" Properties=species:S:1:pos:R:3:tags:I:1:fixed:L:1:charge:R:1 energy=-3.5 pbc=\"T T F\"
Cu       0.00000000       0.00000000      10.00000000        0  T      0.10000000
Cu       1.50000000       1.50000000      11.80000000        1  F     -0.10000000

";

#[test]
fn reads_ase_periodic_with_calculator_results() {
    let f = extxyz::parse(ASE_SI, "si.xyz").unwrap();
    assert_eq!(f.len(), 1);
    let f = &f[0];
    assert_eq!(f.atoms.numbers, vec![14, 14]);
    assert_eq!(f.atoms.pbc, [true; 3]);
    assert_eq!(f.atoms.cell[1], [2.715, 0.0, 2.715]);
    assert_eq!(f.atoms.positions[1], [1.3575, 1.3575, 1.3575]);
    assert_eq!(f.energy, Some(-10.79337));
    // full matrix → Voigt xx yy zz yz xz xy
    assert_eq!(f.stress, Some([-0.01, -0.02, -0.03, 0.003, 0.002, 0.001]));
    assert_eq!(f.forces.as_ref().unwrap()[0], [0.01, -0.02, 0.03]);
    assert_eq!(
        f.info,
        vec![("free_energy".to_string(), "-10.79337".to_string())]
    );
}

#[test]
fn reads_ase_multi_frame_open_and_slab() {
    let f = extxyz::parse(ASE_TWO, "two.xyz").unwrap();
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].atoms.numbers, vec![8, 1, 1]);
    assert_eq!(f[0].atoms.pbc, [false; 3]);
    assert_eq!(f[0].atoms.cell, [[0.0; 3]; 3]);
    assert_eq!(f[0].energy, None);
    assert_eq!(
        f[0].info,
        vec![
            ("config_type".to_string(), "water molecule".to_string()),
            ("note".to_string(), "a b c".to_string()),
            ("is_ok".to_string(), "T".to_string()),
        ]
    );
    assert_eq!(f[1].atoms.pbc, [true, true, false]);
    assert_eq!(f[1].atoms.cell[2], [0.0, 0.0, 20.0]);
    assert_eq!(f[1].energy, Some(-3.5));
    assert_eq!(f[1].extra.len(), 3);
    assert_eq!(
        f[1].extra[0],
        ExtraColumn {
            name: "tags".into(),
            kind: 'I',
            ncols: 1,
            values: vec!["0".into(), "1".into()]
        }
    );
    // written back and read again: the same frames
    let text = extxyz::to_string(&f).unwrap();
    assert_eq!(extxyz::parse(&text, "again").unwrap(), f);
}

#[test]
fn defaults_without_properties_and_pbc() {
    // plain XYZ: species + pos, no Lattice → open
    let f = extxyz::parse("1\nplain comment\nAr 0 0 0\n", "p.xyz");
    // "plain comment" is two bare keys → info T
    let f = f.unwrap();
    assert_eq!(f[0].atoms.numbers, vec![18]);
    assert_eq!(f[0].atoms.pbc, [false; 3]);
    // Lattice without pbc → periodic; Z column instead of species
    let f = extxyz::parse(
        "1\nLattice=\"2 0 0 0 2 0 0 0 2\" Properties=Z:I:1:pos:R:3\n29 0.5 0.5 0.5\n",
        "z.xyz",
    )
    .unwrap();
    assert_eq!(f[0].atoms.numbers, vec![29]);
    assert_eq!(f[0].atoms.pbc, [true; 3]);
}

fn random_frame(rng: &mut ChaCha8Rng, n: usize, pbc: [bool; 3]) -> Frame {
    let mut u = |s: f64| (rng.random::<f64>() * 2.0 - 1.0) * s;
    let any = pbc.iter().any(|&p| p);
    let cell = if any {
        [
            [8.0 + u(1.0), u(1.0), u(1.0)],
            [u(1.0), 8.0 + u(1.0), u(1.0)],
            [u(1.0), u(1.0), 8.0 + u(1.0)],
        ]
    } else {
        [[0.0; 3]; 3]
    };
    let positions: Vec<[f64; 3]> = (0..n).map(|_| [u(5.0), u(5.0), u(1e-7)]).collect();
    let numbers: Vec<u32> = (0..n).map(|a| 1 + (a as u32 * 37) % 118).collect();
    let forces: Vec<[f64; 3]> = (0..n).map(|_| [u(1e3), u(1e-9), u(1.0)]).collect();
    let momenta: Vec<[f64; 3]> = (0..n).map(|_| [u(1.0), u(1.0), u(1.0)]).collect();
    Frame {
        atoms: Structure {
            positions,
            numbers,
            cell,
            pbc,
        },
        energy: Some(u(1e4)),
        stress: any.then(|| [u(1.0), u(1.0), u(1.0), u(1e-6), u(1.0), u(1.0)]),
        forces: Some(forces),
        momenta: Some(momenta),
        info: vec![("comment".into(), "a \"quoted\" = {value}".into())],
        extra: vec![],
    }
}

#[test]
fn round_trip_is_bit_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let frames = vec![
        random_frame(&mut rng, 5, [true; 3]),
        random_frame(&mut rng, 1, [false; 3]),
        random_frame(&mut rng, 7, [true, true, false]),
        random_frame(&mut rng, 0, [false; 3]),
    ];
    let text = extxyz::to_string(&frames).unwrap();
    let back = extxyz::parse(&text, "rt").unwrap();
    assert_eq!(back, frames, "{text}");
    // and through a file
    let dir = std::env::temp_dir().join(format!("equikern-extxyz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("rt.extxyz");
    extxyz::write(&p, &frames).unwrap();
    assert_eq!(extxyz::read(&p).unwrap(), frames);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn writes_ase_layout() {
    let f = &extxyz::parse(ASE_SI, "si.xyz").unwrap()[0];
    let text = extxyz::to_string(std::slice::from_ref(f)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "2");
    assert!(
        lines[1].starts_with("Lattice=\"0 2.715 2.715 2.715 0 2.715 2.715 2.715 0\" Properties=species:S:1:pos:R:3:forces:R:3 energy=-10.79337 stress=\""),
        "{}",
        lines[1]
    );
    assert!(lines[1].ends_with(" pbc=\"T T T\""), "{}", lines[1]);
    assert!(lines[2].starts_with("Si "));
    let toks: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(toks.len(), 7);
    assert_eq!(toks[1], "1.3575");
}

fn err_of(text: &str) -> String {
    extxyz::parse(text, "bad.xyz").unwrap_err().to_string()
}

#[test]
fn errors_name_line_and_field() {
    let cases: &[(&str, &[&str])] = &[
        ("x\n\n", &["line 1", "atom count", "\"x\""]),
        (
            "2\nProperties=species:S:1:pos:R:3\nH 0 0 0\n",
            &["line 4", "end of file after 1 of 2"],
        ),
        ("1\n\nH 0 0\n", &["line 3", "expected 4 columns", "got 3"]),
        (
            "1\n\nXx 0 0 0\n",
            &["line 3", "species", "unknown element symbol \"Xx\""],
        ),
        ("1\n\nH 0 nan 0\n", &["line 3", "pos[1]", "non-finite"]),
        ("1\n\nH 0 inf 0\n", &["line 3", "pos[1]", "non-finite"]),
        (
            "1\n\nH 0 1.2.3 0\n",
            &["line 3", "pos[1]", "expected a number"],
        ),
        (
            "1\nLattice=\"1 0 0 0 1 0 0 0\"\nH 0 0 0\n",
            &["line 2", "Lattice", "expected 9 numbers, got 8"],
        ),
        (
            "1\nLattice=\"1 0 0 0 1 0 0 0 1\" pbc=\"T T\"\nH 0 0 0\n",
            &["line 2", "pbc"],
        ),
        ("1\npbc=\"T F X\"\nH 0 0 0\n", &["line 2", "pbc", "T or F"]),
        (
            "1\npbc=\"T T T\"\nH 0 0 0\n",
            &["line 2", "pbc", "without a Lattice"],
        ),
        (
            "1\nProperties=species:S:1:pos:X:3\nH 0 0 0\n",
            &["line 2", "Properties", "type \"X\""],
        ),
        (
            "1\nProperties=species:S:1:pos:R:2\nH 0 0\n",
            &["line 2", "Properties", "pos:R:3"],
        ),
        (
            "1\nProperties=species:S:1\nH\n",
            &["line 2", "Properties", "no pos"],
        ),
        (
            "1\nProperties=species:S:1:pos:R:3:forces:R:3\nH 0 0 0 1 2 x\n",
            &["line 3", "forces[2]"],
        ),
        ("1\nenergy=abc\nH 0 0 0\n", &["line 2", "energy"]),
        (
            "1\nenergy=inf\nH 0 0 0\n",
            &["line 2", "energy", "non-finite"],
        ),
        (
            "1\nstress=\"1 2 3\"\nH 0 0 0\n",
            &["line 2", "stress", "6 or 9"],
        ),
        ("1\nkey=\"open\nH 0 0 0\n", &["line 2", "unterminated"]),
        (
            "1\nProperties=Z:I:1:pos:R:3\n0 0 0 0\n",
            &["line 3", "Z", "1..=118"],
        ),
        (
            "1\n\nH 0 0 0\nH 0 0 0\n",
            &["line 4", "atom count", "more atom lines"],
        ),
        ("1\n", &["line 2", "comment", "end of file"]),
        (
            "1\nProperties=species:S:1:pos:R:3:tags:I:1\nH 0 0 0 1.5\n",
            &["line 3", "tags[0]", "integer"],
        ),
    ];
    for (text, want) in cases {
        let e = err_of(text);
        assert!(e.contains("bad.xyz"), "{text:?}: {e}");
        for w in *want {
            assert!(e.contains(w), "{text:?}: {e:?} lacks {w:?}");
        }
    }
}

#[test]
fn write_rejects_bad_frames() {
    let mut f = extxyz::parse(ASE_SI, "si").unwrap().remove(0);
    f.forces.as_mut().unwrap().pop();
    assert!(extxyz::to_string(&[f.clone()])
        .unwrap_err()
        .to_string()
        .contains("forces"));
    let mut g = extxyz::parse(ASE_SI, "si").unwrap().remove(0);
    g.atoms.numbers[0] = 200;
    assert!(extxyz::to_string(&[g])
        .unwrap_err()
        .to_string()
        .contains("numbers[0]"));
    let mut h = extxyz::parse(ASE_SI, "si").unwrap().remove(0);
    h.atoms.positions[1][2] = f64::NAN;
    assert!(extxyz::to_string(&[h])
        .unwrap_err()
        .to_string()
        .contains("positions"));
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let base = ASE_TWO.as_bytes().to_vec();
    for _ in 0..2000 {
        let mut b = base.clone();
        for _ in 0..rng.random_range(1..6) {
            let i = rng.random_range(0..b.len());
            match rng.random_range(0..3) {
                0 => b[i] = rng.random(),
                1 => {
                    b.remove(i);
                }
                _ => b.truncate(i),
            }
            if b.is_empty() {
                break;
            }
        }
        let text = String::from_utf8_lossy(&b);
        let _ = extxyz::parse(&text, "fuzz");
    }
}

/// Files written by ASE itself (`tests/data/extxyz/gen_ase_extxyz.py`, ASE 3.29): every value
/// equal to what ASE reads back (both parse the same decimal text, so exactly).
#[test]
fn ase_written_fixtures_read_as_ase_reads_them() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/extxyz");
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("ase_extxyz_expected.json")).unwrap(),
    )
    .unwrap();
    let v3 = |v: &serde_json::Value| -> [f64; 3] { [0, 1, 2].map(|i| v[i].as_f64().unwrap()) };
    let rows =
        |v: &serde_json::Value| -> Vec<[f64; 3]> { v.as_array().unwrap().iter().map(v3).collect() };
    let mut n_frames = 0;
    for (name, frames) in want["files"].as_object().unwrap() {
        let got = extxyz::read(dir.join(name)).unwrap();
        let frames = frames.as_array().unwrap();
        assert_eq!(got.len(), frames.len(), "{name}");
        for (k, (g, w)) in got.iter().zip(frames).enumerate() {
            let at = format!("{name} frame {k}");
            let numbers: Vec<u32> = w["numbers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|z| z.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(g.atoms.numbers, numbers, "{at}");
            assert_eq!(g.atoms.positions, rows(&w["positions"]), "{at}");
            let cell = rows(&w["cell"]);
            assert_eq!(g.atoms.cell.to_vec(), cell, "{at}");
            let pbc: Vec<bool> = w["pbc"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_bool().unwrap())
                .collect();
            assert_eq!(g.atoms.pbc.to_vec(), pbc, "{at}");
            assert_eq!(
                g.energy,
                w.get("energy").map(|e| e.as_f64().unwrap()),
                "{at}"
            );
            assert_eq!(g.forces, w.get("forces").map(rows), "{at}");
            assert_eq!(g.momenta, w.get("momenta").map(rows), "{at}");
            let stress = w.get("stress").map(|s| {
                let s: Vec<f64> = s
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                [s[0], s[1], s[2], s[3], s[4], s[5]]
            });
            assert_eq!(g.stress, stress, "{at}");
            n_frames += 1;
        }
    }
    assert_eq!(n_frames, 4);
    // the slab's extra columns (tags, initial_magmoms) are kept and written back
    let multi = extxyz::read(dir.join("ase_multi.extxyz")).unwrap();
    let names: Vec<&str> = multi[1].extra.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["tags", "initial_magmoms"]);
    assert_eq!(
        multi[0].info[0],
        ("config_type".to_string(), "water molecule".to_string())
    );
    let again = extxyz::parse(&extxyz::to_string(&multi).unwrap(), "again").unwrap();
    assert_eq!(again, multi);
}
