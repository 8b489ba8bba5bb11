"""An index run's settings, checked where they are made (the CLI and the library alike):
`IndexSettings`, and `PartSpec`, the part of a distributed run a process runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dior_search import defaults
from dior_search.errors import UsageError
from dior_search.models.settings import check_at_most
from dior_search.store.backend import canonical_spec, parse_size, part_name

# More processes than this share no index usefully (each part is a folder and a merge step).
MAX_PARTS = 4096


@dataclass(frozen=True)
class PartSpec:
    """Part `part` (0-based) of `parts` of a distributed run."""

    part: int
    parts: int

    def __post_init__(self) -> None:
        if not 1 <= self.parts <= MAX_PARTS:
            raise UsageError(f"--parts must be between 1 and {MAX_PARTS}, not {self.parts}")
        if not 0 <= self.part < self.parts:
            raise UsageError(
                f"part {self.part} of {self.parts} does not exist: parts are 0..{self.parts - 1}"
            )

    @property
    def name(self) -> str:
        return part_name(self.part, self.parts)

    def bounds(self, total: int) -> tuple[int, int]:
        """The contiguous slice [start, stop) of `total` work items this part embeds."""
        return self.part * total // self.parts, (self.part + 1) * total // self.parts


@dataclass(frozen=True)
class IndexSettings:
    """How a run writes its indexes. Checked when made: UsageError (exit 2) on a shard size
    below 1, a size that is not one (`memory_budget` takes bytes or `8G`-style text), or
    a count a manifest cannot record."""

    indexes_dir: Path = defaults.DEFAULT_INDEXES_DIR
    # Vectors per shard of a new index (None: the default); an index keeps its own.
    shard_size: int | None = None
    # auto, Flat or a FAISS factory string; None: the index's own type (auto for a new one).
    index_type: str | None = None
    # Bytes `auto` may use, or a size such as "8G" (None: the index's own budget, 8 GiB for
    # a new one); held as bytes.
    memory_budget: int | str | None = None
    images_per_step: int = 32
    loader_threads: int = 4
    # This process's slice of a distributed run (None: from RANK / WORLD_SIZE, if launched).
    part: PartSpec | None = None
    # Keep the rows of files that are gone (an unmounted drive must not empty an index).
    keep_missing: bool = False
    # Rewrite shards whose deleted rows pass this share at the end of the run.
    compact_threshold: float = defaults.COMPACT_THRESHOLD
    # New indexes store the model's answer for every row, where the embedder reads them.
    answers: bool = True
    # Give an existing index without answers its rows' answers, by embedding them again.
    add_answers: bool = False

    def __post_init__(self) -> None:
        if self.shard_size is not None and self.shard_size < 1:
            raise UsageError("--shard-size must be at least 1")
        check_at_most("--shard-size", self.shard_size)
        if self.index_type is not None:
            object.__setattr__(self, "index_type", canonical_spec(self.index_type))
        budget = self.memory_budget
        if isinstance(budget, str):
            budget = parse_size(budget)
            if budget < 1:
                raise UsageError(
                    f"--memory-budget must be more than 0 bytes, not {self.memory_budget!r}"
                )
            object.__setattr__(self, "memory_budget", budget)
        elif budget is not None and budget < 1:
            raise UsageError(f"--memory-budget must be more than 0 bytes, not {budget!r}")
        check_at_most("--memory-budget", budget)

    @property
    def memory_bytes(self) -> int | None:
        """`memory_budget` in bytes (None: the index's own)."""
        return None if self.memory_budget is None else int(self.memory_budget)
