"""Composed queries on the synthetic set: composition, negatives, feedback, groups, distinct.

    python scripts/eval_composition.py [--n-images 400] [--model tiny] [--work DIR]

Writes the synthetic test split, indexes it under its four conditions with the bundled model
(resumable: a rerun with the same --work reuses the indexes; a retrained model makes new
ones), and measures through the library (`Searcher` with terms; examples by id, so no model
call at query time):

- composition: 200 random pairs (A, B) with different pattern and colour; precision@10 of
  "pattern of A, colour of B" (both labels match), against the single-image query of A under
  both conditions;
- negatives: 200 queries "pattern of A, not the colour of C" (C shares A's colour); precision
  @10 (A's pattern and not C's colour) with and without the negative, for several negative
  scales and the normalised alternative (cosine to each condition's query vector);
- feedback: 100 simulated people who want (colour X, pattern Y), start from an image of colour
  X (under colour) and, twice, mark the top 20 by the labels (wanted: more like this under
  both conditions; else less like this under the condition it is wrong under); precision@20
  at the start and after each round; with card-wide marks and a start under both conditions
  as alternatives;
- groups: ARI between `groups` (automatic k) and the labels per condition, and the share of
  groups whose name is their majority label;
- distinct: the set plus re-encoded, resized and cropped copies of 50 images, indexed under
  colour and unconditionally; with --distinct, pairs of copies in any top 20 and the originals'
  recall@10 by colour (query left out) against without; and how well picture fingerprints
  and the unconditional vectors each tell copies from other images.

Prints the figures and writes them with benchmarks/results_file.write_results
(benchmarks/results/eval_composition.json).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from results_file import write_results

from dior_search.data.collections import open_dataset
from dior_search.data.fingerprints import fingerprint_similarity, picture_fingerprint
from dior_search.data.synthetic import CONDITIONS, copy_kind, write_copies, write_dataset
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.search import terms as term_rule
from dior_search.search.groups import adjusted_rand_index, group_images
from dior_search.search.searcher import Searcher, SearchRequest
from dior_search.search.terms import Term

Labels = dict[int, dict[str, str]]


def build(work: Path, n_images: int, model: str, conditions: list[str], copies: int = 0) -> Path:
    """The synthetic split (plus `copies` altered copies of its first images, labelled as
    their originals) indexed under `conditions`; returns the indexes folder."""
    data = work / "datasets" / "synthetic"
    if not (data / "labels.csv").is_file():
        write_dataset(data, {"test": n_images})
        if copies:
            write_copies(data, copies)
    embedder = DiorEmbedder(DiorSettings(model=model, batch_size=16))
    settings = IndexSettings(indexes_dir=work / "indexes", index_type="flat")
    index_collection(open_dataset("synthetic", work / "datasets"), conditions, embedder, settings)
    return work / "indexes"


def labels_of(searcher: Searcher) -> Labels:
    """Every image's labels, by its id in the color index."""
    collection = searcher.collection("synthetic")
    reader = searcher.reader(collection.conditions["color"])
    rows = reader.rows(reader.ids.tolist())
    found, _ = searcher.labels("synthetic", collection.conditions["color"].root, rows)
    return dict(zip(reader.ids.tolist(), found, strict=True))


def top(searcher: Searcher, terms: list[Term], k: int, **fields: Any) -> list[int]:
    request = SearchRequest(collection="synthetic", terms=tuple(terms), k=k, **fields)
    return [h.id for h in searcher.search(request).hits]


def share(ids: list[int], wanted: Callable[[int], bool]) -> float:
    return sum(wanted(i) for i in ids) / len(ids)


def composition(searcher: Searcher, labels: Labels, rng: np.random.Generator) -> dict[str, Any]:
    ids = sorted(labels)
    composed, single, single_own = [], [], []
    while len(composed) < 200:
        a, b = (int(x) for x in rng.choice(ids, 2, replace=False))
        la, lb = labels[a], labels[b]
        if la["pattern"] == lb["pattern"] or la["color"] == lb["color"]:
            continue

        def target(i: int, la: dict[str, str] = la, lb: dict[str, str] = lb) -> bool:
            return labels[i]["pattern"] == la["pattern"] and labels[i]["color"] == lb["color"]

        composed.append(
            share(top(searcher, [Term("pattern", id=a), Term("color", id=b)], 10), target)
        )
        plain = top(searcher, [Term("pattern", id=a), Term("color", id=a)], 10)
        single.append(share(plain, target))
        single_own.append(
            share(plain, lambda i, la=la: all(labels[i][c] == la[c] for c in ("pattern", "color")))
        )
    return {
        "pairs": 200,
        "precision_at_10": float(np.mean(composed)),
        "single_image_precision_at_10": float(np.mean(single)),
        "single_image_own_labels_precision_at_10": float(np.mean(single_own)),
    }


def negatives(searcher: Searcher, labels: Labels, rng: np.random.Generator) -> dict[str, Any]:
    ids = sorted(labels)
    queries = []
    while len(queries) < 200:
        a, c = (int(x) for x in rng.choice(ids, 2, replace=False))
        if labels[a]["color"] == labels[c]["color"]:
            queries.append((a, c))

    def precision(with_negative: bool) -> float:
        found = []
        for a, c in queries:
            terms = [Term("pattern", id=a)]
            if with_negative:
                terms.append(Term("color", id=c, positive=False))
            hits = top(searcher, terms, 10)
            found.append(
                share(
                    hits,
                    lambda i, a=a, c=c: (
                        labels[i]["pattern"] == labels[a]["pattern"]
                        and labels[i]["color"] != labels[c]["color"]
                    ),
                )
            )
        return float(np.mean(found))

    by_scale = {}
    default = term_rule.NEGATIVE_SCALE
    for scale in (0.25, 0.5, 1.0, 2.0):
        term_rule.NEGATIVE_SCALE = scale
        by_scale[str(scale)] = precision(True)
    term_rule.NEGATIVE_SCALE = default
    return {
        "queries": 200,
        "precision_at_10": by_scale[str(default)],
        "without_negative_precision_at_10": precision(False),
        "precision_at_10_by_negative_scale": by_scale,
        "normalised_alternative_precision_at_10": normalised_negatives(searcher, labels, queries),
    }


def normalised_negatives(
    searcher: Searcher, labels: Labels, queries: list[tuple[int, int]]
) -> float:
    """The alternative rule: each condition's score the cosine to its query vector (q_c
    normalised), computed by brute force over the stored vectors."""
    collection = searcher.collection("synthetic")
    units = {}
    for name in ("pattern", "color"):
        ids, vectors = searcher.reader(collection.conditions[name]).all_vectors()
        units[name] = (ids, vectors.astype(np.float64))
    ids = units["color"][0]
    found = []
    for a, c in queries:
        p = units["pattern"][1] @ units["pattern"][1][np.searchsorted(ids, a)]
        # A negative alone: its query vector normalised is -n, its score -cos(x, n).
        n = -(units["color"][1] @ units["color"][1][np.searchsorted(ids, c)])
        order = ids[np.argsort(-(0.5 * p + 0.5 * n), kind="stable")[:10]].tolist()
        found.append(
            share(
                order,
                lambda i, a=a, c=c: (
                    labels[i]["pattern"] == labels[a]["pattern"]
                    and labels[i]["color"] != labels[c]["color"]
                ),
            )
        )
    return float(np.mean(found))


def feedback(searcher: Searcher, labels: Labels, rng: np.random.Generator) -> dict[str, Any]:
    """A person who wants (colour X, pattern Y) starts from an image of colour X searched
    under colour (what it is known to be right about) and marks each round's top 20: a wanted
    card "more like this" under colour and pattern, a wrong one "less like this" under the
    condition(s) it is wrong under (the page's per-condition marks). Alternatives: every
    mark under both conditions (the page's card-wide marks), and the start under both."""
    state = rng.bit_generator.state
    found = simulate_feedback(searcher, labels, rng, per_condition=True, start_under_both=False)
    for name, per_condition, both in (
        ("card_wide_marks", False, False),
        ("start_under_both", True, True),
        ("card_wide_marks_start_under_both", False, True),
    ):
        rng.bit_generator.state = state  # the same people, starts and wishes
        found[name] = simulate_feedback(searcher, labels, rng, per_condition, both)
    return found


def simulate_feedback(
    searcher: Searcher,
    labels: Labels,
    rng: np.random.Generator,
    per_condition: bool,
    start_under_both: bool,
) -> dict[str, Any]:
    ids = sorted(labels)
    colours = sorted({v["color"] for v in labels.values()})
    patterns = sorted({v["pattern"] for v in labels.values()})
    rounds: list[list[float]] = [[], [], []]
    people = 0
    while people < 100:
        colour, pattern = str(rng.choice(colours)), str(rng.choice(patterns))
        wanted = [
            i for i in ids if labels[i]["color"] == colour and labels[i]["pattern"] == pattern
        ]
        starts = [i for i in ids if labels[i]["color"] == colour]
        if len(wanted) < 20:  # precision@20 could not reach 1
            continue
        people += 1
        start = int(rng.choice(starts))
        terms = [Term("color", id=start)]
        if start_under_both:
            terms.append(Term("pattern", id=start))
        marked: set[int] = {start}
        wished = {"color": colour, "pattern": pattern}

        def good(i: int, wished: dict[str, str] = wished) -> bool:
            return all(labels[i][c] == v for c, v in wished.items())

        for round_number in range(3):
            hits = top(searcher, terms, 20)
            rounds[round_number].append(share(hits, good))
            if round_number == 2:
                break
            for i in hits:
                if i in marked:
                    continue
                marked.add(i)
                for condition in ("color", "pattern"):
                    right = labels[i][condition] == wished[condition]
                    if per_condition and not good(i) and right:
                        continue  # not "less like this" under a condition it is right under
                    terms.append(Term(condition, id=i, positive=good(i)))
    return {
        "people": people,
        "start_precision_at_20": float(np.mean(rounds[0])),
        "round_1_precision_at_20": float(np.mean(rounds[1])),
        "round_2_precision_at_20": float(np.mean(rounds[2])),
    }


def groups(searcher: Searcher, labels: Labels) -> dict[str, Any]:
    found = {}
    for condition in CONDITIONS:
        grouped = group_images(searcher, "synthetic", condition)
        truth, assigned = [], []
        named_right = 0
        for number, group in enumerate(grouped.groups):
            members = [labels[i][condition] for i in group.ids]
            truth += members
            assigned += [number] * len(members)
            majority = max(set(members), key=members.count)
            named_right += group.name == majority
        found[condition] = {
            "k": grouped.k,
            "k_chosen_by": grouped.k_chosen_by,
            "labels": len(set(truth)),
            "ari": adjusted_rand_index(truth, assigned),
            "name_accuracy": named_right / len(grouped.groups),
        }
    return found


def distinct(work: Path, n_images: int, model: str, threshold: float) -> dict[str, Any]:
    indexes = build(work, n_images, model, ["color", "unconditional"], copies=50)
    searcher = Searcher.open(indexes, collection="synthetic")
    labels = labels_of(searcher)
    reader = searcher.reader(searcher.collection("synthetic").conditions["color"])
    paths = dict(zip(reader.ids.tolist(), reader.paths(), strict=True))
    original_of = {i: p.replace("-copy", "") for i, p in paths.items()}
    originals = [i for i, p in paths.items() if "-copy" not in p]
    pairs_seen = {"plain": 0, "distinct": 0}
    recall = {"plain": [], "distinct": []}
    hidden = 0
    for query in originals:
        for kind, value in (("plain", None), ("distinct", threshold)):
            request = SearchRequest(
                ("color",), collection="synthetic", id=query, k=21, distinct=value
            )
            result = searcher.search(request)
            hidden += result.hidden if value else 0
            ids = [h.id for h in result.hits if h.id != query][:20]
            shown = [original_of[i] for i in [query, *ids]]
            pairs_seen[kind] += len(shown) - len(set(shown)) > 0
            same = [labels[i]["color"] == labels[query]["color"] for i in ids[:10]]
            recall[kind].append(float(any(same)))
    root = work / "datasets" / "synthetic"
    fingerprints = {
        p: picture_fingerprint(Image.open(root / p).convert("RGB")) for p in paths.values()
    }
    return {
        "judged_by": "picture fingerprints (data/fingerprints.py)",
        "threshold": threshold,
        "copies": 50,
        "queries": len(originals),
        "top_20s_with_a_pair_of_copies": pairs_seen,
        "recall_at_10_by_colour": {k: float(np.mean(v)) for k, v in recall.items()},
        "hidden_per_query": hidden / len(originals),
        "fingerprint": copy_separation(fingerprints, fingerprint_similarity),
        "unconditional_vector": copy_separation(
            unconditional_vectors(searcher), lambda a, b: float(a @ b)
        ),
    }


def unconditional_vectors(searcher: Searcher) -> dict[str, np.ndarray]:
    """Each image's unit vector under the unconditional index, by path."""
    judge = searcher.reader(searcher.collection("synthetic").conditions["unconditional"])
    _, unit = judge.all_vectors()
    return dict(zip(judge.paths(), unit, strict=True))


def copy_separation(
    vectors: dict[str, np.ndarray], similarity: Callable[[np.ndarray, np.ndarray], float]
) -> dict[str, Any]:
    """How far a judge tells copies from other images: per alteration, the least and the
    median similarity of a copy to its original; and over the originals, the greatest and the
    median similarity to their nearest other image (a copy of their own left out)."""
    by_kind: dict[str, list[float]] = {}
    for path in (p for p in vectors if "-copy" in p):
        original = path.replace("-copy", "")
        by_kind.setdefault(copy_kind(original), []).append(
            similarity(vectors[path], vectors[original])
        )
    nearest = []
    for path in (p for p in vectors if "-copy" not in p):
        own_copy = path.replace(".png", "-copy.png")
        others = (
            similarity(vectors[path], v) for p, v in vectors.items() if p not in (path, own_copy)
        )
        nearest.append(max(others))
    return {
        "copy_similarity_min_median": {
            k: [min(v), float(np.median(v))] for k, v in sorted(by_kind.items())
        },
        "nearest_other_similarity_max_median": [max(nearest), float(np.median(nearest))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=400)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--distinct", type=float, default=0.99)
    parser.add_argument("--work", type=Path, default=None, help="Where data and indexes go.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="dior-compose-"))
    indexes = build(work / "set", args.n_images, args.model, list(CONDITIONS))
    # Thousands of searches of a few hundred rows each: FAISS's OpenMP threads only spin
    # (on a loaded 2-core machine one search took 87 ms with them, 7 ms without).
    import faiss

    faiss.omp_set_num_threads(1)
    searcher = Searcher.open(indexes, collection="synthetic")
    labels = labels_of(searcher)
    rng = np.random.default_rng(args.seed)
    figures: dict[str, Any] = {"images": len(labels), "model": args.model}
    for name, measure in (
        ("composition", composition),
        ("negatives", negatives),
        ("feedback", feedback),
    ):
        figures[name] = measure(searcher, labels, rng)
        print(name, figures[name], flush=True)
    figures["groups"] = groups(searcher, labels)
    print("groups", figures["groups"], flush=True)
    figures["distinct"] = distinct(work / "copies", args.n_images, args.model, args.distinct)
    print("distinct", figures["distinct"], flush=True)
    print("wrote", write_results("eval_composition", figures))


if __name__ == "__main__":
    main()
