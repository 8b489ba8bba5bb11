"""Rebuild the bundled `tiny` demo model (dior_search/models/tiny_model/) from scratch.

    python scripts/build_tiny_model.py [--steps 2000] [--out dior_search/models/tiny_model]

About 20 minutes on 2 idle CPU cores. The result is deterministic up to floating-point ordering.
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
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train_tiny_model(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
