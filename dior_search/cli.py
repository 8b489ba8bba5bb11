"""The `dior-search` command: a thin typer layer over the library, one verb per stage."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

# typer vendors click and exports no base class of its command-line errors.
from typer._click.exceptions import ClickException

from dior_search.datasets import Collection
from dior_search.embedder import REFERENCE_MAX_SIDE, EmbedderSettings
from dior_search.errors import DiorError, InputError, UsageError
from dior_search.families import PositionScheme
from dior_search.index_store import DEFAULT_SHARD_SIZE
from dior_search.prompts import DEFAULT_TEMPLATE, PROMPT_TEMPLATES

if TYPE_CHECKING:
    from dior_search.bench import BenchResult, MethodModels

app = typer.Typer(
    name="dior-search",
    help="Conditional image search with DIOR embeddings from vision-language models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
# Messages on stderr stay one line each, whatever the terminal width: logs and grep read them.
err_console = Console(stderr=True, soft_wrap=True)

ModelOpt = Annotated[
    str,
    typer.Option(help="Hugging Face id, local model folder, or 'tiny' (the bundled demo model)."),
]
RevisionOpt = Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit).")]
TemplateOpt = Annotated[str, typer.Option(help=f"Prompt template: {', '.join(PROMPT_TEMPLATES)}.")]
LayerOpt = Annotated[int, typer.Option(help="Hidden-state index to read (-1: the last layer).")]
DtypeOpt = Annotated[
    str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16 or float16.")
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
PositionsOpt = Annotated[
    str,
    typer.Option(
        "--positions",
        help="Position scheme: 'reference' (the paper's code: sequential positions) or "
        "'native' (the model's own multimodal positions).",
    ),
]
MaxPixelsOpt = Annotated[
    int | None, typer.Option(help="Cap on image pixels before encoding (Qwen-VL models).")
]
MaxSideOpt = Annotated[
    int,
    typer.Option(
        help="Shrink images to this longer side first, as the paper's code does (0: never)."
    ),
]
BatchOpt = Annotated[int, typer.Option(help="Rows (image x condition) per forward pass.")]
TrustOpt = Annotated[bool, typer.Option(help="Allow the model repository's own code to run.")]


def embedder_settings(
    model: str,
    revision: str | None,
    template: str,
    layer: int,
    dtype: str,
    device: str,
    positions: str,
    max_pixels: int | None,
    max_side: int,
    batch_size: int,
    trust_remote_code: bool,
) -> EmbedderSettings:
    return EmbedderSettings(
        model=model,
        revision=revision,
        template=template,
        layer=layer,
        dtype=dtype,
        device=device,
        position_scheme=cast(PositionScheme, positions),  # EmbedderSettings checks it
        max_pixels=max_pixels,
        max_side=max_side or None,
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
    )


class RateColumn(ProgressColumn):
    """Items per second, as measured so far."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s", style="cyan")


class ProgressBar:
    """A rich bar with rate and ETA on stderr, shown from the moment the total is known."""

    def __init__(self, label: str, unit: str) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(unit),
            TimeRemainingColumn(),
            console=err_console,
        )
        self.label = label
        self.task: TaskID | None = None

    def start(self, total: int) -> None:
        self.task = self.progress.add_task(self.label, total=total)
        self.progress.start()

    def stage(self, label: str, total: int) -> None:
        """Start a new task on the same bar display, for a run of several stages."""
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.label = label
        self.start(total)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)


@contextmanager
def progress_bar(label: str, unit: str) -> Iterator[ProgressBar]:
    bar = ProgressBar(label, unit)
    try:
        yield bar
    finally:
        bar.progress.stop()


@app.callback()
def configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
) -> None:
    """Conditional image search with DIOR embeddings from vision-language models."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        quiet_libraries()


def quiet_libraries() -> None:
    """Keep third-party progress bars and load reports off the terminal."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


DatasetOpt = Annotated[
    str | None,
    typer.Option(help="A named dataset: synthetic, deepfashion, movie_posters, cub200, cars196."),
]
ImagesOpt = Annotated[Path | None, typer.Option(help="Any folder of images (unlabelled).")]
DatasetsDirOpt = Annotated[
    Path, typer.Option(help="Where named datasets live: DIR/NAME/ holds NAME's images.")
]
IndexesOpt = Annotated[Path, typer.Option(help="Root folder of the indexes.")]


def open_collection(dataset: str | None, images: Path | None, datasets_dir: Path) -> Collection:
    from dior_search.datasets import open_dataset, open_folder

    if dataset is not None and images is None:
        return open_dataset(dataset, datasets_dir)
    if images is not None and dataset is None:
        return open_folder(images)
    raise UsageError("give exactly one of --dataset NAME or --images DIR")


@app.command()
def index(
    dataset: DatasetOpt = None,
    images: ImagesOpt = None,
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition",
            "-c",
            help="Condition to index (repeatable): a dataset's condition name, free text, or "
            "'unconditional'. Default: all of the dataset's conditions.",
        ),
    ] = None,
    datasets_dir: DatasetsDirOpt = Path("datasets"),
    indexes: IndexesOpt = Path("indexes"),
    shard_size: Annotated[int, typer.Option(help="Vectors per shard.")] = DEFAULT_SHARD_SIZE,
    model: ModelOpt = "tiny",
    revision: RevisionOpt = None,
    template: TemplateOpt = DEFAULT_TEMPLATE,
    layer: LayerOpt = -1,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    positions: PositionsOpt = "reference",
    max_pixels: MaxPixelsOpt = None,
    max_side: MaxSideOpt = REFERENCE_MAX_SIDE,
    batch_size: BatchOpt = 8,
    trust_remote_code: TrustOpt = False,
    index_type: Annotated[
        str | None,
        typer.Option(
            help="auto (Flat while small, else a compressed type within --memory-budget), "
            "flat, or a FAISS factory string such as 'PCA256,IVF2048,SQ8,Refine(SQ8)'. "
            "Default: the index's own type, auto for a new index.",
        ),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(help="Size the index may take for auto, e.g. 8G (default: 8G)."),
    ] = None,
    part: Annotated[
        int | None,
        typer.Option(help="Embed only this part (0-based) of --parts: re-runs one failed part."),
    ] = None,
    parts: Annotated[
        int | None,
        typer.Option(help="Number of parts of a distributed run (accelerate launch sets it)."),
    ] = None,
) -> None:
    """Embed a collection under conditions into sharded FAISS indexes (resumable).

    Under `accelerate launch` every process embeds its own part and the last one to finish
    merges the parts into the index.
    """
    from dior_search.embedder import DiorEmbedder
    from dior_search.index_parts import PartSpec, launched_part, process_device
    from dior_search.index_types import canonical_spec, parse_size
    from dior_search.indexing import IndexSettings, index_collection, write_skipped

    if shard_size < 1:
        raise UsageError("--shard-size must be at least 1")
    if (part is None) != (parts is None):
        raise UsageError("give --part and --parts together")
    if parts is not None and launched_part() is not None:
        raise UsageError("--part/--parts run one part in one process; not under accelerate launch")
    spec = PartSpec(part, parts) if part is not None and parts is not None else None
    budget = parse_size(memory_budget) if memory_budget is not None else None
    index_type = canonical_spec(index_type) if index_type is not None else None
    device = process_device(device)
    collection = open_collection(dataset, images, datasets_dir)
    conditions = condition or list(collection.conditions)
    if not conditions:
        raise UsageError("--images needs at least one --condition (any free text)")
    settings = embedder_settings(
        model,
        revision,
        template,
        layer,
        dtype,
        device,
        positions,
        max_pixels,
        max_side,
        batch_size,
        trust_remote_code,
    )
    embedder = DiorEmbedder(settings)
    running = spec or launched_part()
    label = f"indexing {collection.name}" + (f" ({running.name})" if running else "")
    # Under accelerate launch, one bar (the first process's) rather than one per process.
    quiet = running is not None and running.part != 0 and spec is None
    with progress_bar(label, "img") as bar:
        report = index_collection(
            collection,
            conditions,
            embedder,
            embedder.describe(),
            IndexSettings(
                indexes_dir=indexes,
                shard_size=shard_size,
                index_type=index_type,
                memory_budget=budget,
                part=spec,
            ),
            on_start=None if quiet else bar.start,
            on_progress=None if quiet else bar.advance,
        )
    title = f"{collection.name}: {len(collection.items)} images"
    if report.part is not None:
        title += f", {report.part.name}"
    table = Table(title=title)
    for column in ("condition", "added", "index"):
        table.add_column(column)
    for name, directory in report.directories.items():
        table.add_row(name, str(report.added[name]), str(directory))
    console.print(table)
    listing = write_skipped(report)
    console.print(
        f"{report.already_indexed} already indexed, {len(report.skipped)} skipped"
        + (f" (listed in {listing})" if listing else "")
    )
    for path, reason in report.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {path}: {reason}", highlight=False)
    for name in report.merged:
        console.print(f"{name}: all parts complete, merged into {report.directories[name]}")
    for name, missing in report.waiting.items():
        console.print(
            f"{name}: waiting for parts {', '.join(map(str, missing))}; the last to finish "
            "merges (re-run a failed one with the same command, or --part K --parts N)"
        )


@app.command()
def query(
    image: Annotated[Path | None, typer.Argument(help="Query image (or use --id).")] = None,
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition",
            "-c",
            help="Condition to search under; repeat it to rank by several conditions at once.",
        ),
    ] = None,
    weight: Annotated[
        list[float] | None,
        typer.Option(
            "--weight",
            "-w",
            help="Weight of each --condition, in the same order (default: equal weights).",
        ),
    ] = None,
    dataset: DatasetOpt = None,
    images: ImagesOpt = None,
    index_path: Annotated[
        Path | None, typer.Option("--index", help="An index directory (instead of a collection).")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 10,
    row_id: Annotated[
        int | None, typer.Option("--id", help="Query with an indexed image's stored vector.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    sheet: Annotated[
        Path | None, typer.Option(help="Write a contact sheet PNG of the query and its results.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Pick the index built with this model (default: the only one)."),
    ] = None,
    indexes: IndexesOpt = Path("indexes"),
    dtype: Annotated[str | None, typer.Option(help="Override the index's dtype.")] = None,
    device: DeviceOpt = "auto",
    trust_remote_code: TrustOpt = False,
    search_params: Annotated[
        str | None,
        typer.Option(
            help="FAISS search parameters over the index's defaults, e.g. 'nprobe=64,"
            "k_factor_rf=16' (nprobe, efSearch, k_factor_rf, quantizer_efSearch)."
        ),
    ] = None,
    nprobe: Annotated[
        int | None, typer.Option(help="IVF lists to scan per shard (more: slower, better).")
    ] = None,
    ef_search: Annotated[
        int | None, typer.Option(help="HNSW search breadth (more: slower, better).")
    ] = None,
    mmap: Annotated[
        bool | None,
        typer.Option(
            "--mmap/--no-mmap", help="Memory-map shard files (default: shards of 16 MiB or more)."
        ),
    ] = None,
) -> None:
    """Search an index with an image (embedded with the index's own settings) or an id.

    With several --condition options, images are ranked by the weighted mean of their cosine
    similarities under each condition.
    """
    from dior_search.datasets import folder_collection_name
    from dior_search.query import QueryRequest, run_query

    if dataset is not None and images is not None:
        raise UsageError("give one of --dataset NAME, --images DIR or --index DIR")
    collection = dataset if images is None else folder_collection_name(images)
    params = [
        search_params,
        None if nprobe is None else f"nprobe={nprobe}",
        None if ef_search is None else f"efSearch={ef_search}",
    ]
    answer = run_query(
        QueryRequest(
            conditions=tuple(condition or ()),
            weights=tuple(weight) if weight else None,
            k=k,
            image=image,
            row_id=row_id,
            collection=collection,
            index=index_path,
            indexes_dir=indexes,
            model=model,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            search_params=",".join(p for p in params if p),
            mmap=mmap,
        )
    )
    several = len(answer.conditions) > 1
    if sheet is not None:
        from dior_search.contact_sheet import write_contact_sheet
        from dior_search.images import load_image

        query_image = answer.query_image or load_image(answer.query_path)
        write_contact_sheet(
            sheet, answer.title, query_image, answer.caption, answer.hits, answer.root
        )
    if as_json:
        rows = []
        for rank, hit in enumerate(answer.hits, start=1):
            row: dict[str, object] = {"rank": rank, "score": hit.score}
            if several:
                row["scores"] = dict(zip(answer.conditions, hit.scores, strict=True))
            rows.append({**row, "id": hit.id, "path": hit.path, "labels": hit.labels})
        print(json.dumps(rows, indent=2))
        return
    if not answer.hits:
        err_console.print(f"no results: {answer.title} holds no images", highlight=False)
        return
    table = Table(title=answer.title)
    columns = ("rank", "score", *(answer.conditions if several else ()), "path", "labels")
    for column in columns:
        table.add_column(column)
    for rank, hit in enumerate(answer.hits, start=1):
        labels = ", ".join(f"{key}={value}" for key, value in sorted(hit.labels.items()))
        scores = [f"{s:.4f}" for s in hit.scores] if several else []
        table.add_row(str(rank), f"{hit.score:.4f}", *scores, hit.path, labels)
    console.print(table)


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    dataset: Annotated[
        str | None, typer.Option(help="Serve only this named dataset's indexes.")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Serve only the indexes of this image folder.")
    ] = None,
    indexes: IndexesOpt = Path("indexes"),
    model: Annotated[
        str | None,
        typer.Option(help="Serve the indexes built with this model (default: the only one)."),
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="Override the indexes' dtype.")] = None,
    device: DeviceOpt = "auto",
    trust_remote_code: TrustOpt = False,
    max_upload_mb: Annotated[
        float, typer.Option(help="Largest image upload accepted, in MiB.")
    ] = 20.0,
    max_megapixels: Annotated[
        float, typer.Option(help="Largest image accepted, in millions of pixels.")
    ] = 50.0,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take.")] = 30.0,
    max_k: Annotated[int, typer.Option(help="Most results one query may ask for.")] = 100,
) -> None:
    """Serve a web page and a JSON API for (multi-)conditional search over built indexes."""
    from dior_search.datasets import folder_collection_name
    from dior_search.server import make_server
    from dior_search.service import SearchService, ServeSettings

    if dataset is not None and images is not None:
        raise UsageError("give at most one of --dataset NAME or --images DIR")
    collection = dataset if images is None else folder_collection_name(images)
    settings = ServeSettings(
        indexes_dir=indexes,
        model=model,
        collection=collection,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=int(max_megapixels * 1_000_000),
        timeout_s=timeout,
        max_k=max_k,
    )
    service = SearchService.open(settings)
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    server = make_server(service, host, port, "info" if verbose else "warning")
    for served in service.collections.values():
        names = ", ".join(served.conditions)
        console.print(f"{served.name}: {served.images} images under {names}", highlight=False)
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"serving with model {service.embedder_info['model']} at http://{shown}:{port}/ "
        "(Ctrl+C stops)",
        highlight=False,
    )
    server.run()


@app.command()
def bench(
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            help="Dataset to evaluate (repeatable). Default: every dataset "
            "whose images are present (synthetic is generated).",
        ),
    ] = None,
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition", "-c", help="Condition (repeatable). Default: all labelled ones."
        ),
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="dior, dior-unconditional, clip, generative (repeatable). "
            "Default: all; those whose models cannot be loaded are skipped.",
        ),
    ] = None,
    clip_model: Annotated[str, typer.Option(help="CLIP model of the clip method.")] = (
        "openai/clip-vit-large-patch14"
    ),
    text_encoder: Annotated[
        str, typer.Option(help="Sentence encoder of the generative method.")
    ] = ("sentence-transformers/sentence-t5-base"),
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG chart of recall@k.")] = None,
    datasets_dir: DatasetsDirOpt = Path("datasets"),
    indexes: IndexesOpt = Path("indexes"),
    model: ModelOpt = "tiny",
    revision: RevisionOpt = None,
    template: TemplateOpt = DEFAULT_TEMPLATE,
    layer: LayerOpt = -1,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    positions: PositionsOpt = "reference",
    max_pixels: MaxPixelsOpt = None,
    max_side: MaxSideOpt = REFERENCE_MAX_SIDE,
    batch_size: BatchOpt = 8,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Evaluate retrieval per dataset and condition: recall@k, MAP@R, precision@1."""
    from dior_search.bench import METHODS, BenchModels, MethodModels, run_bench
    from dior_search.datasets import DATASETS, open_dataset
    from dior_search.indexing import IndexSettings

    chosen_methods = method or list(METHODS)
    unknown = [m for m in chosen_methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    settings = embedder_settings(
        model,
        revision,
        template,
        layer,
        dtype,
        device,
        positions,
        max_pixels,
        max_side,
        batch_size,
        trust_remote_code,
    )
    models = MethodModels(BenchModels(settings, clip_model, text_encoder))
    if method is None:
        chosen_methods = loadable_methods(models, chosen_methods)
    collections = []
    for name in dataset or list(DATASETS):
        try:
            collections.append(open_dataset(name, datasets_dir))
        except InputError as exc:
            if dataset is not None:
                raise
            err_console.print(f"[yellow]skipped[/yellow] {exc}", highlight=False)
    result: BenchResult = {}
    with progress_bar("bench", "img") as bar:
        for collection in collections:
            result[collection.name] = run_bench(
                collection,
                condition or list(collection.conditions),
                chosen_methods,
                models,
                IndexSettings(indexes_dir=indexes),
                on_stage=bar.stage,
                on_progress=bar.advance,
            )
    for table in bench_tables(result, chosen_methods):
        # Print whole, never cropped, where a long condition name outgrows the terminal.
        console.print(table, width=max(console.width, console.measure(table).maximum))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
    if plot is not None:
        from dior_search.bench_plot import write_recall_chart

        write_recall_chart(result, plot)


def loadable_methods(models: MethodModels, methods: list[str]) -> list[str]:
    """The methods whose models load; each one that does not is named once on stderr."""
    usable = []
    for name in methods:
        try:
            models.get(name)
        except DiorError as exc:
            err_console.print(f"[yellow]skipping method {name}:[/yellow] {exc}", highlight=False)
            continue
        usable.append(name)
    if not usable:
        raise UsageError("no method could be loaded")
    return usable


METRIC_COLUMNS = {
    "recall@1": "R@1",
    "recall@5": "R@5",
    "recall@10": "R@10",
    "map@r": "MAP@R",
    "precision@1": "P@1",
}


def bench_tables(result: BenchResult, methods: list[str]) -> list[Table]:
    """One table per dataset, a row per (condition, method): seven columns, which fit an
    80-column terminal whatever the number of methods."""
    tables = []
    for dataset_name, conditions in result.items():
        table = Table(
            title=f"{dataset_name}: retrieval by condition (exact search, query excluded)",
            padding=(0, 1),
        )
        table.add_column("condition")
        table.add_column("method", no_wrap=True)
        for short in METRIC_COLUMNS.values():
            table.add_column(short, justify="right", no_wrap=True)
        for condition_name, per_method in conditions.items():
            for m in methods:
                cells = [
                    f"{per_method[m][metric]:.3f}" if m in per_method else "-"
                    for metric in METRIC_COLUMNS
                ]
                table.add_row(condition_name, m, *cells, end_section=m == methods[-1])
        tables.append(table)
    return tables


@app.command()
def demo(
    model: ModelOpt = "tiny",
    data_dir: Annotated[
        Path, typer.Option(help="Where the synthetic test split is written.")
    ] = Path("datasets/synthetic"),
    n_images: Annotated[int, typer.Option(help="Images in the test split.")] = 400,
    template: TemplateOpt = DEFAULT_TEMPLATE,
    layer: LayerOpt = -1,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    positions: PositionsOpt = "reference",
    max_side: MaxSideOpt = REFERENCE_MAX_SIDE,
    batch_size: BatchOpt = 16,
) -> None:
    """Offline demo: embed the synthetic test split under each condition and score retrieval."""
    from dior_search.demo import run_demo

    settings = embedder_settings(
        model, None, template, layer, dtype, device, positions, None, max_side, batch_size, False
    )
    started = time.perf_counter()
    with progress_bar("embedding", "emb") as bar:
        result = run_demo(
            settings, data_dir, n_images=n_images, on_start=bar.start, on_progress=bar.advance
        )
    table = Table(title=f"recall@1 on {result.n_images} synthetic test images, model {model}")
    table.add_column("condition")
    table.add_column("prompt condition")
    table.add_column("recall@1 (conditional)", justify="right")
    table.add_column("recall@1 (unconditional)", justify="right")
    for score in result.scores:
        table.add_row(
            score.condition,
            score.prompt_condition,
            f"{score.recall_at_1:.3f}",
            f"{score.unconditional_recall_at_1:.3f}",
        )
    console.print(table)
    for example in result.examples:
        query = example.query
        hits = Table(
            title=f"query {query.file_name} ({query.size} {query.color} {query.pattern} shape on "
            f"{query.background}) under condition '{example.condition}'"
        )
        for column in ("rank", "score", "image", "color", "background", "pattern", "size"):
            hits.add_column(column)
        for rank, (item, similarity) in enumerate(example.hits, start=1):
            hits.add_row(
                str(rank),
                f"{similarity:.3f}",
                item.file_name,
                item.color,
                item.background,
                item.pattern,
                item.size,
            )
        console.print(hits)
    console.print(f"done in {time.perf_counter() - started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every failure becomes one line on stderr and a non-zero exit code."""
    try:
        code = app(args=argv, prog_name="dior-search", standalone_mode=False)
    except DiorError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        return exc.exit_code
    except ClickException as exc:
        err_console.print(
            f"[red]error:[/red] {exc.format_message()}", highlight=False, soft_wrap=True
        )
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    # Without standalone mode typer returns 130 for an interrupted command rather than raising.
    if code == 130:
        err_console.print("[red]error:[/red] interrupted")
        return 130
    return 0


def run() -> None:
    sys.exit(main())
