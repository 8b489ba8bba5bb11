"""How often a query's top 10 share two labels: one condition at a time versus both at once.

    python scripts/eval_multi_condition.py [--n-images 400] [--model tiny] [--work DIR]

Writes the synthetic test split, indexes it under its four conditions (resumable: a second
run reuses the indexes), then every image queries with its stored vectors (as `query --id`)
under A, under B and under A + B (equal weights), for each pair of conditions. Prints, per
pair, the mean share of the top 10 (the query itself left out) that has both of the query's
labels, and writes them to `benchmarks/results/eval_multi_condition.json`. A few minutes on 2
CPU cores with the tiny model.
"""

import argparse
import itertools
import logging
import sys
import tempfile
from pathlib import Path

from dior_search.data.collections import open_dataset
from dior_search.data.synthetic import CONDITIONS, write_dataset
from dior_search.evaluation.bench import shared_label_rate
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.search.joined import JoinedIndexes, normalize_weights
from dior_search.store.reader import IndexReader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from results_file import write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=400)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None, help="Where data and indexes go.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="dior-multi-"))
    write_dataset(work / "datasets" / "synthetic", {"test": args.n_images})
    embedder = DiorEmbedder(DiorSettings(model=args.model, batch_size=16))
    collection = open_dataset("synthetic", work / "datasets")
    settings = IndexSettings(indexes_dir=work / "indexes")
    report = index_collection(collection, list(CONDITIONS), embedder, settings)
    readers = {c: IndexReader(report.indexes[c]) for c in CONDITIONS}

    def rate(conditions: tuple[str, ...], labels: tuple[str, str]) -> float:
        joined = JoinedIndexes([readers[c] for c in conditions])
        weights = normalize_weights(None, len(conditions))
        return shared_label_rate(joined, weights, labels, args.k)

    print(
        f"{args.n_images} synthetic images, model {args.model}: mean share of the top "
        f"{args.k} (query left out) with both of the query's labels, {args.n_images} queries "
        "per cell\n"
    )
    print("| conditions A + B | A only | B only | A + B |")
    print("| --- | ---: | ---: | ---: |")
    rows = []
    for a, b in itertools.combinations(CONDITIONS, 2):
        pair = (a, b)
        only_a, only_b, both = rate((a,), pair), rate((b,), pair), rate(pair, pair)
        print(f"| {a} + {b} | {only_a:.3f} | {only_b:.3f} | {both:.3f} |")
        rows.append(
            {
                "a": a,
                "b": b,
                "a_only": round(only_a, 4),
                "b_only": round(only_b, 4),
                "both": round(both, 4),
            }
        )
    figures = {"queries": args.n_images, "model": args.model, "k": args.k, "rows": rows}
    print("wrote", write_results("eval_multi_condition", figures))


if __name__ == "__main__":
    main()
