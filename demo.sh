#!/usr/bin/env bash
# End-to-end demo on built-in synthetic data: the exact commands a user types, in one folder.
# Usage: bash demo.sh [FOLDER]   (default: ./demo)
set -euo pipefail
DIR=${1:-demo}
mkdir -p "$DIR"
cd "$DIR"
echo "== synth: a synthetic FLAIR #2 tree in raw/"
flair-lake synth raw/ --preset tiny --overwrite
echo "== demo done in $DIR"
