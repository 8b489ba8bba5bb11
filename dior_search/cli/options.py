"""Options shared by several verbs, declared once.

`with_embedder_options` gives a command every embedding option (model, template, layer, ...)
and hands them to it as one `EmbedderOptions`; the other shared options are typed aliases.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints
from urllib.parse import urlsplit

import typer

from dior_search import defaults
from dior_search.cli.app import err_console
from dior_search.data import collections, sources
from dior_search.data.collections import DATASETS, Collection
from dior_search.errors import ModelError, UsageError
from dior_search.models.prompts import PROMPT_TEMPLATES
from dior_search.models.settings import EmbedderOptions

if TYPE_CHECKING:
    from dior_search.store.backend import IndexStore


def given_path(text: str) -> Path:
    """A path option's value; an empty one is refused (it would mean the working folder)."""
    if not text:
        raise typer.BadParameter("an empty path: give a file or folder name ('.' for this folder)")
    return Path(text)


DatasetOpt = Annotated[str | None, typer.Option(help=f"A named dataset: {', '.join(DATASETS)}.")]
ImagesOpt = Annotated[
    Path | None,
    typer.Option(
        parser=given_path,
        help="Unlabelled images: a folder of image files, a WebDataset .tar shard, a brace "
        "pattern of shards (shards/{00000..00099}.tar), a folder of shards, or Parquet "
        "file(s) of image bytes (img2dataset's layout).",
    ),
]
ImageColumnOpt = Annotated[
    str | None,
    typer.Option(
        help="Parquet column holding the image bytes (default: jpg, png, webp, jpeg, image or "
        "img, whichever is there, or the only binary column)."
    ),
]
DatasetsDirOpt = Annotated[
    Path,
    typer.Option(
        parser=given_path, help="Where named datasets live: DIR/NAME/ holds NAME's images."
    ),
]
IndexesOpt = Annotated[
    Path,
    typer.Option(
        envvar=defaults.INDEXES_ENV,
        show_envvar=True,
        help="Root folder of the indexes (relative to the current folder).",
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        help="Where the indexes are: omit it for the folders under --indexes; "
        "milvus-lite:PATH.db (Milvus Lite, inside this process), milvus://HOST:PORT or "
        "https://HOST[:PORT] (a Milvus server; its token in $DIOR_MILVUS_TOKEN). Needs "
        "pip install 'dior-search[milvus]'.",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
TrustOpt = Annotated[bool, typer.Option(help="Allow the model repository's own code to run.")]
DtypeOverrideOpt = Annotated[str | None, typer.Option(help="Override the indexes' dtype.")]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        help="Only images whose answer under a condition is a word (CONDITION=WORD) or whose "
        "label is a value (label:NAME=VALUE); repeatable, all must hold.",
    ),
]
PickModelOpt = Annotated[
    str | None,
    typer.Option(help="Pick the indexes built with this model (default: the only one)."),
]

# The embedding options, as typer parameters; their names are EmbedderOptions' fields.
EMBEDDER_PARAMETERS: dict[str, Any] = {
    "model": Annotated[
        str | None,
        typer.Option(
            help="Hugging Face id, local model folder, or 'tiny' (the bundled demo model). "
            f"Default: {defaults.DEMO_MODEL} for the {defaults.DEMO_COLLECTION} dataset, "
            f"{defaults.DEFAULT_MODEL} for any other collection.",
        ),
    ],
    "revision": Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit).")],
    "template": Annotated[
        str, typer.Option(help=f"Prompt template: {', '.join(PROMPT_TEMPLATES)}.")
    ],
    "layer": Annotated[int, typer.Option(help="Hidden-state index to read (-1: the last layer).")],
    "source": Annotated[
        str,
        typer.Option(
            help="Where a DIOR vector is read: last_input (the paper's DIOR: the prompt's last "
            "token), first_output (the first token of the model's greedy answer, fed back) or "
            "mean_output (the mean over the answer's tokens fed back); the output sources "
            "decode the answer of every image and condition.",
        ),
    ],
    "num_token": Annotated[
        int,
        typer.Option(
            "--num-token",
            "--num_token",
            help="Which prompt token a DIOR vector is read at, from the end: -1 (the last, the "
            "paper's DIOR), -2, ... (the reference's --num_token).",
        ),
    ],
    "dtype": Annotated[
        str,
        typer.Option(
            help="auto (bf16 on CUDA and, for models 1024 wide or more, on a CPU with bf16 "
            "instructions; fp32 otherwise), float32, bfloat16 or float16."
        ),
    ],
    "device": DeviceOpt,
    "position_scheme": Annotated[
        str,
        typer.Option(
            "--positions",
            help="Position scheme: 'reference' (the paper's code: sequential positions) or "
            "'native' (the model's own multimodal positions).",
        ),
    ],
    "max_pixels": Annotated[
        int | None, typer.Option(help="Cap on image pixels before encoding (Qwen-VL models).")
    ],
    "max_side": Annotated[
        int,
        typer.Option(
            help="Shrink images to this longer side first, as the paper's code does (0: never)."
        ),
    ],
    "batch_size": Annotated[int, typer.Option(help="Rows (image x condition) per forward pass.")],
    "trust_remote_code": TrustOpt,
}

Command = TypeVar("Command", bound=Callable[..., Any])


def with_embedder_options(
    *, exclude: tuple[str, ...] = (), **overrides: Any
) -> Callable[[Command], Command]:
    """Add the embedding options to a command, which receives them as `options`.

    `overrides` change an option's default for this command (the demo's batch size, say);
    `exclude` leaves options out (their defaults apply), for a command declaring its own.
    """
    option_defaults = {f.name: f.default for f in fields(EmbedderOptions)} | overrides
    embedding = {k: v for k, v in EMBEDDER_PARAMETERS.items() if k not in exclude}

    def decorate(command: Command) -> Command:
        hints = get_type_hints(command, include_extras=True)
        own = [
            p.replace(annotation=hints[p.name])
            for p in inspect.signature(command).parameters.values()
            if p.name != "options"
        ]
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=option_defaults[name],
                annotation=annotation,
            )
            for name, annotation in embedding.items()
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            chosen = {name: kwargs.pop(name) for name in embedding}
            check_device(chosen.get("device", "auto"))
            return command(options=EmbedderOptions(**chosen), **kwargs)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper  # type: ignore[return-value]

    return decorate


# What --device may name (whether that device exists is checked when a model loads).
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(device: str) -> None:
    """UsageError unless `device` is auto, cpu, mps, cuda or cuda:N: checked before anything
    is loaded, also where no model is (`query --id`)."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise UsageError(f"unknown device '{device}'; valid: auto, cpu, cuda or cuda:N")


def check_store(spec: str | None) -> None:
    """UsageError for a --store URI whose port is not a port (before anything is opened)."""
    if spec is None or "://" not in spec:
        return
    try:
        port = urlsplit(spec).port
    except ValueError as exc:
        raise UsageError(f"--store {spec}: {exc}") from None
    if port == 0:
        raise UsageError(f"--store {spec}: port 0 is no server's port")


def open_collection(
    dataset: str | None, images: Path | None, datasets_dir: Path, image_column: str | None = None
) -> Collection:
    if dataset is not None and images is None:
        if image_column is not None:
            raise UsageError("--image-column applies only to --images (Parquet files)")
        return collections.open_dataset(dataset, datasets_dir)
    if images is not None and dataset is None:
        return sources.open_images(images, image_column)
    raise UsageError("give exactly one of --dataset NAME or --images DIR")


def collection_name(dataset: str | None, images: Path | None) -> str | None:
    """The collection a --dataset or --images option names (None: neither was given)."""
    if dataset is not None and images is not None:
        raise UsageError("give at most one of --dataset NAME or --images DIR")
    return dataset if images is None else sources.source_name(images)


def choose_model(
    options: EmbedderOptions, collections: Sequence[str], wordings: Sequence[str] = ()
) -> EmbedderOptions:
    """The options with the model filled in for these collections (see defaults.default_model);
    one warning line when the demo model is to embed anything but the collection it knows, or
    under a wording of a condition (`wordings`: the prompt texts) it was not taught."""
    from dior_search.models.tiny_wordings import known_wordings, tiny_aspect

    chosen = options.for_collections(collections)
    if chosen.model != defaults.DEMO_MODEL:
        return chosen
    others = [name for name in collections if name != defaults.DEMO_COLLECTION]
    untaught = [w for w in wordings if tiny_aspect(w) is None]
    problems = []
    if others:
        problems.append(
            f"knows only the generated {defaults.DEMO_COLLECTION} images; its vectors of "
            f"{', '.join(others)} mean little"
        )
    if untaught:
        quoted = ", ".join(f"'{w}'" for w in untaught)
        problems.append(f"was not taught the wording {quoted}, only these: {known_wordings()}")
    if problems:
        err_console.print(
            f"warning: the {defaults.DEMO_MODEL} model {'; it '.join(problems)} (name a real "
            f"model with --model, e.g. {defaults.DEFAULT_MODEL})",
            markup=False,
            highlight=False,
        )
    return chosen


@contextmanager
def opened_store(spec: str | None, indexes: Path, create: bool = False) -> Iterator[IndexStore]:
    """The store `--store` names (the folders under --indexes without it), closed after."""
    from dior_search.store.stores import open_store

    check_store(spec)
    store = open_store(spec, indexes, create=create)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def default_model_hint(options: EmbedderOptions) -> Iterator[None]:
    """Make a failure to load the default model (no --model given) say what to do instead."""
    try:
        yield
    except ModelError as exc:
        if options.model is not None:
            raise
        reason = str(exc).rstrip(".")  # a sentence of its own may end in a full stop
        raise ModelError(
            f"{reason}; it is the default model: name another with --model, e.g. --model "
            f"{defaults.CPU_MODEL} (smaller, for a CPU) or --model {defaults.DEMO_MODEL} "
            "(the demo model)"
        ) from None
