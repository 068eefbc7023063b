#!/usr/bin/env bash
# Session 13's second and third device calls: `ek_gemm_tf32x3_nt_pipe` (EQUIKERN_MODEL_NT_PIPE,
# the radial backward product with its operands streamed by cp.async into shared-memory rings;
# in call 2 its first form, B through L1 and no block barriers) A/B against
# `ek_gemm_tf32x3_nt`, the GPU tests, profiles, the side-by-side and Nsight Compute on it:
# benches/h100_switch_ab.sh with that switch (same carry).
SWITCH=EQUIKERN_MODEL_NT_PIPE FORCE_SIDE=1 KERNELS="ek_gemm_tf32x3_nt_pipe" \
  exec bash benches/h100_switch_ab.sh "$@"
