"""Milvus index types as data: what `--index-type` may name on a Milvus store, and what
`auto` picks by size and memory budget.

A Milvus index type is written `TYPE` or `TYPE:name=value,...` with its build parameters
(`HNSW:M=16,efConstruction=100`, `IVF_SQ8:nlist=512`); search parameters (`ef`, `nprobe`)
are `name=value,...` as for FAISS. Milvus Lite builds FLAT, HNSW, HNSW_SQ, IVF_FLAT, IVF_SQ8
and AUTOINDEX (= HNSW) and silently ignores what it does not know (another type on an empty
collection, a misspelt parameter), so on Lite anything else is refused here; a Milvus server
checks the parameters of its many types itself.

`auto` chooses as the folder store does: FLAT (exact) while a scan of every vector per query
is cheap (at most 512 MiB) and fits the budget, else HNSW (raw vectors and its graph in
memory) if that fits 80% of the budget, else IVF_SQ8 (8-bit codes, a byte per dimension).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dior_search.errors import UsageError
from dior_search.store.index_types import (
    AUTO,
    FLAT_MAX_BYTES,
    ID_BYTES,
    INDEX_SHARE_OF_BUDGET,
    format_size,
    nlist_for,
    parse_search_params,
    probes_for,
)

FLAT = "FLAT"
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
HNSW_EF = 64
# What Milvus Lite builds: build parameters and search parameters of each type.
LITE_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    FLAT: ((), ()),
    "HNSW": (("M", "efConstruction"), ("ef",)),
    "HNSW_SQ": (("M", "efConstruction"), ("ef",)),
    "IVF_FLAT": (("nlist",), ("nprobe",)),
    "IVF_SQ8": (("nlist",), ("nprobe",)),
    "AUTOINDEX": ((), ("ef",)),
}
# Float-vector types of a Milvus server beyond Lite's (it checks their parameters itself).
SERVER_TYPES = (
    "IVF_PQ",
    "IVF_RABITQ",
    "HNSW_PQ",
    "HNSW_PRQ",
    "DISKANN",
    "SCANN",
    "GPU_CAGRA",
    "GPU_IVF_FLAT",
    "GPU_IVF_PQ",
    "GPU_BRUTE_FORCE",
)
# The FAISS store's names of search parameters that Milvus calls otherwise.
SEARCH_ALIASES = {"efSearch": "ef"}
# A parameter's or field's name: what an index spec and a filter expression take as it is.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VALUE = re.compile(r"[A-Za-z0-9_.+-]+")

Params = dict[str, int | float | str]


@dataclass(frozen=True)
class MilvusType:
    """An index type and its build parameters."""

    index_type: str
    params: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.index_type
        return self.index_type + ":" + ",".join(f"{k}={v}" for k, v in self.params)

    def build_params(self) -> Params:
        return {name: number(value) for name, value in self.params}


@dataclass(frozen=True)
class MilvusChoice:
    """What `auto` builds: the type, its default search parameters, and why."""

    spec: str
    search_params: str
    reason: str


def number(value: str) -> int | float | str:
    """A parameter's value as Milvus takes it: an integer, a float, or a word."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def parse_spec(spec: str, lite: bool) -> MilvusType:
    """`TYPE[:name=value,...]` checked against what the store builds; UsageError otherwise.

    >>> str(parse_spec("hnsw: M=32, efConstruction=200", lite=True))
    'HNSW:M=32,efConstruction=200'
    >>> str(parse_spec("flat", lite=True)), str(parse_spec("Flat", lite=False))
    ('FLAT', 'FLAT')
    >>> parse_spec("IVF_PQ", lite=True)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    UsageError: index type 'IVF_PQ' is not one Milvus Lite builds ...
    """
    kind, _, rest = spec.replace(" ", "").partition(":")
    kind = kind.upper()
    known = tuple(LITE_TYPES) + (() if lite else SERVER_TYPES)
    if kind not in known:
        where = "Milvus Lite builds" if lite else "dior-search knows on a Milvus server"
        hint = " (a Milvus server builds more)" if lite and kind in SERVER_TYPES else ""
        raise UsageError(
            f"index type {kind!r} is not one {where}{hint}: use auto, or one of "
            f"{', '.join(known)}, with build parameters as TYPE:name=value,... "
            "(e.g. HNSW:M=16,efConstruction=100)"
        )
    params = []
    for pair in filter(None, rest.split(",")):
        name, _, value = pair.partition("=")
        if not NAME.fullmatch(name) or not VALUE.fullmatch(value):
            raise UsageError(
                f"index parameter {pair!r} of {kind} is not name=value (e.g. {kind}:M=16)"
            )
        if lite and name not in LITE_TYPES[kind][0]:
            takes = ", ".join(LITE_TYPES[kind][0]) or "none"
            raise UsageError(
                f"Milvus Lite ignores index parameter {name!r} of {kind}; it takes: {takes}"
            )
        params.append((name, value))
    return MilvusType(kind, tuple(params))


def canonical_milvus_spec(spec: str, lite: bool) -> str:
    """`auto`, or the type as `parse_spec` writes it (FAISS's `Flat` is FLAT here)."""
    if spec.replace(" ", "").lower() == AUTO:
        return AUTO
    return str(parse_spec(spec, lite))


def choose_milvus_type(n_vectors: int, dim: int, memory_budget: int) -> MilvusChoice:
    """The index type `auto` builds for `n_vectors` of dimension `dim` within the budget.

    >>> choose_milvus_type(20_000, 3584, 8 << 30).spec
    'FLAT'
    >>> choose_milvus_type(100_000, 3584, 8 << 30).spec
    'HNSW:M=16,efConstruction=100'
    >>> choose_milvus_type(1_000_000, 3584, 8 << 30).spec
    'IVF_SQ8:nlist=2048'
    """
    usable = int(INDEX_SHARE_OF_BUDGET * memory_budget)
    flat_bytes = n_vectors * (4 * dim + ID_BYTES)
    if flat_bytes <= min(usable, FLAT_MAX_BYTES):
        return MilvusChoice(FLAT, "", "exact search: the index is small")
    # HNSW keeps the raw vectors and about 2 M links of 4 bytes per vector in memory.
    hnsw_bytes = n_vectors * (4 * dim + 8 * HNSW_M + ID_BYTES)
    if hnsw_bytes <= usable:
        return MilvusChoice(
            f"HNSW:M={HNSW_M},efConstruction={HNSW_EF_CONSTRUCTION}",
            f"ef={HNSW_EF}",
            f"a graph: a flat index would take {format_size(flat_bytes)}",
        )
    nlist = nlist_for(n_vectors)
    sq8_bytes = n_vectors * (dim + ID_BYTES) + 4 * nlist * dim
    if sq8_bytes <= usable:
        return MilvusChoice(
            f"IVF_SQ8:nlist={nlist}",
            f"nprobe={probes_for(nlist)}",
            f"8-bit codes: HNSW would take {format_size(hnsw_bytes)}",
        )
    raise UsageError(
        f"{n_vectors} vectors of dimension {dim} need at least {format_size(sq8_bytes)} "
        f"(IVF_SQ8), more than {INDEX_SHARE_OF_BUDGET:.0%} of the memory budget of "
        f"{format_size(memory_budget)}: raise --memory-budget"
    )


def default_search_params(spec: str) -> str:
    """Search parameters a type gets unless a query says otherwise (Milvus Lite's own
    nprobe of 10 and ef of 64 favour speed over recall at this project's sizes)."""
    kind = parse_spec(spec, lite=False)
    if kind.index_type.startswith("HNSW") or kind.index_type == "AUTOINDEX":
        return f"ef={HNSW_EF}"
    if kind.index_type.startswith("IVF"):
        nlist = int(dict(kind.params).get("nlist", 128))
        return f"nprobe={probes_for(nlist)}"
    return ""


def search_params_for(spec: str, text: str, strict: bool) -> Params:
    """`name=value,...` search parameters (FAISS's `efSearch` read as `ef`) checked against
    what the type takes; on an exact index, asking for any is an error when `strict`."""
    kind = parse_spec(spec, lite=False)
    asked = {SEARCH_ALIASES.get(k, k): v for k, v in parse_search_params(text).items()}
    takes = LITE_TYPES.get(kind.index_type, ((), None))[1]
    out: Params = {}
    for name, value in asked.items():
        if takes is not None and name not in takes:
            if not takes and not strict:
                continue
            valid = ", ".join(takes) if takes else "none (exact search)"
            raise UsageError(
                f"search parameter {name!r} does not apply to index type {kind.index_type}; "
                f"it takes: {valid}"
            )
        out[name] = int(value) if float(value).is_integer() else value
    return out


def same_index(built: tuple[str, dict[str, str]], wanted: str) -> bool:
    """Whether the index built (as the database describes it, possibly with more parameters)
    is of the type and build parameters `wanted` asks for.

    >>> same_index(("HNSW", {"efConstruction": "100", "M": "16"}), "HNSW:M=16,efConstruction=100")
    True
    >>> same_index(("FLAT", {}), "HNSW:M=16")
    False
    """
    kind = parse_spec(wanted, lite=False)
    index_type, params = built
    return index_type == kind.index_type and all(params.get(k) == v for k, v in kind.params)


def index_params(spec: str) -> Any:
    """pymilvus index parameters of type `spec` on `vector`, by inner product.

    The build parameters go as one `params` object, which a Milvus server and Milvus Lite
    both read (pymilvus's flat form is lost on Lite).
    """
    from pymilvus.milvus_client.index import IndexParam, IndexParams

    kind = parse_spec(spec, lite=False)

    class Nested(IndexParam):  # type: ignore[misc]
        def get_index_configs(self) -> dict[str, Any]:
            return {
                "index_type": kind.index_type,
                "metric_type": "IP",
                "params": kind.build_params(),
            }

    params = IndexParams()
    params.append(Nested("vector", kind.index_type, "vector"))
    return params
