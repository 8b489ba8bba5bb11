"""The model's own answers on the synthetic test split, under both position schemes.

    python scripts/eval_answers.py [--n-images 400] [--model tiny] [--work DIR]
        [--timing-images 32] [--timing-rounds 5] [--no-write]

For each position scheme (`reference`, sequential positions as the paper's code and the
default index; `native`, the model's own multimodal positions, as Qwen-VL was trained), the split
is indexed under its four conditions (answers stored; resumable: a second run reuses the
indexes). Prints, per scheme and condition, the answer accuracy (the stored answer is the
label), the worst text-to-image precision@10 (each label value asked as a word) and how far
the answers' facet counts are off the label counts; then on how many (image, condition) pairs
the two schemes answer differently; then what answers cost: seconds to embed
`--timing-images` images under the four conditions without answers, with answers (best of
`--timing-rounds`, the runs interleaved), and the
cost of reference vectors with native answers (a reference pass for the vectors plus a native
pass that decodes the answers). Writes the figures to
`benchmarks/results/eval_answers-MODEL.json`. A few minutes on 2 CPU cores with the tiny model.
"""

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.data.collections import open_dataset
from dior_search.data.images import load_image
from dior_search.data.synthetic import CONDITIONS, LABEL_VALUES, write_dataset
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.answers import normalize_word
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import POSITION_SCHEMES, DiorSettings
from dior_search.search.searcher import Searcher, SearchRequest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from results_file import write_results

BATCH_SIZE = 16


def scheme_figures(work: Path, model: str, scheme: str) -> tuple[dict[str, Any], list[str]]:
    """Per condition: answer accuracy, worst and mean text P@10, facet counts off the labels;
    and every stored answer (condition-major, in id order), to compare schemes."""
    embedder = DiorEmbedder(
        DiorSettings(model=model, batch_size=BATCH_SIZE, position_scheme=scheme)  # type: ignore[arg-type]
    )
    collection = open_dataset("synthetic", work / "datasets")
    indexes_dir = work / f"indexes-{scheme}"
    index_collection(collection, list(CONDITIONS), embedder, IndexSettings(indexes_dir))
    searcher = Searcher.open(indexes_dir, collection="synthetic", model=model)
    indexes = searcher.collection("synthetic")
    figures: dict[str, Any] = {}
    every_answer: list[str] = []
    for condition, values in LABEL_VALUES.items():
        reader = searcher.reader(searcher.condition(indexes, condition))
        labels = [normalize_word(label) for label in reader.labels(condition)]
        answers = list(reader.column("answer"))
        every_answer += answers
        facets = dict(searcher.facets("synthetic", condition).counts)
        counts = Counter(labels)
        precisions, off = [], []
        for value in values:
            hits = searcher.search(SearchRequest(conditions=(condition,), words=(value,), k=10))
            precisions.append(float(np.mean([h.labels[condition] == value for h in hits.hits])))
            off.append(abs(facets.get(value, 0) - counts[value]) / max(1, counts[value]))
        right = [a == b for a, b in zip(answers, labels, strict=True)]
        figures[condition] = {
            "answer_accuracy": float(np.mean(right)),
            "wrong_answers": dict(
                Counter(f"{b}->{a}" for a, b in zip(answers, labels, strict=True) if a != b)
            ),
            "text_precision@10_min": min(precisions),
            "text_precision@10_mean": float(np.mean(precisions)),
            "facet_counts_off_at_most": max(off),
        }
    return figures, every_answer


def timings(work: Path, model: str, n_images: int, rounds: int) -> dict[str, float]:
    """Seconds to embed `n_images` test images under the four conditions, per scheme, without
    and with answers: the best of `rounds`, the four runs interleaved in each round so that a
    busy machine slows them alike (one warm-up run each first)."""
    collection = open_dataset("synthetic", work / "datasets")
    images = [load_image(collection.root / item.path) for item in collection.items[:n_images]]
    conditions = list(CONDITIONS.values())
    runs = {}
    for scheme in POSITION_SCHEMES:
        embedder = DiorEmbedder(
            DiorSettings(model=model, batch_size=BATCH_SIZE, position_scheme=scheme)
        )
        runs[f"{scheme}_vectors_s"] = embedder.embed
        runs[f"{scheme}_vectors_and_answers_s"] = embedder.embed_with_answers
    for run in runs.values():
        run(images[:2], conditions)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(images, conditions)
            seconds[name].append(time.perf_counter() - start)
    out = {name: min(values) for name, values in seconds.items()}
    # Reference vectors with native answers: the reference pass for the vectors, and a native
    # pass (its vectors thrown away) whose cache decodes the answers.
    out["reference_vectors_native_answers_s"] = (
        out["reference_vectors_s"] + out["native_vectors_and_answers_s"]
    )
    out["native_answers_cost_ratio"] = (
        out["reference_vectors_native_answers_s"] / out["reference_vectors_and_answers_s"]
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=400)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--work", type=Path, default=None, help="Where data and indexes go.")
    parser.add_argument("--timing-images", type=int, default=32)
    parser.add_argument("--timing-rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="Print only; no results file.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="dior-answers-"))
    write_dataset(work / "datasets" / "synthetic", {"test": args.n_images})
    by_scheme, answers = {}, {}
    for scheme in POSITION_SCHEMES:
        by_scheme[scheme], answers[scheme] = scheme_figures(work, args.model, scheme)
    print("| positions | condition | answer accuracy | text P@10, worst value | facet counts off |")
    print("| --- | --- | ---: | ---: | ---: |")
    for scheme, per_condition in by_scheme.items():
        for condition, row in per_condition.items():
            print(
                f"| {scheme} | {condition} | {row['answer_accuracy']:.3f} | "
                f"{row['text_precision@10_min']:.2f} | "
                f"{row['facet_counts_off_at_most']:.1%} at most |"
            )
    pairs = zip(answers["reference"], answers["native"], strict=True)
    differ = sum(a != b for a, b in pairs)
    total = len(answers["reference"])
    print(f"\nthe two schemes answer differently on {differ} of {total} (image, condition) pairs")
    n_timed = min(args.timing_images, args.n_images)
    cost = timings(work, args.model, n_timed, args.timing_rounds)
    print(f"\nseconds to embed {n_timed} images x {len(CONDITIONS)} conditions:")
    for name, value in cost.items():
        print(f"  {name}: {value:.3f}")
    if not args.no_write:
        figures = {
            "n_images": args.n_images,
            "model": args.model,
            "by_scheme": by_scheme,
            "pairs_answered_differently": differ,
            "pairs": total,
            "timing_images": n_timed,
            "timing_rounds": args.timing_rounds,
            "timing": cost,
        }
        write_results("eval_answers", figures, tag=args.model)


if __name__ == "__main__":
    main()
