"""Index types as data: FAISS factory strings chosen by collection size and memory budget.

An index type is a factory string as `faiss.index_factory` reads it (`Flat`, `HNSW32`,
`PCA256,IVF2048,SQ8,Refine(SQfp16)`, ...) plus default search parameters (`nprobe=128`).
`auto` keeps exact search (`Flat`) while the index is small enough to scan per query, and
otherwise picks the most accurate compressed type whose size fits 80% of the memory budget
(the rest is for the process around it: id maps, tables, Python):

    PCA256 (when dim > 512) -> IVF<nlist> coarse lists of SQ8 codes -> re-ranking of the
    best k x k_factor candidates with a full-dimension copy (SQfp16, else SQ8, else SQ4);
    without a re-ranking copy only if even SQ4 does not fit.

The store wraps every shard's index as `IDMap2,<type>`; the choice and its parameters are
written to the manifest, and search parameters can be changed at query time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from dior_search import defaults
from dior_search.errors import UsageError, number_text

AUTO = "auto"
FLAT = "Flat"
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
DEFAULT_MEMORY_BUDGET = defaults.DEFAULT_MEMORY_BUDGET
# Exact search reads every vector per query: at ~8 GB/s of memory bandwidth 512 MiB is ~70 ms.
FLAT_MAX_BYTES = 512 * MiB
# Above this dimension a PCA to REDUCED_DIM pays: the coarse scan reads 14x fewer bytes at
# d = 3584, and the re-ranking step restores the full-dimension ranking.
REDUCE_ABOVE_DIM = 512
REDUCED_DIM = 256
REFINE_K_FACTOR = 16
# The share of the memory budget the index itself may take.
INDEX_SHARE_OF_BUDGET = 0.8
# Per vector on disk: its id in IDMap2's id map and in the IVF list (IDMap2's reverse map
# adds about 40 bytes more in RAM).
ID_BYTES = 16
# Points per coarse centroid to train on (faiss warns below 39).
TRAIN_POINTS_PER_LIST = 40
PCA_TRAIN_POINTS = 32_768
# Refinement copies, most accurate first, with their bytes per dimension.
REFINE_CODES = (("SQfp16", 2.0), ("SQ8", 1.0), ("SQ4", 0.5))
SIZE_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}


@dataclass(frozen=True)
class IndexChoice:
    """A factory string with what it needs: default search parameters, training size, bytes."""

    factory: str
    search_params: str
    train_size: int
    bytes_estimate: int
    reason: str


def parse_size(text: str) -> int:
    """Bytes in a human size: a number with an optional K, M, G or T (powers of 1024).

    >>> parse_size("8G")
    8589934592
    >>> parse_size("512MiB")
    536870912
    >>> parse_size("1.5k")
    1536
    >>> parse_size("1000")
    1000
    >>> parse_size("lots")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    UsageError: size 'lots' is not a number with an optional unit K, M, G or T (e.g. 8G)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if match is None:
        raise UsageError(
            f"size {text!r} is not a number with an optional unit K, M, G or T (e.g. 8G)"
        )
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])


def format_size(n_bytes: float) -> str:
    """A byte count in the largest binary unit that keeps it above 1.

    >>> format_size(8 * GiB)
    '8.0 GiB'
    >>> format_size(1536)
    '1.5 KiB'
    """
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{int(n_bytes)} B"


def nlist_for(n_vectors: int) -> int:
    """Coarse lists: the power of two nearest 2 sqrt(N), within 64 .. 65536.

    >>> nlist_for(100_000), nlist_for(1_000_000), nlist_for(10_000_000)
    (512, 2048, 8192)
    """
    return int(min(65536, max(64, 2 ** round(math.log2(2 * math.sqrt(max(n_vectors, 1)))))))


def probes_for(nlist: int) -> int:
    """Default lists scanned per query: 1/32 of them, at least 16 (all of a small index).

    >>> probes_for(512), probes_for(2048), probes_for(16)
    (16, 64, 16)
    """
    return min(nlist, max(16, nlist // 32))


def choose_index_type(n_vectors: int, dim: int, memory_budget: int) -> IndexChoice:
    """The index type `auto` builds for `n_vectors` of dimension `dim` within `memory_budget`.

    >>> choose_index_type(20_000, 3584, 8 * GiB).factory
    'Flat'
    >>> choose_index_type(1_000_000, 3584, 8 * GiB).factory
    'PCA256,IVF2048,SQ8,Refine(SQ8)'
    >>> choose_index_type(1_000_000, 3584, 8 * GiB).search_params
    'nprobe=64,k_factor_rf=16'
    >>> choose_index_type(1_000_000, 3584, 12 * GiB).factory
    'PCA256,IVF2048,SQ8,Refine(SQfp16)'
    >>> choose_index_type(1_000_000, 256, GiB).factory
    'IVF2048,SQ8,Refine(SQfp16)'
    """
    flat_bytes = n_vectors * (4 * dim + ID_BYTES)
    usable = int(INDEX_SHARE_OF_BUDGET * memory_budget)
    if flat_bytes <= min(usable, FLAT_MAX_BYTES):
        return IndexChoice(FLAT, "", 0, flat_bytes, "exact search: the index is small")
    nlist = nlist_for(n_vectors)
    coarse = f"IVF{nlist}" if nlist <= 8192 else f"IVF{nlist}_HNSW32"
    reduced = REDUCED_DIM if dim > REDUCE_ABOVE_DIM else dim
    prefix = f"PCA{reduced}," if reduced < dim else ""
    # Trained parts: PCA matrix and mean, centroids, SQ ranges.
    fixed = 4 * (reduced * dim + dim + nlist * reduced) + 8 * (dim + reduced)
    nprobe = probes_for(nlist)
    train_size = min(n_vectors, TRAIN_POINTS_PER_LIST * nlist)
    if nlist > 8192:
        params = f"nprobe={nprobe},quantizer_efSearch={2 * nprobe}"
    else:
        params = f"nprobe={nprobe}"
    for code, bytes_per_dim in REFINE_CODES:
        per_vector = reduced + int(bytes_per_dim * dim) + ID_BYTES
        if fixed + n_vectors * per_vector <= usable:
            return IndexChoice(
                f"{prefix}{coarse},SQ8,Refine({code})",
                f"{params},k_factor_rf={REFINE_K_FACTOR}",
                train_size,
                fixed + n_vectors * per_vector,
                f"compressed: a flat index would take {format_size(flat_bytes)}",
            )
    smallest = fixed + n_vectors * (reduced + ID_BYTES)
    if smallest > usable:
        raise UsageError(
            f"{n_vectors} vectors of dimension {dim} need at least {format_size(smallest)} "
            f"({prefix}{coarse},SQ8), more than {INDEX_SHARE_OF_BUDGET:.0%} of the memory "
            f"budget of {format_size(memory_budget)}: raise --memory-budget"
        )
    return IndexChoice(
        f"{prefix}{coarse},SQ8",
        params,
        train_size,
        smallest,
        "compressed without re-ranking: a re-ranking copy does not fit the memory budget",
    )


def canonical_spec(spec: str) -> str:
    """`auto`, `Flat` (also `flat`), or a factory string as given, without spaces.

    >>> canonical_spec(" flat "), canonical_spec("AUTO"), canonical_spec("IVF64, SQ8")
    ('Flat', 'auto', 'IVF64,SQ8')
    """
    cleaned = spec.replace(" ", "")
    if cleaned.lower() == AUTO:
        return AUTO
    if cleaned.lower() == "flat":
        return FLAT
    return cleaned


def faiss_reason(exc: BaseException) -> str:
    """The part of a FAISS exception that says what was wrong, without its C++ location."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.split(r"\.(?:cpp|h):\d+: ", first)[-1].strip()


def make_index(factory: str, dim: int) -> Any:
    """An empty `IDMap2,<factory>` inner-product index; UsageError if FAISS cannot build it."""
    import faiss

    if factory.upper().startswith("IDMAP"):
        raise UsageError(
            f"--index-type {factory!r}: dior-search wraps every shard in IDMap2 itself; "
            "drop the IDMap prefix"
        )
    try:
        return faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise UsageError(
            f"--index-type {factory!r} is not a FAISS factory string for dimension {dim} "
            f"({faiss_reason(exc)}); use auto, flat, or e.g. 'PCA256,IVF1024,SQ8,Refine(SQ8)'"
        ) from None


# Counts in a factory string, with the range FAISS can use: (pattern, what, low, high).
# High HNSW degrees only cost memory; NSG below 8 neighbours can loop forever while building.
COUNT_RANGES = (
    (r"HNSW(\d+)", "HNSW's links per vector (M)", 2, 512),
    (r"NSG(\d+)", "NSG's neighbours per vector (R)", 8, 512),
    (r"IVF(\d+)", "the number of coarse lists", 1, 1 << 20),
    (r"(?<![A-Za-z])PQ(\d+)", "PQ's number of sub-quantizers", 1, 1 << 16),
    (r"PQ\d+x(\d+)", "PQ's bits per code", 1, 16),
    (r"(?<![A-Za-z])SQ(\d+)", "SQ's bits per dimension", 4, 8),
    (r"(?:PCA|PCAR|PCAW|PCAWR)(\d+)", "the PCA's output dimension", 1, -1),
    (r"OPQ\d+_(\d+)", "OPQ's output dimension", 1, -1),
    (r"OPQ(\d+)", "OPQ's number of sub-quantizers", 1, 1 << 16),
    (r"RR(\d+)", "the random rotation's output dimension", 1, 1 << 16),
    (r"Pad(\d+)", "the padded dimension", 1, 1 << 16),
)


def check_factory_counts(factory: str, dim: int) -> None:
    """UsageError for a count FAISS cannot use (HNSW0, IVF0, SQ0, PCA2000 at dim 128, ...).

    -1 as a high bound stands for the vectors' dimension.
    """
    for pattern, what, low, high in COUNT_RANGES:
        top = dim if high == -1 else high
        for match in re.finditer(pattern, factory):
            count = int(match.group(1))
            if not low <= count <= top:
                bound = f"{top} (the vectors' dimension)" if high == -1 else str(top)
                raise UsageError(
                    f"--index-type {factory!r}: {what} must be between {low} and {bound}, "
                    f"not {count} in {match.group(0)!r}"
                )


def check_index_spec(spec: str, dim: int, n_vectors: int) -> None:
    """Fail early (before any embedding) on a type FAISS cannot build, train on n vectors,
    or search: counts in range, then the type tried on random vectors in a child process."""
    if spec in (AUTO, FLAT):
        return
    from dior_search.store.index_trial import try_index_type

    check_factory_counts(spec, dim)
    needed = training_minimum(make_index(spec, dim))
    if n_vectors < needed:
        raise UsageError(
            f"index type {spec!r} needs at least {needed} vectors to train; this index will "
            f"have {n_vectors}: use --index-type flat (or auto), or fewer coarse lists"
        )
    reason = try_index_type(spec, dim)
    if reason is not None:
        raise UsageError(
            f"--index-type {spec!r} cannot index vectors of dimension {dim}: {reason}; use "
            "auto, flat, or e.g. 'PCA256,IVF1024,SQ8,Refine(SQ8)'"
        )


def unwrap(index: Any) -> list[Any]:
    """The chain of (downcast) indexes inside an index: IDMap2 -> Refine -> PreTransform -> ..."""
    import faiss

    chain = []
    current: Any = faiss.downcast_index(index)
    while current is not None:
        chain.append(current)
        if isinstance(current, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            current = faiss.downcast_index(current.index)
        elif isinstance(current, faiss.IndexRefine):
            current = faiss.downcast_index(current.base_index)
        else:
            current = None
    return chain


def search_param_names(index: Any) -> list[str]:
    """The faiss.ParameterSpace names that apply to an index (empty for exact search)."""
    import faiss

    names = []
    for part in unwrap(index):
        if isinstance(part, faiss.IndexRefine):
            names.append("k_factor_rf")
        if isinstance(part, faiss.IndexHNSW):
            names.append("efSearch")
        if isinstance(part, faiss.IndexIVF):
            names += ["nprobe", "max_codes"]
            if isinstance(faiss.downcast_index(part.quantizer), faiss.IndexHNSW):
                names.append("quantizer_efSearch")
    return names


# The values each search parameter may take: (lowest, highest, whole number). Above these a
# search only allocates more (an HNSW search holds efSearch candidates per query).
PARAM_RANGES: dict[str, tuple[float, float, bool]] = {
    "nprobe": (1, 1 << 20, True),
    "efSearch": (1, 1 << 20, True),
    "quantizer_efSearch": (1, 1 << 20, True),
    "max_codes": (0, 1 << 53, True),
    "k_factor_rf": (1, 1 << 16, False),
}


def parse_search_params(text: str) -> dict[str, float]:
    """`name=value,...` pairs, as faiss.ParameterSpace reads them, each value in its range.

    >>> parse_search_params("nprobe=32, k_factor_rf=4")
    {'nprobe': 32.0, 'k_factor_rf': 4.0}
    """
    params: dict[str, float] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = pair.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            raise UsageError(
                f"search parameter {pair!r} is not name=number (e.g. nprobe=32,efSearch=64)"
            ) from None
        check_param_value(name, number)
        params[name] = number
    return params


def check_param_value(name: str, value: float) -> None:
    """UsageError unless `value` is a finite number in the range of parameter `name`."""
    low, high, whole = PARAM_RANGES.get(name, (-math.inf, math.inf, False))
    in_range = math.isfinite(value) and low <= value <= high
    if not in_range or (whole and not value.is_integer()):
        kind = "a whole number" if whole else "a finite number"
        bounds = f" from {int(low)} to {int(high)}" if math.isfinite(high) else ""
        shown = number_text(value)  # every digit: 2097152, not 2.09715e+06
        raise UsageError(f"search parameter {name} must be {kind}{bounds}, not {shown}")


def merge_search_params(*texts: str) -> str:
    """Later `name=value` lists override earlier ones.

    >>> merge_search_params("nprobe=128,k_factor_rf=16", "nprobe=16")
    'nprobe=16,k_factor_rf=16'
    """
    merged: dict[str, float] = {}
    for text in texts:
        merged.update(parse_search_params(text))
    return ",".join(f"{name}={value:g}" for name, value in merged.items())


def search_params_of(
    search_params: str | None, nprobe: int | None = None, ef_search: int | None = None
) -> str:
    """One `name=value,...` list from a query's --search-params, --nprobe and --ef-search.

    >>> search_params_of("k_factor_rf=4", nprobe=32)
    'k_factor_rf=4,nprobe=32'
    """
    params = [
        search_params,
        None if nprobe is None else f"nprobe={nprobe}",
        None if ef_search is None else f"efSearch={ef_search}",
    ]
    return ",".join(p for p in params if p)


def apply_search_params(index: Any, text: str, index_type: str) -> None:
    """Set search parameters on a loaded index; UsageError naming the valid ones otherwise."""
    import faiss

    valid = search_param_names(index)
    space = faiss.ParameterSpace()
    for name, value in parse_search_params(text).items():
        if name not in valid:
            takes = ", ".join(valid) if valid else "none (exact search)"
            raise UsageError(
                f"search parameter {name!r} does not apply to index type {index_type}; "
                f"it takes: {takes}"
            )
        space.set_index_parameter(index, name, value)


def widened_search_params(index: Any, factor: float) -> tuple[Any, ...]:
    """Per-search FAISS parameters for `index` (an IDMap2 shard) that visit `factor` times
    more candidates than its current settings (IVF lists probed, HNSW breadth), re-ranking as
    it does: for a filter that few rows pass, whose top k lie deeper in the ranking. The
    parameters come first, then the objects they point to (keep them referenced)."""
    import faiss

    # FAISS's parameter classes take their fields as attributes (its stubs know no keywords).
    kinds: Any = faiss
    made: list[Any] = []

    def params_of(chain: list[Any]) -> Any:
        if not chain:
            return None
        part, rest = chain[0], chain[1:]
        found: Any = None
        if isinstance(part, faiss.IndexRefine):
            found = kinds.IndexRefineSearchParameters()
            found.k_factor = part.k_factor
            found.base_index_params = params_of(rest)
        elif isinstance(part, faiss.IndexPreTransform):
            found = kinds.SearchParametersPreTransform()
            found.index_params = params_of(rest)
        elif isinstance(part, faiss.IndexIVF):
            found = kinds.SearchParametersIVF()
            found.nprobe = min(part.nlist, math.ceil(part.nprobe * factor))
            found.max_codes = part.max_codes
            quantizer = faiss.downcast_index(part.quantizer)
            if isinstance(quantizer, faiss.IndexHNSW):
                found.quantizer_params = kinds.SearchParametersHNSW()
                breadth = math.ceil(quantizer.hnsw.efSearch * factor)
                found.quantizer_params.efSearch = max(found.nprobe, breadth)
                made.append(found.quantizer_params)
        elif isinstance(part, faiss.IndexHNSW):
            found = kinds.SearchParametersHNSW()
            found.efSearch = math.ceil(part.hnsw.efSearch * factor)
        if found is not None:
            made.append(found)
        return found

    top = params_of(unwrap(index)[1:])  # the IDMap2 wrapper passes them to what it wraps
    return (top, *made)


def default_search_params(index: Any) -> str:
    """Search parameters a type gets unless the manifest or the query says otherwise.

    FAISS's own defaults (nprobe=1, efSearch=16, no re-ranking) favour speed far over recall.
    """
    import faiss

    params = []
    for part in unwrap(index):
        if isinstance(part, faiss.IndexRefine):
            params.append(f"k_factor_rf={REFINE_K_FACTOR}")
        if isinstance(part, faiss.IndexHNSW):
            params.append("efSearch=64")
        if isinstance(part, faiss.IndexIVF):
            nprobe = probes_for(part.nlist)
            params.insert(0, f"nprobe={nprobe}")
            if isinstance(faiss.downcast_index(part.quantizer), faiss.IndexHNSW):
                params.append(f"quantizer_efSearch={2 * nprobe}")
    return ",".join(params)


def training_minimum(index: Any) -> int:
    """Fewest vectors FAISS can train an index on (k-means needs a point per centroid)."""
    import faiss

    needed = 0
    for part in unwrap(index):
        if isinstance(part, faiss.IndexIVF):
            needed = max(needed, part.nlist)
        pq = getattr(part, "pq", None)
        if pq is not None and isinstance(pq, faiss.ProductQuantizer):
            needed = max(needed, pq.ksub)
    return needed if needed or index.is_trained else 1


def training_size(index: Any, n_vectors: int) -> int:
    """Vectors to train on: 40 per coarse list or PQ centroid, at most the whole index."""
    if index.is_trained:
        return 0
    return min(n_vectors, max(1000, TRAIN_POINTS_PER_LIST * training_minimum(index)))


def pca_components(
    sample: np.ndarray, k: int, seed: int = 0, power_iterations: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, top-k principal directions as rows, their variances) by randomized SVD.

    FAISS's own PCAMatrix.train diagonalises the full d x d covariance (two minutes at
    d = 3584 on two cores); a randomized range finder needs a few (n x d) x (d x k) products.
    """
    rng = np.random.default_rng(seed)
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    centered = sample - mean
    width = min(k + 64, *centered.shape)
    omega = rng.standard_normal((centered.shape[1], width), dtype=np.float32)
    basis, _ = np.linalg.qr(centered @ omega)
    for _ in range(power_iterations):
        right, _ = np.linalg.qr(centered.T @ basis)
        basis, _ = np.linalg.qr(centered @ right)
    _, singular, directions = np.linalg.svd(basis.T @ centered, full_matrices=False)
    variances = singular[:k] ** 2 / max(len(sample) - 1, 1)
    return mean, np.ascontiguousarray(directions[:k], dtype=np.float32), variances


def pretrain_pca(index: Any, sample: np.ndarray) -> None:
    """Train a leading PCAMatrix of an index from `sample` with randomized SVD."""
    import faiss

    for part in unwrap(index):
        if not isinstance(part, faiss.IndexPreTransform):
            continue
        chain: Any = part.chain  # a SWIG vector (its stub says list)
        if chain.size() == 0:
            return
        pca = faiss.downcast_VectorTransform(chain.at(0))
        if not isinstance(pca, faiss.PCAMatrix) or pca.is_trained:
            return
        if pca.eigen_power != 0 or pca.random_rotation or pca.balanced_bins != 0:
            return  # variants FAISS must train itself
        rows = sample[:PCA_TRAIN_POINTS]
        if len(rows) < pca.d_out:
            return
        mean, directions, variances = pca_components(rows, pca.d_out)
        faiss.copy_array_to_vector(mean, pca.mean)
        faiss.copy_array_to_vector(variances.astype(np.float32), pca.eigenvalues)
        faiss.copy_array_to_vector(directions.ravel(), pca.PCAMat)
        pca.prepare_Ab()
        pca.is_trained = True
        return


def train_index(factory: str, dim: int, sample: np.ndarray, search_params: str) -> Any:
    """An empty, trained `IDMap2,<factory>` index with its default search parameters set."""
    index = make_index(factory, dim)
    if not index.is_trained:
        pretrain_pca(index, sample)
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    apply_search_params(index, search_params, factory)
    return index
