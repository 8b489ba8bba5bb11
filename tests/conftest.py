import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"
# auto means bf16 on a CPU with bf16 instructions; the equality tests compare fp32 runs, so the
# suite runs in fp32 unless a test asks for bf16 (tests/models/test_cpu_dtype.py checks auto).
os.environ.setdefault("DIOR_SEARCH_CPU_BF16", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As `dior-search` sets it before any model library is imported: no load progress on stderr,
# where errors must be the only line.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from tiny_models import BASELINE_BUILDERS, BUILDERS

# Property tests check results, never time: on a busy 2-core machine one example can take
# longer than Hypothesis's default 200 ms deadline, which would fail a correct run.
settings.register_profile("dior", deadline=None)
settings.load_profile("dior")

if TYPE_CHECKING:
    from dior_search.serve.service import SearchService


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved random-weight model per supported family, built once per session."""
    root = tmp_path_factory.mktemp("models")
    return {family: build(root / family) for family, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def baseline_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved random-weight CLIP and text-encoder models for the baselines, built once."""
    root = tmp_path_factory.mktemp("baseline_models")
    return {name: build(root / name) for name, build in BASELINE_BUILDERS.items()}


@pytest.fixture
def mixed_images() -> list[Image.Image]:
    """Random images of different sizes and aspect ratios."""
    rng = np.random.default_rng(7)
    sizes = [(56, 56), (84, 140), (140, 70), (60, 200), (113, 97)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


SYNTHETIC_CONDITIONS = ("color", "background", "pattern", "size", "unconditional")


@pytest.fixture(scope="session")
def synthetic_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """datasets/ and indexes/ with the 400-image synthetic test split indexed by the tiny model
    under every condition and without one (3 shards each), built once per session."""
    from dior_search.cli import main

    root = tmp_path_factory.mktemp("synthetic")
    args = [
        "index",
        "--dataset",
        "synthetic",
        "--datasets-dir",
        str(root / "datasets"),
        "--indexes",
        str(root / "indexes"),
        "--shard-size",
        "150",
        "--device",
        "cpu",
        "--batch-size",
        "16",
    ]
    for condition in SYNTHETIC_CONDITIONS:
        args += ["--condition", condition]
    assert main(args) == 0
    return root


SERVE_CONDITIONS = ("color", "background")
# The serve tests run on each store; the Milvus Lite variants are marked slow.
SERVE_STORES = ["folder", pytest.param("milvus-lite", marks=pytest.mark.slow)]


@dataclass(frozen=True)
class Served:
    """A small synthetic collection indexed for the serve tests, and a service over it."""

    root: Path
    service: "SearchService"
    # The command line's options that name the store: --indexes DIR or --store URI.
    store_args: tuple[str, ...] = ()

    @property
    def indexes(self) -> Path:
        return self.root / "indexes"

    def image(self, row_id: int) -> Path:
        return self.root / "datasets" / "synthetic" / "test" / f"{row_id:05d}.png"


@pytest.fixture(scope="session", params=SERVE_STORES)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """120 synthetic images under color and background (3 shards, or 3 commits to a Milvus
    Lite collection), the tiny model loaded once per store."""
    from stores import opened, store_args, store_spec

    from dior_search.data.collections import open_dataset
    from dior_search.data.synthetic import write_dataset
    from dior_search.indexing.job import IndexSettings
    from dior_search.indexing.run import index_collection
    from dior_search.models.dior import DiorEmbedder
    from dior_search.models.settings import DiorSettings
    from dior_search.search.searcher import Searcher
    from dior_search.serve.service import SearchService, ServeSettings

    kind = request.param
    root = tmp_path_factory.mktemp(f"serve-{kind}")
    write_dataset(root / "datasets" / "synthetic", {"test": 120})
    embedder = DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=16))
    store = opened(kind, root)
    index_collection(
        open_dataset("synthetic", root / "datasets"),
        SERVE_CONDITIONS,
        embedder,
        IndexSettings(indexes_dir=root / "indexes", shard_size=50),
        store=store,
    )
    settings = ServeSettings(
        indexes_dir=root / "indexes", store=store_spec(kind, root), device="cpu"
    )
    searcher = Searcher.open(store, options=settings.search_options())
    service = SearchService(Searcher(searcher.entries, searcher.options, embedder), settings)
    yield Served(root, service, tuple(store_args(kind, root)))
    store.close()


@pytest.fixture(scope="session")
def live_url(served: Served) -> Iterator[str]:
    """The served app on a free 127.0.0.1 port, in a thread, for the whole session."""
    from serving import running

    with running(served.service) as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def milvus_server_stopped() -> Iterator[None]:
    """The standalone Milvus server some store tests start (tests/milvus_server.py, on first
    use, loopback only) runs for the rest of the session and is stopped at its end."""
    yield
    import milvus_server

    milvus_server.stop()
