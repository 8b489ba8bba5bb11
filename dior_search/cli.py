"""The `dior-search` command: a thin typer layer over the library, one verb per stage."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, cast

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

from dior_search.embedder import EmbedderSettings
from dior_search.errors import DiorError
from dior_search.families import PositionScheme
from dior_search.prompts import DEFAULT_TEMPLATE, PROMPT_TEMPLATES

app = typer.Typer(
    name="dior-search",
    help="Conditional image search with DIOR embeddings from vision-language models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

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
    batch_size: BatchOpt = 16,
) -> None:
    """Offline demo: embed the synthetic test split under each condition and score retrieval."""
    from dior_search.demo import run_demo

    settings = embedder_settings(
        model, None, template, layer, dtype, device, positions, None, batch_size, False
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
            title=f"query {query.file_name} ({query.color} {query.pattern} {query.shape} on "
            f"{query.background}) under condition '{example.condition}'"
        )
        for column in ("rank", "score", "image", "color", "background", "pattern", "shape"):
            hits.add_column(column)
        for rank, (item, similarity) in enumerate(example.hits, start=1):
            hits.add_row(
                str(rank),
                f"{similarity:.3f}",
                item.file_name,
                item.color,
                item.background,
                item.pattern,
                item.shape,
            )
        console.print(hits)
    console.print(f"done in {time.perf_counter() - started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every failure becomes one line on stderr and a non-zero exit code."""
    try:
        app(args=argv, prog_name="dior-search", standalone_mode=False)
    except DiorError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except ClickException as exc:
        err_console.print(
            f"[red]error:[/red] {exc.format_message()}", highlight=False, soft_wrap=True
        )
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("[red]error:[/red] interrupted")
        return 130
    return 0


def run() -> None:
    sys.exit(main())
