#!/usr/bin/env bash
# End-to-end demo on built-in synthetic data: the exact commands a user types, in one folder.
# Usage: bash demo.sh [FOLDER]   (default: ./demo)
set -euo pipefail
unset FLAIR_LAKE  # the commands below that name no lake use ./lake.zarr, the one just ingested
DIR=${1:-demo}
mkdir -p "$DIR"
cd "$DIR"
echo "== synth: a synthetic FLAIR #2 tree in raw/"
flair-lake synth raw/ --preset tiny --overwrite
rm -rf lake.zarr
echo "== ingest: raw/ -> lake.zarr"
flair-lake ingest raw/ lake.zarr
echo "== filter: cloudy/snowy dates out, monthly composites in"
flair-lake filter --cloud 0.6 --monthly
echo "== info"
flair-lake info lake.zarr
echo "== train: a short U-T&T run on CPU (CUDA when present), then the official mIoU on val and test"
flair-lake train --lake lake.zarr --epochs 3 --batch-size 4 --lr 0.01 --out runs/demo
echo "== predictions: georeferenced GeoTIFFs for the test split"
flair-lake evaluate --ckpt runs/demo/best.pt --lake lake.zarr --split test --predict runs/demo/pred
echo "== maps: the test zones as seamless Cloud-Optimized GeoTIFFs (open maps/index.vrt in QGIS), then scored"
flair-lake map --ckpt runs/demo/best.pt --lake lake.zarr --split test --out maps
flair-lake evaluate --map maps --lake lake.zarr --split test
echo "== demo done in $DIR"
