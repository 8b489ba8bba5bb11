"""The model's own answers on the synthetic test split: as tags, as text search, as facets.

    python scripts/eval_answers.py [--n-images 400] [--model tiny] [--work DIR]

Writes the synthetic test split and indexes it under its four conditions (answers stored;
resumable: a second run reuses the indexes). Prints, per condition, the answer accuracy (the
stored answer is the label), and per label value the text-to-image precision@10 (the value
asked as a word: `query --text VALUE -c CONDITION`) beside its facet count (`facets`) and its
label count, as Markdown tables. About two minutes on 2 CPU cores with the tiny model.
"""

import argparse
import logging
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from dior_search.data.collections import open_dataset
from dior_search.data.synthetic import CONDITIONS, LABEL_VALUES, write_dataset
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.search.searcher import Searcher, SearchRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=400)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--work", type=Path, default=None, help="Where data and indexes go.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="dior-answers-"))
    write_dataset(work / "datasets" / "synthetic", {"test": args.n_images})
    embedder = DiorEmbedder(DiorSettings(model=args.model, batch_size=16))
    collection = open_dataset("synthetic", work / "datasets")
    index_collection(collection, list(CONDITIONS), embedder, IndexSettings(work / "indexes"))
    searcher = Searcher.open(work / "indexes", collection="synthetic", model=args.model)
    indexes = searcher.collection("synthetic")
    print("| condition | answer accuracy | text P@10, worst value | facet counts off the labels |")
    print("| --- | ---: | ---: | ---: |")
    rows = []
    for condition, values in LABEL_VALUES.items():
        reader = searcher.reader(searcher.condition(indexes, condition))
        labels = reader.labels(condition)
        accuracy = np.mean([a == b for a, b in zip(reader.column("answer"), labels, strict=True)])
        facets = dict(searcher.facets("synthetic", condition).counts)
        counts = Counter(labels)
        precisions, off = {}, []
        for value in values:
            hits = searcher.search(
                SearchRequest(conditions=(condition,), words=(value,), k=10)
            ).hits
            precisions[value] = np.mean([h.labels[condition] == value for h in hits])
            off.append(abs(facets.get(value, 0) - counts[value]) / counts[value])
            rows.append((condition, value, precisions[value], facets.get(value, 0), counts[value]))
        print(
            f"| {condition} | {accuracy:.3f} | {min(precisions.values()):.2f} | "
            f"{max(off):.1%} at most |"
        )
    print()
    print("| condition | value | text P@10 | facet count | label count |")
    print("| --- | --- | ---: | ---: | ---: |")
    for condition, value, precision, facet, label in rows:
        print(f"| {condition} | {value} | {precision:.2f} | {facet} | {label} |")


if __name__ == "__main__":
    main()
