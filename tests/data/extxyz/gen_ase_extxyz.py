#!/usr/bin/env python3
"""Extended XYZ fixtures written by ASE itself, and the values ASE reads back from them.

    python3 gen_ase_extxyz.py --out-dir tests/data/extxyz      # writes the fixtures + JSON
    python3 gen_ase_extxyz.py --check-ours traj.extxyz           # ASE reads a file equikern wrote

The fixtures exercise what ASE's writer emits: a periodic cell with calculator results
(energy, forces, stress), an open molecule (no Lattice), a slab (pbc T T F) with momenta and
extra per-atom arrays, info keys with spaces, a triclinic cell, multi-frame files. The JSON
holds, per file and frame, what ASE reads back (numbers, positions, cell, pbc, energy,
forces, Voigt stress, momenta), which `crates/equikern-model/tests/extxyz.rs` compares with
equikern's reader (exactly: both parse the same decimal text).
"""
import argparse
import json
import os
import sys

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule, fcc111
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write


def frames():
    rng = np.random.default_rng(7)
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    si.rattle(0.05, seed=1)
    si.calc = SinglePointCalculator(
        si,
        energy=-43.0123456789,
        forces=rng.normal(size=(len(si), 3)),
        stress=rng.normal(size=6) * 1e-2,
    )
    h2o = molecule("H2O")
    h2o.info["config_type"] = "water molecule"
    h2o.info["flag"] = True
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    slab.set_momenta(rng.normal(size=(len(slab), 3)) * 0.3)
    slab.set_initial_magnetic_moments(rng.normal(size=len(slab)))
    tri = Atoms(
        "MgAlO2",
        scaled_positions=rng.random((4, 3)),
        cell=[[3.1, 0.0, 0.0], [0.7, 2.9, 0.0], [-0.4, 0.6, 3.3]],
        pbc=True,
    )
    tri.calc = SinglePointCalculator(tri, energy=-20.5, forces=rng.normal(size=(4, 3)))
    return {"ase_si_calc.extxyz": [si], "ase_multi.extxyz": [h2o, slab, tri]}


def describe(a):
    d = {
        "numbers": a.numbers.tolist(),
        "positions": a.positions.tolist(),
        "cell": a.cell.array.tolist(),
        "pbc": a.pbc.tolist(),
    }
    if a.calc is not None:
        r = a.calc.results
        if "energy" in r:
            d["energy"] = float(r["energy"])
        if "forces" in r:
            d["forces"] = np.asarray(r["forces"]).tolist()
        if "stress" in r:
            d["stress"] = np.asarray(r["stress"]).reshape(-1).tolist()
    if a.has("momenta"):
        d["momenta"] = a.get_momenta().tolist()
    return d


def generate(out_dir):
    expected = {}
    for name, fs in frames().items():
        path = os.path.join(out_dir, name)
        write(path, fs, format="extxyz")
        back = read(path, index=":", format="extxyz")
        expected[name] = [describe(a) for a in back]
    import ase

    meta = {"ase": ase.__version__, "numpy": np.__version__}
    with open(os.path.join(out_dir, "ase_extxyz_expected.json"), "w") as f:
        json.dump({"meta": meta, "files": expected}, f, indent=1)


def check_ours(path):
    """ASE reads a trajectory equikern wrote; kinetic energy from momenta must match ours."""
    from ase import units

    bad = 0
    for k, a in enumerate(read(path, index=":", format="extxyz")):
        ke_ase = a.get_kinetic_energy() if a.has("momenta") else None
        ke_ours = a.info.get("kinetic_energy")
        e = a.get_potential_energy() if a.calc is not None else None
        ok = ke_ours is None or ke_ase is None or abs(ke_ase - ke_ours) <= 1e-12 * max(1.0, abs(ke_ours))
        bad += not ok
        v = a.get_velocities()[0] * units.fs if a.has("momenta") else None
        print(f"frame {k}: pbc {a.pbc.tolist()} energy {e} KE(ASE) {ke_ase} KE(ours) {ke_ours} "
              f"v0 {None if v is None else v.tolist()} Å/fs stress {a.get_stress().tolist() if a.calc is not None and 'stress' in a.calc.results else None} {'ok' if ok else 'MISMATCH'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir")
    ap.add_argument("--check-ours")
    a = ap.parse_args()
    if a.check_ours:
        check_ours(a.check_ours)
    else:
        generate(a.out_dir or os.path.dirname(os.path.abspath(__file__)))
