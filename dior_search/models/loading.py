"""Loading Hugging Face models: where a model is, on which device and dtype, and which weights.

Load failures become one-line `ModelError`s that say what to do (offline and not cached,
remote code not allowed, no config).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from dior_search.errors import ModelError, UsageError, first_line
from dior_search.models.embedder import EmbedderDescription
from dior_search.models.settings import ModelSettings

BUNDLED_MODELS = {"tiny": Path(__file__).parent / "tiny_model"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """The torch device `device` names, checked to exist on this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; try auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"--device {device}: this torch cannot use CUDA (a CPU-only build, or no GPU "
                "visible); use --device cpu or auto"
            )
        if chosen.index is not None and chosen.index >= count:
            raise UsageError(
                f"--device {device}: there is no GPU {chosen.index} (GPUs: 0..{count - 1})"
            )
    elif chosen.type != "cpu":
        raise UsageError(f"--device {device}: dior-search runs on cpu or cuda (auto, cpu, cuda:N)")
    return chosen


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 on CUDA and fp32 elsewhere unless asked otherwise."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_model_source(model: str) -> str:
    """A bundled model's folder, or the Hub id / local path as given."""
    return str(BUNDLED_MODELS.get(model, model))


def load_model_config(source: str, revision: str | None, trust_remote_code: bool) -> Any:
    """The model's transformers config, with load failures turned into one-line ModelErrors."""
    from transformers import AutoConfig

    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        # transformers 5 reports this as an unrecognised model rather than a missing file.
        raise ModelError(f"cannot load model {source!r}: {source} holds no model config.json")
    try:
        return AutoConfig.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelError(
                f"model {source!r} runs code from its repository; pass --trust-remote-code "
                "only if you trust it"
            ) from None
        raise ModelError(f"cannot load model {source!r}: {first_line(exc)}") from None
    except OSError as exc:
        raise ModelError(f"cannot load model {source!r}: {why_not_found(exc)}") from None


def why_not_found(exc: Exception) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "not a local folder and not in the Hugging Face cache (offline: HF_HUB_OFFLINE=1)"
    return first_line(exc)


def model_folder(source: str, revision: str | None) -> Path:
    """The local folder holding a model: the path itself, or its Hub cache snapshot."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import try_to_load_from_cache

    config_file = try_to_load_from_cache(source, "config.json", revision=revision)
    if not isinstance(config_file, str):
        raise ModelError(f"model {source!r} is not in the Hugging Face cache")
    return Path(config_file).parent


def model_identity(source: str, revision: str | None) -> tuple[str | None, str]:
    """The Hub commit (None for a local folder) and weights fingerprint of a loaded model."""
    folder = model_folder(source, revision)
    commit = folder.name if folder.parent.name == "snapshots" else None
    return commit, weights_fingerprint(folder)


def weights_fingerprint(folder: Path) -> str:
    """A cheap fingerprint of a local model's weights: names, sizes, first and last MiB."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read())
    return digest.hexdigest()


def describe_loaded(
    settings: ModelSettings,
    source: str,
    config: Any,
    dtype: torch.dtype,
    dim: int,
    **extra: Any,
) -> EmbedderDescription:
    """The description of a model loaded from `source` with `settings` (extra: its fields)."""
    commit, fingerprint = model_identity(source, settings.revision)
    return EmbedderDescription(
        settings=settings,
        model_type=config.model_type,
        commit=commit,
        weights_fingerprint=fingerprint,
        dtype=dtype_name(dtype),
        dim=dim,
        **extra,
    )
