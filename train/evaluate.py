"""Score a checkpoint: ``python train/evaluate.py --ckpt runs/utt/best.pt`` runs ``flair-lake evaluate ...``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flair_lake.cli.train import evaluate as main

if __name__ == "__main__":
    main()
