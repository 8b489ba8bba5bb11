"""`dior-search query`: search a collection's indexes with an image, an indexed image's id, or
words the model answered (`--text color=red`), among the images that pass `--where`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dior_search import defaults
from dior_search.cli.app import app, console, err_console
from dior_search.cli.hub import settle_hub_access
from dior_search.cli.options import (
    DatasetOpt,
    DeviceOpt,
    DtypeOverrideOpt,
    ImagesOpt,
    IndexesOpt,
    StoreOpt,
    TrustOpt,
    WhereOpt,
    check_device,
    collection_name,
    given_path,
    opened_store,
)
from dior_search.cli.outputs import check_output
from dior_search.data.collections import check_condition
from dior_search.data.paths import shown
from dior_search.errors import UsageError

if TYPE_CHECKING:
    from dior_search.search.request import SearchOptions, SearchResult
    from dior_search.search.searcher import Searcher
    from dior_search.search.terms import Term
    from dior_search.store.backend import IndexStore


# The request's rules (search.request.Wording) in the words of this command's options.
CLI_WORDING = {
    "one_query": "give a query IMAGE or --id ID (one of them), or --example terms",
    "words_only": "every --condition has a --text word: give no IMAGE or --id (or a condition "
    "without a word, searched by the image)",
}


@app.command()
def query(
    image: Annotated[
        Path | None, typer.Argument(parser=given_path, help="Query image (or use --id).")
    ] = None,
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition",
            "-c",
            help="Condition to search under; repeat it to rank by several conditions at once.",
        ),
    ] = None,
    text: Annotated[
        list[str] | None,
        typer.Option(
            "--text",
            help="CONDITION=WORD: ask the model about WORD under CONDITION: images it answered "
            "that word rank first (a bare WORD pairs with the -c options when there are as "
            "many and no query image).",
        ),
    ] = None,
    example: Annotated[
        list[str] | None,
        typer.Option("--example", help="CONDITION=IMAGE: more like IMAGE under CONDITION."),
    ] = None,
    example_id: Annotated[
        list[str] | None,
        typer.Option(
            "--example-id", help="CONDITION=ID: more like the indexed image ID under CONDITION."
        ),
    ] = None,
    word: Annotated[
        list[str] | None,
        typer.Option(
            "--word",
            help="CONDITION=WORD: more like the images whose stored answer under CONDITION "
            "is WORD.",
        ),
    ] = None,
    not_image: Annotated[
        list[str] | None,
        typer.Option(
            "--not",
            help="[CONDITION=]IMAGE: less like IMAGE under CONDITION (default: under every "
            "condition searched by example).",
        ),
    ] = None,
    not_id: Annotated[
        list[str] | None,
        typer.Option("--not-id", help="[CONDITION=]ID: less like the indexed image ID."),
    ] = None,
    not_word: Annotated[
        list[str] | None,
        typer.Option(
            "--not-word",
            help="CONDITION=WORD: less like the images whose stored answer is WORD.",
        ),
    ] = None,
    distinct: Annotated[
        float | None,
        typer.Option(
            "--distinct",
            help="Hide a result whose picture is at least this alike to a better-ranked "
            "one's (copies: 0.99 hides re-encoded, resized and cropped ones).",
        ),
    ] = None,
    where: WhereOpt = None,
    weight: Annotated[
        list[float] | None,
        typer.Option(
            "--weight",
            "-w",
            help="Weight of each --condition searched by the image, in the same order "
            "(default: equal weights).",
        ),
    ] = None,
    dataset: DatasetOpt = None,
    images: ImagesOpt = None,
    index_path: Annotated[
        Path | None,
        typer.Option(
            "--index", parser=given_path, help="An index directory (instead of a collection)."
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = defaults.DEFAULT_K,
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
    indexes: IndexesOpt = defaults.DEFAULT_INDEXES_DIR,
    store: StoreOpt = None,
    dtype: DtypeOverrideOpt = None,
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
    """Search an index with an image (embedded with the index's own settings), an id, or words.

    With several --condition options, images are ranked by the weighted mean of their cosine
    similarities under each condition. A condition given a --text word ranks the images the
    model answered that word first (then by the word's probability); --where keeps only the
    images that pass every filter.
    """
    # Light modules only until every option is checked: a usage error answers at once,
    # before torch and the model libraries load (see test_usage_errors_load_no_model_library).
    from dior_search.cli.query_terms import ImageLoader, TermOptions, query_parts
    from dior_search.models.settings import check_dtype
    from dior_search.search.filters import parse_filters
    from dior_search.search.request import SearchRequest, Wording, check_k, check_query_given
    from dior_search.store.stores import SearchParams

    conditions = tuple(condition or ())
    term_options = TermOptions(
        *(tuple(v or ()) for v in (example, example_id, word, not_image, not_id, not_word))
    )
    texts = tuple(text or ())
    load = ImageLoader()
    if index_path is not None and not conditions and texts and not term_options.given:
        if len(texts) > 1:
            raise UsageError("--index searches one condition: give one --text")
        words: tuple[str | None, ...] | None = (texts[0].rpartition("=")[2],)
        terms: tuple[Term, ...] = ()
    else:
        parts = query_parts(conditions, texts, term_options, image, row_id, load)
        conditions, words, terms = parts.conditions, parts.words, parts.terms
    by_image = not terms and (words is None or None in words)
    if not terms:  # with terms, a query IMAGE is one of the examples
        given = (image is not None) + (row_id is not None)
        check_query_given(by_image, given, composed=False, wording=Wording(**CLI_WORDING))
    if weight and not by_image:
        raise UsageError(
            "--weight weighs the conditions searched by the image; every --condition here has "
            "a --text word (give no --weight)"
        )
    for name in condition or ():
        check_condition(name)
    check_device(device)
    if dtype is not None:
        check_dtype(dtype)
    parse_filters(where or ())
    params = SearchParams.parse(search_params, nprobe, ef_search)  # before anything loads
    check_target(conditions, dataset, images, index_path, store)
    if sheet is not None:
        check_output(sheet, "--sheet")
    if image is not None or words is not None:  # a model is loaded: its files may be asked
        settle_hub_access([None])
    from dior_search.search.request import SearchOptions

    check_k(k)
    # The cheapest check first: a missing image is an input error whatever the index.
    query_image = load(image) if image is not None and not terms else None
    options = SearchOptions(
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        search_params=params,
        mmap=mmap,
    )
    with opened_store(store, indexes) as index_store:
        searcher, conditions = open_searcher(
            conditions, dataset, images, index_path, index_store, model, options
        )
        result = searcher.search(
            SearchRequest(
                conditions=conditions,
                collection=searcher.entries[0].collection,
                weights=tuple(weight) if weight else None,
                k=k,
                image=query_image,
                id=None if terms else row_id,
                words=words,
                where=tuple(where or ()),
                terms=terms,
                distinct=distinct,
            )
        )
    if sheet is not None:
        from dior_search.cli.contact_sheet import write_contact_sheet
        from dior_search.data.reading import load_item_image

        caption = image.name if image is not None else f"id {row_id}"
        if terms:  # the first positive image example, else the top hit
            shown_term = next((t for t in terms if t.positive and t.image is not None), None)
            query_image = None if shown_term is None else shown_term.image
            caption = "examples" if shown_term is None else shown_term.example
        if query_image is None and result.query.path is not None:
            query_image = load_item_image(result.root, str(result.query.path))
        write_contact_sheet(sheet, result.title, query_image, caption, result.hits, result.root)
    if result.unlisted:
        err_console.print(
            f"warning: {len(result.unlisted)} of the results are no longer in the label table "
            f"of {shown(result.collection.name)} (shown without labels; `dior-search index` "
            "drops them)",
            markup=False,
            highlight=False,
        )
    if distinct is not None:
        # Said even when none were: the person asked for copies to be hidden.
        err_console.print(
            f"{result.hidden} copies of better-ranked results hidden (--distinct {distinct:g})",
            markup=False,
            highlight=False,
        )
    if as_json:
        print(json.dumps([hit.to_json() for hit in result.hits], indent=2))
        return
    if not result.hits:
        why = "no image passes the filters" if result.filters else "it holds no images"
        err_console.print(f"no results: {shown(result.title)}: {why}", markup=False)
        return
    console.print(result_table(result))


def open_searcher(
    conditions: tuple[str, ...],
    dataset: str | None,
    images: Path | None,
    index_path: Path | None,
    indexes: IndexStore,
    model: str | None,
    options: SearchOptions,
) -> tuple[Searcher, tuple[str, ...]]:
    """The searcher over what the options name, and the conditions to search under."""
    from dior_search.search.searcher import NotIndexed, Searcher

    if index_path is not None:
        searcher = Searcher.of_directories([index_path], options)
        indexed = searcher.entries[0].condition
        if conditions and conditions[0] != indexed:
            raise NotIndexed(
                f"--index {index_path} is the index of condition '{indexed}', not "
                f"'{conditions[0]}' (give -c {indexed}, or no -c)"
            )
        return searcher, (indexed,)
    name = collection_name(dataset, images)
    return Searcher.open(indexes, collection=name, model=model, options=options), conditions


def check_target(
    conditions: tuple[str, ...],
    dataset: str | None,
    images: Path | None,
    index_path: Path | None,
    store: str | None,
) -> None:
    """UsageError unless the options name one thing to search: an index folder (and at most
    its condition), or a collection and its conditions."""
    if index_path is not None:
        if store is not None:
            raise UsageError("--index names an index folder; give it without --store")
        if dataset is not None or images is not None:
            raise UsageError("give one of --dataset NAME, --images DIR or --index DIR")
        if len(conditions) > 1:
            raise UsageError(
                "--index takes one condition; combine conditions of a collection "
                "with --dataset NAME or --images DIR"
            )
        return
    name = collection_name(dataset, images)
    if not conditions:
        raise UsageError("--condition is required (or give --index DIR)")
    if name is None:
        raise UsageError("give one of --dataset NAME, --images DIR or --index DIR")


def result_table(result: SearchResult) -> Table:
    """The hits as a table: rank, score (and each condition's), path, the model's answers
    under the searched conditions, labels (where any hit has some). Paths, answers and labels
    fold onto more lines where the terminal is narrow: never cut."""
    several = len(result.conditions) > 1 or bool(result.words)
    names = [c.name for c in result.conditions]
    answered = any(hit.answers for hit in result.hits)
    labelled = any(hit.labels for hit in result.hits)
    table = Table(title=escape(shown(result.title)))
    for column in ("rank", "score", *(names if several else ())):
        table.add_column(escape(shown(column)), no_wrap=column in ("rank", "score"))
    for column in ("path", *(("answers",) if answered else ()), *(("labels",) if labelled else ())):
        table.add_column(column, overflow="fold")
    for hit in result.hits:
        labels = ", ".join(f"{key}={value}" for key, value in sorted(hit.labels.items()))
        answers = ", ".join(f"{key}={value}" for key, value in hit.answers.items())
        scores = [score_cell(hit.scores[n], hit.scored_by.get(n)) for n in names] if several else []
        table.add_row(
            str(hit.rank),
            f"{hit.score:.4f}",
            *scores,
            escape(shown(hit.path)),
            *((escape(shown(answers)),) if answered else ()),
            *((escape(shown(labels)),) if labelled else ()),
        )
    return table


def score_cell(score: float, scored_by: str | None) -> str:
    """A cosine, or a word's log-probability with what it was scored by."""
    return f"{score:.4f}" if scored_by is None else f"{score:.4f} ({scored_by})"
