"""Train U-T&T on a lake: ``python train/fit.py --lake lake.zarr`` runs ``flair-lake train --lake lake.zarr``.

DDP: ``torchrun --nproc_per_node N train/fit.py ...``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flair_lake.cli.train import train as main

if __name__ == "__main__":
    main()
