#!/usr/bin/env sh
# Fetches the SevenNet checkpoints equikern reads (sevenn 0.13.0 wheel on PyPI, MIT licence)
# into <repo>/models/: SevenNet-0 (11Jul2024; XPLOR cutoff, lmax 2) and SevenNet-l3i5
# (polynomial cutoff, lmax 3). Checked against their SHA-256. Never committed (models/ is
# git-ignored). Needs python3 -m pip (pip download) and unzip.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
dest="$root/models"
mkdir -p "$dest"
SEVENNET_0=7052cb42b7b3be42b40b97fa0d21077a48c54b5548948fc4dcf346629f813c36
L3I5=a7ff190d41efe5b8317a03d20a468e4036a1a3e64e0b14fdbab64ac3f4bfc09d
ok() { [ -f "$dest/$1" ] && [ "$(sha256sum "$dest/$1" | cut -d' ' -f1)" = "$2" ]; }
if ok checkpoint_sevennet_0.pth "$SEVENNET_0" && ok checkpoint_l3i5.pth "$L3I5"; then
  echo "already present: $dest/checkpoint_sevennet_0.pth, $dest/checkpoint_l3i5.pth"; exit 0
fi
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
python3 -m pip download -q --no-deps sevenn==0.13.0 -d "$w"
unzip -q -o -j "$w"/sevenn-0.13.0-py3-none-any.whl \
  'sevenn/pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth' \
  'sevenn/pretrained_potentials/SevenNet_l3i5/checkpoint_l3i5.pth' -d "$dest"
for f in "checkpoint_sevennet_0.pth $SEVENNET_0" "checkpoint_l3i5.pth $L3I5"; do
  # shellcheck disable=SC2086
  set -- $f
  if ! ok "$1" "$2"; then echo "checksum mismatch: $dest/$1" >&2; rm -f "$dest/$1"; exit 1; fi
done
echo "fetched: $dest/checkpoint_sevennet_0.pth, $dest/checkpoint_l3i5.pth"
