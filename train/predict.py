"""Write georeferenced predictions: ``python train/predict.py --ckpt CKPT --out DIR`` runs ``flair-lake predict``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flair_lake.cli.train import predict as main

if __name__ == "__main__":
    main()
