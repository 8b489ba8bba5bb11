"""`dior-search serve`: the web page and JSON API over the indexes of one model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from dior_search import defaults
from dior_search.cli.app import app, console
from dior_search.cli.hub import settle_hub_access
from dior_search.cli.options import (
    DeviceOpt,
    DtypeOverrideOpt,
    IndexesOpt,
    StoreOpt,
    TrustOpt,
    check_device,
    collection_name,
    given_path,
)
from dior_search.errors import UsageError

MIB = 1024 * 1024


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
        Path | None,
        typer.Option(parser=given_path, help="Serve only the indexes of this image folder."),
    ] = None,
    indexes: IndexesOpt = defaults.DEFAULT_INDEXES_DIR,
    store: StoreOpt = None,
    model: Annotated[
        str | None,
        typer.Option(help="Serve the indexes built with this model (default: the only one)."),
    ] = None,
    dtype: DtypeOverrideOpt = None,
    device: DeviceOpt = "auto",
    trust_remote_code: TrustOpt = False,
    max_upload_mb: Annotated[
        float, typer.Option(help="Largest image upload accepted, in MiB.")
    ] = defaults.MAX_UPLOAD_BYTES / MIB,
    max_megapixels: Annotated[
        float, typer.Option(help="Largest image accepted, in millions of pixels.")
    ] = defaults.MAX_PIXELS / 1_000_000,
    timeout: Annotated[
        float, typer.Option(help="Seconds a request may take.")
    ] = defaults.REQUEST_TIMEOUT_S,
    max_k: Annotated[int, typer.Option(help="Most results one query may ask for.")] = (
        defaults.MAX_SERVED_RESULTS
    ),
    max_decode_mb: Annotated[
        float | None,
        typer.Option(
            help="Memory in MiB that images being decoded may hold together (default: sized "
            "for this machine: an eighth of its memory, 1 GiB per core, at least 1 GiB)."
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="Also answer requests for this host name (repeatable), e.g. the name a "
            "reverse proxy forwards; by default only localhost, loopback addresses and --host.",
        ),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ORIGIN",
            help="Also answer requests from pages of this origin (repeatable), e.g. "
            "https://photos.example.org behind a proxy; by default only the server's own.",
        ),
    ] = None,
) -> None:
    """Serve a web page and a JSON API for (multi-)conditional search over built indexes."""
    from dior_search.models.settings import check_dtype

    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {port}")
    collection = collection_name(dataset, images)
    # The limits' checks are the settings' own (serve.settings); no model library yet.
    from dior_search.serve.settings import ServeSettings

    settings = ServeSettings(
        indexes_dir=indexes,
        store=store,
        model=model,
        collection=collection,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    ).with_limit_options(
        max_upload_mb=max_upload_mb,
        max_megapixels=max_megapixels,
        timeout=timeout,
        max_k=max_k,
        max_decode_mb=max_decode_mb,
    )
    check_device(device)
    if dtype is not None:
        check_dtype(dtype)
    from dior_search.serve.access import AccessPolicy

    access = AccessPolicy.of(host, allow_host or (), allow_origin or ())
    settle_hub_access([model])
    # Only now the server's and the model's libraries: the usage errors above answer at once.
    from dior_search.serve.app import make_server
    from dior_search.serve.service import SearchService

    service = SearchService.open(settings)
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    server = make_server(service, host, port, "info" if verbose else "warning", access)
    for served in service.searcher.collections.values():
        names = ", ".join(served.conditions)
        console.print(
            f"{served.name}: {served.images} images under {names}", markup=False, highlight=False
        )
    url_host = f"[{host}]" if ":" in host else host  # an IPv6 address in brackets
    console.print(
        f"serving with model {service.searcher.description.model} at http://{url_host}:{port}/ "
        "(Ctrl+C stops)",
        markup=False,
        highlight=False,
    )
    server.run()
    if server.terminated:
        console.print("stopped (SIGTERM): requests in flight were answered", highlight=False)
