#!/usr/bin/env bash
# The L1 prefetches of the tensor-core radial backward kernels (EQUIKERN_MODEL_PREFETCH=1),
# written in session 12 and timed in session 13's first call (no difference): their A/B, the
# profile, the side-by-side with both peers: benches/h100_switch_ab.sh with that switch (carry
# [".carry", ".peers", ".whl", "models/checkpoint_sevennet_0.pth"]).
SWITCH=EQUIKERN_MODEL_PREFETCH FORCE_SIDE=1 KERNELS="ek_mlp_backward_tc|ek_gemm_tf32x3_nt" \
  exec bash benches/h100_switch_ab.sh "$@"
