"""Groups by aspect: a collection's images clustered under one condition, each group named.

The stored unit vectors of one condition's index are clustered with FAISS spherical k-means
(cosine, seeded, ten restarts keeping the best: three missed one of four well-separated
clusters in 6 of 20 generated cases, ten in none). Each group is named by the model's most
common stored answer among its members; where no member has one, by the answer word whose
images' mean vector is nearest the group's centroid; with no answers stored at all,
"group N".

k, unless given: the number of distinct answers the model gave under the condition to at
least MIN_ANSWER_SHARE of the images (the values the model itself tells apart; rare answers
are its mistakes, not groups), at least 2. Without stored answers: the k in 2..MAX_AUTO_K
with the best mean silhouette (cosine) on a sample of the images.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dior_search.errors import UsageError
from dior_search.store.schema import ANSWER

if TYPE_CHECKING:
    from dior_search.search.searcher import Searcher

MIN_ANSWER_SHARE = 0.02
MAX_AUTO_K = 12
# The most groups one clustering may be asked for (a served request: serve.app.MAX_GROUPS).
MAX_CLUSTERS = 1000
SILHOUETTE_SAMPLE = 2000
KMEANS_ITERATIONS = 30
KMEANS_RESTARTS = 10


@dataclass(frozen=True)
class Group:
    """One group: its name, how it was named, and its members' ids (nearest the centroid
    first) and paths."""

    name: str
    # "answer" (its most common stored answer), "nearest-answer" or "none".
    named_by: str
    ids: list[int]
    paths: list[str]
    # The share of members whose stored answer is the name (None: no answers stored).
    answer_share: float | None

    @property
    def size(self) -> int:
        return len(self.ids)

    def to_json(self, members: int | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "named_by": self.named_by,
            "size": self.size,
            "answer_share": self.answer_share,
            "members": [
                {"id": i, "path": p}
                for i, p in list(zip(self.ids, self.paths, strict=True))[:members]
            ],
        }


@dataclass(frozen=True)
class Groups:
    collection: str
    condition: str
    k: int
    # "given", "answers" or "silhouette".
    k_chosen_by: str
    groups: list[Group]

    def to_json(self, members: int | None = None) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "condition": self.condition,
            "k": self.k,
            "k_chosen_by": self.k_chosen_by,
            "groups": [g.to_json(members) for g in self.groups],
        }


def kmeans(vectors: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(assignment of each row, unit centroids) by FAISS spherical k-means."""
    import faiss

    data = np.ascontiguousarray(vectors, dtype=np.float32)
    clustering = faiss.Kmeans(
        data.shape[1],
        k,
        niter=KMEANS_ITERATIONS,
        nredo=KMEANS_RESTARTS,
        spherical=True,
        seed=seed,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, len(data)),
    )
    clustering.train(data)
    centroids = np.asarray(clustering.centroids, dtype=np.float32)
    assignment = np.argmax(data @ centroids.T, axis=1)
    return assignment, centroids


def silhouette(vectors: np.ndarray, assignment: np.ndarray) -> float:
    """Mean silhouette of a clustering under cosine distance."""
    distances = 1.0 - vectors @ vectors.T
    labels = np.unique(assignment)
    if len(labels) < 2:
        return -1.0
    mean_to = np.stack([distances[:, assignment == c].mean(axis=1) for c in labels], axis=1)
    sizes = np.asarray([(assignment == c).sum() for c in labels])
    own = np.searchsorted(labels, assignment)
    rows = np.arange(len(vectors))
    own_sizes = sizes[own]
    # The mean distance to the others of one's own group (oneself left out).
    a = mean_to[rows, own] * own_sizes / np.maximum(own_sizes - 1, 1)
    mean_to[rows, own] = np.inf
    b = mean_to.min(axis=1)
    s = np.where(own_sizes > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def automatic_k(
    vectors: np.ndarray, answers: list[str | None] | None, seed: int
) -> tuple[int, str]:
    """(k, how it was chosen): see the module's docstring."""
    n = len(vectors)
    if answers is not None and any(a is not None for a in answers):
        counts = Counter(a for a in answers if a is not None)
        common = sum(c >= MIN_ANSWER_SHARE * n for c in counts.values())
        return max(2, min(common, n)), "answers"
    rng = np.random.default_rng(seed)
    sample = vectors if n <= SILHOUETTE_SAMPLE else vectors[rng.choice(n, SILHOUETTE_SAMPLE)]
    best, best_score = 2, -np.inf
    for k in range(2, min(MAX_AUTO_K, len(sample) - 1) + 1):
        assignment, _ = kmeans(sample, k, seed)
        score = silhouette(sample, assignment)
        if score > best_score:
            best, best_score = k, score
    return best, "silhouette"


def group_images(
    searcher: Searcher,
    collection_name: str | None,
    condition_name: str,
    k: int | None = None,
    seed: int = 0,
) -> Groups:
    """Cluster a collection's images under one condition and name each group."""
    collection = searcher.collection(collection_name)
    condition = searcher.condition(collection, condition_name)
    reader = searcher.reader(condition)
    ids, vectors = reader.all_vectors()
    n = len(ids)
    if n < 2:
        raise UsageError(f"the index of '{condition.name}' holds {n} image(s): nothing to group")
    if k is not None and not 1 <= k <= min(n, MAX_CLUSTERS):
        raise UsageError(f"--k must be between 1 and {min(n, MAX_CLUSTERS)}")
    answers = reader.column(ANSWER) if ANSWER in reader.column_names() else None
    chosen_by = "given"
    if k is None:
        k, chosen_by = automatic_k(vectors, answers, seed)
    assignment, centroids = kmeans(vectors, k, seed)
    paths = reader.paths()
    groups = []
    for c in range(k):
        members = np.flatnonzero(assignment == c)
        if len(members) == 0:
            continue
        order = members[np.argsort(-(vectors[members] @ centroids[c]), kind="stable")]
        name, named_by, share = group_name(answers, order, centroids[c], vectors, c)
        groups.append(
            Group(name, named_by, ids[order].tolist(), [paths[int(p)] for p in order], share)
        )
    groups.sort(key=lambda g: (-g.size, g.name))
    return Groups(collection.name, condition.name, k, chosen_by, groups)


def group_name(
    answers: list[str | None] | None,
    members: np.ndarray,
    centroid: np.ndarray,
    vectors: np.ndarray,
    number: int,
) -> tuple[str, str, float | None]:
    """(name, how named, share of members answering the name) of one group."""
    if answers is None or all(a is None for a in answers):
        return f"group {number + 1}", "none", None
    counts = Counter(str(answers[int(p)]) for p in members if answers[int(p)] is not None)
    if counts:
        name, count = max(counts.items(), key=lambda item: (item[1], item[0]))
        return name, "answer", count / len(members)
    # No member answered: the answer whose images' mean vector is nearest the centroid.
    words = sorted({a for a in answers if a is not None})
    array = np.asarray(answers, dtype=object)
    means = np.stack([vectors[array == w].mean(axis=0) for w in words])
    return words[int(np.argmax(means @ centroid))], "nearest-answer", 0.0


def adjusted_rand_index(truth: list[str], found: list[int] | np.ndarray) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings of the same items."""
    _, a = np.unique(np.asarray(truth, dtype=object).astype(str), return_inverse=True)
    _, b = np.unique(np.asarray(found), return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) // 2).sum())

    n = len(a)
    index = pairs(table)
    rows, columns = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * columns / (n * (n - 1) / 2)
    best = (rows + columns) / 2
    if best == expected:
        return 1.0
    return (index - expected) / (best - expected)
