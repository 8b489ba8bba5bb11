"""Rebuild the bundled `tiny` demo model (dior_search/models/tiny_model/), from scratch or on.

    python scripts/build_tiny_model.py [--steps 3000] [--out dior_search/models/tiny_model]
    python scripts/build_tiny_model.py --start-from dior_search/models/tiny_model \\
        --steps 600 --lr 1e-3 --out /tmp/tiny_model

From scratch: about 20 minutes on 2 idle CPU cores. `--start-from DIR` trains on from the model
saved in DIR (its tokenizer and weights) with the same recipe, e.g. to teach new wordings in a
few hundred steps. Either way the result is deterministic up to floating-point ordering. The
committed weights: the from-scratch build of the four training wordings (3000 steps), then the
second command above with the wordings of `dior_search/models/tiny_wordings.py`.
"""

import argparse
import logging
from pathlib import Path

from dior_search.models.tiny_training import train_tiny_model

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parents[1] / "dior_search" / "models" / "tiny_model",
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="Peak learning rate.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--start-from", type=Path, default=None, help="Train on from the model saved here."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train_tiny_model(
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        start_from=args.start_from,
    )
