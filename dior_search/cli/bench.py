"""`dior-search bench`: retrieval metrics per dataset, condition and method."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dior_search import defaults
from dior_search.cli.app import app, console, err_console
from dior_search.cli.hub import settle_hub_access
from dior_search.cli.options import (
    DatasetsDirOpt,
    IndexesOpt,
    StoreOpt,
    choose_model,
    default_model_hint,
    opened_store,
    with_embedder_options,
)
from dior_search.cli.outputs import check_output, write_output
from dior_search.cli.progress import progress_bar
from dior_search.data.collections import check_conditions
from dior_search.data.paths import shown
from dior_search.errors import UsageError
from dior_search.models.settings import EmbedderOptions

if TYPE_CHECKING:
    from dior_search.evaluation.bench import BenchResult

METRIC_COLUMNS = {
    "recall@1": "R@1",
    "recall@5": "R@5",
    "recall@10": "R@10",
    "map@r": "MAP@R",
    "precision@1": "P@1",
    # Where the collection has other labels: how much they still drive the neighbours.
    "leakage": "leak",
}
# Clustering as the reference evaluation scores it (k-means, as many clusters as labels).
CLUSTER_COLUMNS = {"ami": "AMI", "nmi": "NMI"}
# Where an index stores the model's answers: the model as a tagger and a text search engine.
ANSWER_COLUMNS = {
    "answer_accuracy": "answer = label",
    "text_precision@10": "text P@10",
    "text_precision@10_min": "worst value",
}


@app.command()
@with_embedder_options(exclude=("layer",))
def bench(
    options: EmbedderOptions,
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
            help="dior, dior-unconditional, clip, generative, indirect (repeatable). "
            "Default: all; those whose models cannot be loaded are skipped.",
        ),
    ] = None,
    layer: Annotated[
        list[int] | None,
        typer.Option(
            "--layer",
            help="Hidden-state index of the DIOR methods (-1: the last layer); repeat it to "
            "score several layers, one row each, all read from the same forward passes.",
        ),
    ] = None,
    distance: Annotated[
        str,
        typer.Option(
            help="cosine (as search ranks) or euclidean (on the raw vectors, as the paper's "
            "numbers were computed)."
        ),
    ] = "cosine",
    clip_model: Annotated[
        str, typer.Option(help="CLIP model of the clip method.")
    ] = defaults.DEFAULT_CLIP_MODEL,
    text_encoder: Annotated[
        str, typer.Option(help="Sentence encoder of the generative method.")
    ] = defaults.DEFAULT_TEXT_ENCODER,
    generative_answers: Annotated[
        str,
        typer.Option(
            help="generate: the generative method generates its answers; stored: it embeds "
            "the answers the DIOR indexes store (no generation; the same numbers where they "
            "are what it generates: index with --positions native, its positions)."
        ),
    ] = "generate",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG chart of recall@k.")] = None,
    datasets_dir: DatasetsDirOpt = defaults.DEFAULT_DATASETS_DIR,
    indexes: IndexesOpt = defaults.DEFAULT_INDEXES_DIR,
    store: StoreOpt = None,
) -> None:
    """Evaluate retrieval per dataset and condition: recall@k, MAP@R, precision@1, AMI, NMI."""
    from dior_search.evaluation.metrics import DISTANCES

    if distance not in DISTANCES:
        raise UsageError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")
    if generative_answers not in ("generate", "stored"):
        raise UsageError(
            f"unknown --generative-answers {generative_answers!r}; valid: generate, stored"
        )
    layers = list(layer or [defaults.DEFAULT_LAYER])
    options = replace(options, layer=layers[0])
    options.dior()  # every embedding option checked: batch size, dtype, template, ...
    conditions = check_conditions(condition) if condition else None
    # Output files are checked before the run, not after it.
    if json_path is not None:
        check_output(json_path, "--json")
    if plot is not None:
        check_output(plot, "--plot")
    vlm = options.model or defaults.default_model(dataset or [])
    settle_hub_access([vlm, clip_model, text_encoder])
    # Only now the model libraries (torch): the usage errors above answer at once.
    from dior_search.evaluation.bench import (
        METHODS,
        MethodModels,
        open_bench_datasets,
        run_benches,
    )
    from dior_search.indexing.job import IndexSettings

    chosen = method or list(METHODS)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    for name in method or []:
        if METHODS[name] != "dior":
            options.only_dior_source(name)
    collections, problems = open_bench_datasets(dataset, datasets_dir)
    for problem in problems:
        err_console.print(f"[yellow]{escape(shown(problem))}[/yellow]", highlight=False)
    resolved = choose_model(options, [c.name for c in collections])
    models = MethodModels(
        replace(resolved, clip_model=clip_model, text_encoder=text_encoder),
        layers,
        generative_answers=generative_answers == "stored",
    )
    with default_model_hint(options):
        if method is None:
            chosen, problems = models.loadable(chosen)
            for problem in problems:
                err_console.print(f"[yellow]{escape(shown(problem))}[/yellow]", highlight=False)
        else:
            for name in chosen:
                models.get(name)
    with (
        opened_store(store, indexes, create=True) as index_store,
        progress_bar("bench", "img", err_console) as bar,
    ):
        result = run_benches(
            collections,
            conditions,
            chosen,
            models,
            IndexSettings(indexes_dir=indexes),
            on_stage=bar.stage,
            on_progress=bar.advance,
            distance=distance,
            store=index_store,
        )
    rows = [row for name in chosen for row in models.scored_as(name)]
    for table in bench_tables(result, rows):
        # Print whole, never cropped, where a long condition name outgrows the terminal.
        console.print(table, width=max(console.width, console.measure(table).maximum))
    if json_path is not None:
        text = json.dumps(result, indent=2)
        write_output(json_path, "--json", lambda tmp: write_text(tmp, text))
    if plot is not None:
        from dior_search.cli.recall_chart import write_recall_chart

        write_recall_chart(result, plot)


def bench_tables(result: BenchResult, methods: list[str]) -> list[Table]:
    """Per dataset, a table of retrieval metrics (a row per condition and method, at most
    eight columns, which fit an 80-column terminal whatever the number of methods), one of
    clustering (AMI, NMI), and one of the model's answers where any index stores them."""
    tables = []
    for dataset_name, conditions in result.items():
        titles = {
            "retrieval by condition (exact search, query excluded)": METRIC_COLUMNS,
            "clustering by condition (k-means, k = the number of labels)": CLUSTER_COLUMNS,
            "the model's answers: as tags, and as text search (each label value asked)": (
                ANSWER_COLUMNS
            ),
        }
        for title, columns in titles.items():
            columns = {
                metric: short
                for metric, short in columns.items()
                if any(metric in scores for per in conditions.values() for scores in per.values())
            }
            if not columns:
                continue
            rows = [
                m
                for m in methods
                if any(m in per and set(columns) & set(per[m]) for per in conditions.values())
            ]
            tables.append(metric_table(f"{dataset_name}: {title}", conditions, rows, columns))
    return tables


def metric_table(
    title: str,
    conditions: dict[str, dict[str, dict[str, float]]],
    methods: list[str],
    columns: dict[str, str],
) -> Table:
    """A row per (condition, method), a column per metric of `columns`."""
    table = Table(title=escape(shown(title)), padding=(0, 1))
    table.add_column("condition")
    table.add_column("method", no_wrap=True)
    for short in columns.values():
        table.add_column(short, justify="right", no_wrap=True)
    for condition_name, per_method in conditions.items():
        for m in methods:
            scores = per_method.get(m, {})
            cells = [cell(scores, metric) for metric in columns]
            table.add_row(escape(shown(condition_name)), m, *cells, end_section=m == methods[-1])
    return table


def cell(scores: dict[str, float], metric: str) -> str:
    """A metric as the table shows it: leakage signed, a missing one as a dash."""
    if metric not in scores:
        return "-"
    return f"{scores[metric]:+.3f}" if metric == "leakage" else f"{scores[metric]:.3f}"


def write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
