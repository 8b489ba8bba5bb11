"""The DIOR embedder: the last input token's hidden state of a vision-language model.

Each (image, condition) row is prompted with the chosen template in the model's chat template
(generation prompt added); nothing is generated. Rows are right-padded in a batch and read at
their own last real token, so a batched embedding equals the one-at-a-time embedding.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from dior_search.errors import ModelError, UsageError
from dior_search.families import POSITION_SCHEMES, InputBuilder, PositionScheme
from dior_search.prompts import DEFAULT_TEMPLATE, build_prompt

log = logging.getLogger(__name__)

BUNDLED_MODELS = {"tiny": Path(__file__).parent / "tiny_model"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class EmbedderSettings:
    """How embeddings are made; written beside every index so a query can repeat it."""

    model: str = "tiny"
    revision: str | None = None
    template: str = DEFAULT_TEMPLATE
    layer: int = -1
    dtype: str = "auto"
    device: str = "auto"
    position_scheme: PositionScheme = "reference"
    max_pixels: int | None = None
    batch_size: int = 8
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.position_scheme not in POSITION_SCHEMES:
            valid = ", ".join(POSITION_SCHEMES)
            raise UsageError(f"unknown position scheme {self.position_scheme!r}; valid: {valid}")
        if self.batch_size < 1:
            raise UsageError("batch size must be at least 1")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r}; valid: {', '.join(['auto', *DTYPES])}")
        build_prompt(self.template, None)  # raises on an unknown template


class Embedder(Protocol):
    """Anything that embeds images under text conditions."""

    @property
    def dim(self) -> int: ...

    def embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Float32 array of shape (len(images), len(conditions), dim)."""
        ...


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; try auto, cpu, cuda or cuda:N") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 on CUDA and fp32 elsewhere unless asked otherwise."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def resolve_model_source(model: str) -> str:
    """A bundled model's folder, or the Hub id / local path as given."""
    return str(BUNDLED_MODELS.get(model, model))


def load_model_config(source: str, revision: str | None, trust_remote_code: bool) -> Any:
    """The model's transformers config, with load failures turned into one-line ModelErrors."""
    from transformers import AutoConfig

    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
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
        raise ModelError(f"cannot load model {source!r}: {why_not_found(source, exc)}") from None


def why_not_found(source: str, exc: Exception) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "not a local folder and not in the Hugging Face cache (offline: HF_HUB_OFFLINE=1)"
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def model_folder(source: str, revision: str | None) -> Path:
    """The local folder holding a model: the path itself, or its Hub cache snapshot."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import try_to_load_from_cache

    config_file = try_to_load_from_cache(source, "config.json", revision=revision)
    if not isinstance(config_file, str):
        raise ModelError(f"model {source!r} is not in the Hugging Face cache")
    return Path(config_file).parent


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


class DiorEmbedder:
    """DIOR embeddings from a Hugging Face vision-language model (Hub id or local path)."""

    def __init__(self, settings: EmbedderSettings) -> None:
        from transformers import AutoModel

        from dior_search.families import load_input_builder

        if settings.position_scheme not in POSITION_SCHEMES:
            valid = ", ".join(POSITION_SCHEMES)
            raise UsageError(
                f"unknown position scheme {settings.position_scheme!r}; valid: {valid}"
            )
        if settings.batch_size < 1:
            raise UsageError("batch size must be at least 1")
        build_prompt(settings.template, None)  # fails early on an unknown template
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        source = resolve_model_source(settings.model)
        self.config = load_model_config(source, settings.revision, settings.trust_remote_code)
        self.inputs: InputBuilder = load_input_builder(
            self.config,
            source,
            revision=settings.revision,
            trust_remote_code=settings.trust_remote_code,
            position_scheme=settings.position_scheme,
            max_pixels=settings.max_pixels,
        )
        try:
            # The base model: no LM head, so no vocabulary-sized logits are ever computed.
            self.model = AutoModel.from_pretrained(
                source,
                revision=settings.revision,
                dtype=self.dtype,
                trust_remote_code=settings.trust_remote_code,
            )
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot load model weights of {source!r}: {first_line(exc)}"
            ) from None
        self.model.to(self.device).eval()
        self.source = source
        text_config = self.config.get_text_config()
        self.n_layers: int = text_config.num_hidden_layers
        self._dim: int = text_config.hidden_size
        if not -(self.n_layers + 1) <= settings.layer <= self.n_layers:
            raise UsageError(
                f"layer {settings.layer} out of range: this model has hidden states "
                f"0..{self.n_layers} (or -{self.n_layers + 1}..-1)"
            )

    @property
    def dim(self) -> int:
        return self._dim

    def describe(self) -> dict[str, Any]:
        """What made these embeddings, for the index manifest."""
        folder = model_folder(self.source, self.settings.revision)
        in_hub_cache = folder.parent.name == "snapshots"
        return {
            "method": "dior",
            **asdict(self.settings),
            "image_size_policy": self.inputs.size_policy(),
            "model_type": self.config.model_type,
            "commit": folder.name if in_hub_cache else None,
            "weights_fingerprint": weights_fingerprint(folder),
            "dtype": str(self.dtype).removeprefix("torch."),
            "dim": self.dim,
        }

    def embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Embed every image under every condition: float32 (n_images, n_conditions, dim)."""
        prompts = [build_prompt(self.settings.template, c) for c in conditions]
        rows = [(i, p) for i in range(len(images)) for p in range(len(prompts))]
        out = np.empty((len(images) * len(prompts), self.dim), dtype=np.float32)
        step = self.settings.batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            out[start : start + len(chunk)] = self.embed_rows(
                [images[i] for i, _ in chunk], [prompts[p] for _, p in chunk]
            )
            if on_progress is not None:
                on_progress(len(chunk))
        return out.reshape(len(images), len(prompts), self.dim)

    @torch.inference_mode()
    def embed_rows(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """One forward pass over (image, prompt) rows; float32 (rows, dim)."""
        batch = self.inputs.build(images, prompts).to(self.device, self.dtype)
        outputs = self.model(**batch.inputs, output_hidden_states=True)
        hidden = outputs.hidden_states[self.settings.layer]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        vectors: np.ndarray = hidden[rows, batch.last_index].float().cpu().numpy()
        return vectors
