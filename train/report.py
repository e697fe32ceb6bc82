"""Charts of a training run: ``python train/report.py RUN`` runs ``flair-lake report RUN``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flair_lake.cli.train import report as main

if __name__ == "__main__":
    main()
