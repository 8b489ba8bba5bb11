"""Loading Hugging Face models: where a model is, on which device and dtype, and which weights.

Load failures become one-line `ModelError`s that say what to do (offline and not cached,
remote code not allowed, no config).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from dior_search.errors import ModelError, UsageError, first_line
from dior_search.models.embedder import IDENTITY_SETTINGS, EmbedderDescription
from dior_search.models.settings import ModelSettings, Settings

BUNDLED_MODELS = {"tiny": Path(__file__).parent / "tiny_model"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# /proc/cpuinfo flags (x86) or Features (ARM) of a CPU with bf16 multiply instructions: AMX and
# AVX512-BF16 on Xeons since Cooper Lake, FEAT_BF16 on ARMv8.6+ (Graviton 3, Neoverse V1/N2).
# Without them torch emulates bf16 by converting to fp32, slower than fp32 itself.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
# On a CPU, bf16 pays only where matrix products dominate the time: measured (docs/cpu.md), a
# model 512 wide ran 0.95x to 1.3x fp32's speed and the bundled 128-wide one no faster, while
# Qwen2.5-VL-3B's shapes (2048) ran 3.2x to 3.5x. Narrower models stay fp32 under `auto`.
CPU_BF16_MIN_WIDTH = 1024
# Set to 0 or 1 to override the detection (the test suite sets 0: its equalities are fp32's).
CPU_BF16_VARIABLE = "DIOR_SEARCH_CPU_BF16"


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


def resolve_dtype(dtype: str, device: torch.device, config: Any = None) -> torch.dtype:
    """`auto`: bf16 on CUDA, and on a CPU that multiplies bf16 natively for a model (`config`)
    wide enough for bf16 to pay there; fp32 elsewhere."""
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16
    wide = config is None or model_width(config) >= CPU_BF16_MIN_WIDTH
    return (
        torch.bfloat16 if device.type == "cpu" and wide and cpu_multiplies_bf16() else torch.float32
    )


def follow_recorded_dtype(asked: Settings, recorded: Sequence[EmbedderDescription]) -> Settings:
    """`asked` with `auto` replaced by the dtype indexes of the same embedder were built in
    (`recorded`: their manifests' descriptions), where they agree on one: vectors added to an
    index are then made in the dtype of those already in it, wherever `auto` would resolve
    otherwise (an index built in fp32 before `auto` chose bf16 on this CPU stays fp32)."""
    if asked.dtype != "auto":
        return asked
    mine = asdict(asked)
    dtypes = {
        description.dtype
        for description in recorded
        if description.method == asked.method
        and all(asdict(description.settings).get(key) == mine.get(key) for key in IDENTITY_SETTINGS)
    }
    return replace(asked, dtype=dtypes.pop()) if len(dtypes) == 1 else asked


def model_width(config: Any) -> int:
    """The widest hidden size of a model's config and its text and vision parts."""
    parts = [config, config.get_text_config(), getattr(config, "vision_config", None)]
    return max(int(getattr(part, "hidden_size", 0) or 0) for part in parts)


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has bf16 multiply instructions (read from the flags the kernel reports,
    not guessed from the processor's name); `DIOR_SEARCH_CPU_BF16=0/1` overrides it."""
    chosen = os.environ.get(CPU_BF16_VARIABLE, "").strip()
    if chosen in ("0", "1"):
        return chosen == "1"
    return cpuinfo_has_bf16(read_cpuinfo(), platform.machine())


@functools.cache
def read_cpuinfo() -> str:
    """/proc/cpuinfo, or "" where there is none (macOS, Windows: fp32 there)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpuinfo_has_bf16(cpuinfo: str, machine: str) -> bool:
    """Whether /proc/cpuinfo text lists a bf16 multiply flag on every processor it describes
    (x86 `flags`, ARM `Features`); `machine` is `platform.machine()`."""
    keys = ("features",) if machine.lower() in ("aarch64", "arm64") else ("flags",)
    lines = [
        value
        for key, _, value in (line.partition(":") for line in cpuinfo.splitlines())
        if key.strip().lower() in keys
    ]
    return bool(lines) and all(BF16_CPU_FLAGS & set(value.split()) for value in lines)


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
