#!/usr/bin/env python3
"""Reference energies/forces/stress from sevenn's own PyTorch code, for equikern-model's tests.

Run where torch, e3nn, ase and sevenn==0.13.0 are importable (e.g. the GPU machine with
carried wheels; see shared/notes/sevennet.md). Keep OpenEquivariance off PYTHONPATH: this
uses the plain e3nn backend.

    python3 crates/equikern-model/gen_sevenn_refs.py \
        --checkpoint models/checkpoint_sevennet_0.pth \
        --out tests/data/sevennet/sevenn_refs.json [--device cuda]

Two evaluations per structure:
* "f64": the model built with torch's default dtype float64, cast with .double(), the
  compiled TensorProduct's Wigner-3j buffers recomputed in float64 (load_state_dict would
  otherwise leave the checkpoint's float32-rounded copies), the one-hot embedding patched to
  the model dtype, and the graph (edge vectors, volume) kept in float64. This is the
  reference the Rust f64 model must match to ~1e-9.
* "f32": sevenn's stock calculator path (float32), for later float32/GPU tolerances.

Output (JSON): {"meta": {...}, "structures": [{"name", "numbers", "positions", "cell",
"pbc", "f64": {"energy", "atomic_energies", "forces", "stress" (ASE order xx yy zz yz xz xy,
eV/A^3; null unless fully periodic), "num_edges"}, "f32": {...}}]}.
"""

import argparse
import json
import math
import re

import numpy as np
import torch


def build_structures():
    from ase import Atoms
    from ase.build import bulk, molecule

    rng = np.random.RandomState(20261124)
    out = []

    si = bulk("Si", "diamond", a=5.43, cubic=True)  # 8 atoms
    out.append(("si_diamond_8", si.copy()))
    r = si.copy()
    r.positions += rng.normal(scale=0.05, size=r.positions.shape)
    out.append(("si_diamond_8_rattled", r))

    # primitive 2-atom Si cell: every pair has many periodic images within 5 A
    p = bulk("Si", "diamond", a=5.43)
    p.positions += rng.normal(scale=0.03, size=p.positions.shape)
    out.append(("si_primitive_2", p))

    # small triclinic cell (lattice vectors < 2 * cutoff), mixed species
    tri = Atoms(
        symbols=["Mg", "O", "Al", "O"],
        positions=[[0.1, 0.2, 0.3], [1.4, 1.0, 0.5], [0.8, 1.9, 1.7], [2.2, 1.3, 2.1]],
        cell=[[3.1, 0.0, 0.0], [0.7, 2.9, 0.0], [-0.5, 0.6, 3.3]],
        pbc=True,
    )
    out.append(("triclinic_mg_al_o_4", tri))

    # water box: 8 molecules on a 2x2x2 grid in a 6.2 A cube, random orientations
    h2o = molecule("H2O")
    h2o.positions -= h2o.get_center_of_mass()
    box = Atoms(cell=[6.2, 6.2, 6.2], pbc=True)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                m = h2o.copy()
                m.rotate(rng.uniform(0, 360), rng.normal(size=3) + 1e-3, center=(0, 0, 0))
                m.positions += (np.array([i, j, k]) + 0.25 + 0.1 * rng.uniform(size=3)) * 3.1
                box += m
    out.append(("water_box_24", box))

    # open-boundary molecules (H, C, N, O)
    for name in ["CH4", "NH3", "H2O", "CH3CONH2", "HCOOH"]:
        m = molecule(name)
        m.positions += rng.normal(scale=0.02, size=m.positions.shape)
        m.pbc = False
        out.append((f"molecule_{name}", m))

    # isolated atoms: open boundary, and alone in a big periodic box (no neighbours)
    out.append(("single_atom_Cu_open", Atoms("Cu", positions=[[0.0, 0.0, 0.0]], pbc=False)))
    out.append(("single_atom_O_box", Atoms("O", positions=[[1.0, 2.0, 3.0]], cell=[12.0, 12.0, 12.0], pbc=True)))
    return out


def patch_onehot_dtype(dtype):
    """sevenn's OnehotEmbedding casts with .float(); use the model dtype instead."""
    import sevenn.nn.node_embedding as ne

    def forward(self, data):
        inp = data[self.key_x]
        embd = torch.nn.functional.one_hot(inp, self.num_classes).to(dtype)
        data[self.key_output] = embd
        if self.key_additional_output is not None:
            data[self.key_additional_output] = embd
        if self.key_save is not None:
            data[self.key_save] = inp
        return data

    ne.OnehotEmbedding.forward = forward


def build_f64_model(path, device):
    from e3nn import o3
    from sevenn.util import load_checkpoint

    # Build in float32 (sevenn's loader patches old checkpoints with float32 tables), then cast.
    torch.set_default_dtype(torch.float32)
    cp = load_checkpoint(path)
    model = cp.build_model(enable_cueq=False, enable_flash=False, enable_oeq=False)
    model = model.double()
    torch.set_default_dtype(torch.float64)
    n_w3j = 0
    with torch.no_grad():
        for name, buf in model.named_buffers():
            m = re.search(r"_w3j_(\d+)_(\d+)_(\d+)$", name)
            if m:
                l1, l2, l3 = map(int, m.groups())
                buf.copy_(o3.wigner_3j(l1, l2, l3, dtype=torch.float64))
                n_w3j += 1
    patch_onehot_dtype(torch.float64)
    model.set_is_batch_data(False)
    model.eval()
    model.to(device)
    return cp, model, n_w3j


def eval_f64(model, cutoff, atoms, device):
    import sevenn._keys as KEY
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph
    from sevenn.util import dtype_correct

    torch.set_default_dtype(torch.float64)
    dct = unlabeled_atoms_to_graph(atoms, cutoff, with_shift=False)
    dct = {
        k: (v if k == KEY.INFO else dtype_correct(v, float_dtype=torch.float64))
        for k, v in dct.items()
    }
    data = AtomGraphData(**dct)
    data.to(device)
    out = model(data)
    n = len(atoms)
    stress = None
    if all(atoms.pbc) and atoms.cell.volume > 1e-3:
        s = (-out[KEY.PRED_STRESS]).detach().cpu().numpy()[[0, 1, 2, 4, 5, 3]]
        stress = [float(x) for x in s]
    forces = out[KEY.PRED_FORCE]
    forces = forces.detach().cpu().numpy()[:n] if forces is not None else np.zeros((n, 3))
    return {
        "energy": float(out[KEY.PRED_TOTAL_ENERGY].detach().cpu().item()),
        "atomic_energies": [float(x) for x in out[KEY.ATOMIC_ENERGY].detach().cpu().numpy().flatten()],
        "forces": forces.tolist(),
        "stress": stress,
        "num_edges": int(out[KEY.EDGE_IDX].shape[1]),
    }


def eval_f32(path, atoms, device):
    from sevenn.calculator import SevenNetCalculator

    torch.set_default_dtype(torch.float32)
    patch_onehot_dtype(torch.float32)
    calc = SevenNetCalculator(model=path, device=device)
    a = atoms.copy()
    a.calc = calc
    e = float(a.get_potential_energy())
    f = a.get_forces().tolist()
    stress = None
    if all(a.pbc) and a.cell.volume > 1e-3:
        stress = [float(x) for x in a.get_stress()]
    return {"energy": e, "forces": f, "stress": stress}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="models/checkpoint_sevennet_0.pth")
    ap.add_argument("--out", default="tests/data/sevennet/sevenn_refs.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-f32", action="store_true")
    args = ap.parse_args()

    import e3nn
    import sevenn
    from e3nn.math import normalize2mom

    cp, model, n_w3j = build_f64_model(args.checkpoint, args.device)
    cutoff = float(cp.config["cutoff"])
    silu_cst = float(normalize2mom(torch.nn.functional.silu).cst)
    structures = []
    for name, atoms in build_structures():
        rec = {
            "name": name,
            "numbers": [int(z) for z in atoms.numbers],
            "positions": atoms.positions.tolist(),
            "cell": np.array(atoms.cell).tolist(),
            "pbc": [bool(x) for x in atoms.pbc],
        }
        try:
            patch_onehot_dtype(torch.float64)
            rec["f64"] = eval_f64(model, cutoff, atoms, args.device)
        except Exception as exc:  # record and go on (e.g. a structure without edges)
            print(f"{name}: f64 evaluation failed: {exc!r}")
            rec["error"] = repr(exc)
            structures.append(rec)
            continue
        if not args.no_f32:
            try:
                rec["f32"] = eval_f32(args.checkpoint, atoms, args.device)
            except Exception as exc:
                print(f"{name}: f32 evaluation failed: {exc!r}")
        e = rec["f64"]["energy"]
        print(f"{name:28s} atoms {len(atoms):3d} edges {rec['f64']['num_edges']:5d} E {e:.10f}")
        assert math.isfinite(e)
        structures.append(rec)
    meta = {
        "generator": "crates/equikern-model/gen_sevenn_refs.py",
        "sevenn": sevenn.__version__,
        "e3nn": e3nn.__version__,
        "torch": torch.__version__,
        "device": args.device,
        "checkpoint": args.checkpoint,
        "cutoff": cutoff,
        "e3nn_silu_normalize2mom_cst": silu_cst,
        "w3j_buffers_recomputed_f64": n_w3j,
        "stress_convention": "ASE: eV/A^3, Voigt xx yy zz yz xz xy, = -sevenn PRED_STRESS reordered",
    }
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "structures": structures}, fh, indent=1)
    print(f"wrote {args.out}: {len(structures)} structures; e3nn silu cst {silu_cst!r}")


if __name__ == "__main__":
    main()
