# Sourced by the device-call scripts (run from the repository root on the GPU machine):
# $OUT made (with aux/), the carried binaries unpacked into b/, `stage` (a heading with the
# seconds since the start), the environment equikern's runs need, $CKPT.
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT/aux" b
T0=$(date +%s)
stage() { echo; echo "== [$(($(date +%s) - T0)) s] $*"; }
tar -C b -xJf .carry/bins.tar.xz
export EQUIKERN_REPO=$PWD XDG_RUNTIME_DIR=/tmp
CKPT=models/checkpoint_sevennet_0.pth
# Makes the carried binary $1 the build every later stage runs as b/equikern, including the
# scripts that unpack .carry/bins.tar.xz again (h100_model.sh, h100_ncu_model.sh).
take_build() {
  cp "$1" b/equikern
  mkdir -p /tmp/ob && cp "$1" /tmp/ob/equikern && tar -C /tmp/ob -cJf .carry/bins.tar.xz .
}
# The carried GPU tests (b/cuda_model; "$@": libtest filters) into $OUT/test_cuda_model.log,
# the per-structure lines dropped; prints the summary lines. TESTS_T: timeout (s).
cuda_model_tests() {
  timeout "${TESTS_T:-300}" b/cuda_model --test-threads 1 --nocapture "$@" 2>&1 \
    | grep -v "^\s*$" | grep -v "^\s*\(Si\|H\|C\|N\|O\)[0-9]* " > "$OUT/test_cuda_model.log"
  grep -E "worst|test result|panicked|step [0-9]:|fused with the radial|FAILED|failures|f32 energy" \
    "$OUT/test_cuda_model.log" | head -40
}
