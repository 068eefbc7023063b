#!/usr/bin/env python3
"""A reference NVE trajectory from ASE's own VelocityVerlet, for equikern's integrator.

    python3 gen_ase_vv.py --out tests/data/md/ase_vv_lj13.json

13 Ar atoms (a rattled icosahedron) with ASE's LennardJones (all pairs: rc = 100 Å, not
smoothed), Maxwell-like seeded velocities, 200 steps of 2 fs. The JSON holds the initial
positions and velocities (Å/fs), the masses ASE used, the LJ parameters and the positions,
velocities and energies after 50, 100 and 200 steps; crates/equikern-model/tests/md.rs runs
the same with its own LJ and compares.
"""
import argparse
import json

import numpy as np
import ase
from ase import units
from ase.calculators.lj import LennardJones
from ase.cluster import Icosahedron
from ase.md.verlet import VelocityVerlet

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
args = ap.parse_args()

sigma, eps = 3.4, 0.0104
atoms = Icosahedron("Ar", 2, latticeconstant=5.26)[:13]
atoms.rattle(0.05, seed=3)
atoms.calc = LennardJones(sigma=sigma, epsilon=eps, rc=100.0, smooth=False)
rng = np.random.default_rng(5)
v0 = rng.normal(size=(len(atoms), 3)) * 0.0012  # Å/fs (≈ 70 K)
atoms.set_velocities(v0 / units.fs)
out = {
    "meta": {"ase": ase.__version__, "numpy": np.__version__},
    "sigma": sigma,
    "epsilon": eps,
    "dt_fs": 2.0,
    "numbers": atoms.numbers.tolist(),
    "masses": atoms.get_masses().tolist(),
    "positions": atoms.positions.tolist(),
    "velocities": (atoms.get_velocities() * units.fs).tolist(),
    "energy": atoms.get_potential_energy() + atoms.get_kinetic_energy(),
    "checkpoints": [],
}
dyn = VelocityVerlet(atoms, timestep=2.0 * units.fs)
done = 0
for n in (50, 100, 200):
    dyn.run(n - done)
    done = n
    out["checkpoints"].append({
        "step": n,
        "positions": atoms.positions.tolist(),
        "velocities": (atoms.get_velocities() * units.fs).tolist(),
        "total_energy": atoms.get_potential_energy() + atoms.get_kinetic_energy(),
        "kinetic_energy": atoms.get_kinetic_energy(),
    })
with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
