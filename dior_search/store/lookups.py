"""Look-ups by id that every reader answers the same way from its live ids (ascending) and
its columns: whether an id is live, positions, rows, labels, paths, content hashes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dior_search.errors import IndexStoreError
from dior_search.store.backend import IndexLocation
from dior_search.store.schema import LABEL_PREFIX, PATH_BYTES, Row, stored_paths


class RowLookups:
    """Id look-ups over `ids` (every live row's id, ascending) and `column(name)` (a column
    of every live row, in id order); subclasses give those and `vectors`."""

    ids: np.ndarray

    @property
    def location(self) -> IndexLocation:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, name: str) -> list[Any]:
        raise NotImplementedError

    def column_names(self) -> list[str]:
        raise NotImplementedError

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def contains(self, row_id: int) -> bool:
        position = int(np.searchsorted(self.ids, row_id))
        return position < len(self.ids) and int(self.ids[position]) == row_id

    def positions(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Each id's position in `ids` order (0 .. len - 1); IndexStoreError on an unknown or
        deleted id."""
        wanted = np.asarray(ids, dtype=np.int64)
        positions = np.searchsorted(self.ids, wanted)
        found = positions < len(self.ids)
        found[found] = self.ids[positions[found]] == wanted[found]
        if not found.all():
            missing = int(wanted[np.argmin(found)])
            if len(self) == 0:
                raise IndexStoreError(f"no id {missing}: index {self.location} is empty")
            raise IndexStoreError(
                f"no id {missing} in {self.location} (ids {self.ids[0]}..{self.ids[-1]})"
            )
        return positions

    def vector(self, row_id: int) -> np.ndarray:
        found: np.ndarray = self.vectors([row_id])[0]
        return found

    def label_names(self) -> list[str]:
        """The labels stored beside the vectors (the collection's label columns)."""
        return [
            name.removeprefix(LABEL_PREFIX)
            for name in self.column_names()
            if name.startswith(LABEL_PREFIX)
        ]

    def labels(self, name: str) -> list[str | None]:
        """One label of every row, in id order (None where a row has none)."""
        return [None if v is None else str(v) for v in self.column(LABEL_PREFIX + name)]

    def content_hashes(self) -> list[str]:
        """Every row's content hash, in id order."""
        return self.column("content_hash")

    def paths(self) -> list[str]:
        """Every row's image path, in id order (exact, also where a name is not UTF-8)."""
        exact = self.column(PATH_BYTES) if PATH_BYTES in self.column_names() else None
        return stored_paths(self.column("path"), exact)

    def rows(self, ids: Sequence[int] | np.ndarray) -> list[Row]:
        """The metadata of `ids`, in the order given."""
        positions = self.positions(ids).tolist()
        paths, hashes = self.paths(), self.content_hashes()
        labels = {name: self.labels(name) for name in self.label_names()}
        return [
            Row(
                paths[p],
                hashes[p],
                {name: values[p] for name, values in labels.items() if values[p] is not None},
            )
            for p in positions
        ]

    def row(self, row_id: int) -> Row:
        return self.rows([row_id])[0]
