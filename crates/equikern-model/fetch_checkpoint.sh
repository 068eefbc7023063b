#!/usr/bin/env sh
# Fetches SevenNet-0's checkpoint (sevenn 0.13.0 wheel on PyPI, MIT) into <repo>/models/.
# The checkpoint is never committed (models/ is git-ignored).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
dest="$root/models"
mkdir -p "$dest"
if [ -f "$dest/checkpoint_sevennet_0.pth" ]; then
  echo "already present: $dest/checkpoint_sevennet_0.pth"; exit 0
fi
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
python3 -m pip download --no-deps sevenn==0.13.0 -d "$w"
unzip -o -j "$w"/sevenn-0.13.0-py3-none-any.whl \
  'sevenn/pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth' -d "$dest"
echo "fetched: $dest/checkpoint_sevennet_0.pth"
