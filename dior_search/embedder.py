"""The DIOR embedder: the last input token's hidden state of a vision-language model.

Each (image, condition) row is prompted with the chosen template in the model's chat template
(generation prompt added); nothing is generated. Rows are right-padded in a batch and read at
their own last real token, so a batched embedding equals the one-at-a-time embedding.

An image's prompts differ only in their last few tokens, so by default the shared prefix (chat
header, image, prompt text up to the condition) runs once per image with its KV cache kept, and
all condition suffixes then run as one batch against it. Layers after the chosen one are never
run, and the base model has no LM head.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from dior_search.errors import ModelError, UsageError
from dior_search.families import (
    POSITION_SCHEMES,
    InputBuilder,
    PositionScheme,
    PrefixReuseUnsupported,
    SplitBatch,
    last_token_index,
)
from dior_search.images import fit_within
from dior_search.prompts import DEFAULT_TEMPLATE, build_prompt

log = logging.getLogger(__name__)

BUNDLED_MODELS = {"tiny": Path(__file__).parent / "tiny_model"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

ProgressCallback = Callable[[int], None]
# The paper's code shrinks every image to at most 700 pixels on its longer side (Lanczos).
REFERENCE_MAX_SIDE = 700


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
    # Images are first shrunk to this longer side (None: never), as the paper's code does.
    max_side: int | None = REFERENCE_MAX_SIDE
    batch_size: int = 8
    trust_remote_code: bool = False
    # Run each image's shared prompt prefix once and only the condition suffixes per condition;
    # False runs a full forward pass per (image, condition) row. Both give the same embeddings.
    prefix_reuse: bool = True

    def __post_init__(self) -> None:
        if self.position_scheme not in POSITION_SCHEMES:
            valid = ", ".join(POSITION_SCHEMES)
            raise UsageError(f"unknown position scheme {self.position_scheme!r}; valid: {valid}")
        if self.batch_size < 1:
            raise UsageError("batch size must be at least 1")
        check_max_side(self.max_side)
        check_dtype(self.dtype)
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


def check_dtype(dtype: str) -> None:
    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; valid: {', '.join(['auto', *DTYPES])}")


def check_max_side(max_side: int | None) -> None:
    if max_side is not None and max_side < 1:
        raise UsageError("the image side cap must be at least 1 pixel")


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


def model_identity(source: str, revision: str | None) -> dict[str, str | None]:
    """The Hub commit (None for a local folder) and weights fingerprint of a loaded model."""
    folder = model_folder(source, revision)
    return {
        "commit": folder.name if folder.parent.name == "snapshots" else None,
        "weights_fingerprint": weights_fingerprint(folder),
    }


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
        self.source = source
        text_config = self.config.get_text_config()
        self.n_layers: int = text_config.num_hidden_layers
        self._dim: int = text_config.hidden_size
        if not -(self.n_layers + 1) <= settings.layer <= self.n_layers:
            raise UsageError(
                f"layer {settings.layer} out of range: this model has hidden states "
                f"0..{self.n_layers} (or -{self.n_layers + 1}..-1)"
            )
        layer = settings.layer % (self.n_layers + 1)
        # Where the layers after the chosen one can be dropped, the model's last hidden state is
        # the embedding; otherwise every hidden state is returned and the chosen one read.
        stops_early = layer == self.n_layers or keep_first_layers(self.model, layer)
        self._hidden_index: int | None = None if stops_early else layer
        self.model.to(self.device).eval()
        self._prefix_reuse = settings.prefix_reuse
        if self._prefix_reuse and "cache" not in inspect.signature(self.model.forward).parameters:
            self._stop_prefix_reuse(f"{type(self.model).__name__}.forward takes no KV cache")

    @property
    def dim(self) -> int:
        return self._dim

    def describe(self) -> dict[str, Any]:
        """What made these embeddings, for the index manifest."""
        return {
            "method": "dior",
            **asdict(self.settings),
            "image_size_policy": {"max_side": self.settings.max_side, **self.inputs.size_policy()},
            "model_type": self.config.model_type,
            **model_identity(self.source, self.settings.revision),
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
        images = [fit_within(image, self.settings.max_side) for image in images]
        if not images or not prompts:
            return np.empty((len(images), len(prompts), self.dim), dtype=np.float32)
        if self._prefix_reuse:
            return self.embed_by_prefix(images, prompts, on_progress)
        return self.embed_full(images, prompts, on_progress)

    def embed_by_prefix(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """`embed` by prefix reuse: float32 (n_images, n_prompts, dim).

        `batch_size` bounds the suffix rows of a pass, as it bounds the rows of a full pass:
        a pass takes `batch_size // n_prompts` images (at least one).
        """
        out = np.empty((len(images), len(prompts), self.dim), dtype=np.float32)
        step = max(1, self.settings.batch_size // len(prompts))
        chunks = [images[start : start + step] for start in range(0, len(images), step)]
        done = 0
        try:
            for chunk, split in zip(chunks, self._splits(chunks, prompts), strict=True):
                out[done : done + len(chunk)] = self.embed_split(split).reshape(
                    len(chunk), len(prompts), self.dim
                )
                done += len(chunk)
                if on_progress is not None:
                    on_progress(len(chunk) * len(prompts))
        except PrefixReuseUnsupported as exc:
            self._stop_prefix_reuse(str(exc))
            out[done:] = self.embed_full(images[done:], prompts, on_progress)
        return out

    def _splits(
        self, chunks: Sequence[Sequence[Image.Image]], prompts: Sequence[str]
    ) -> Iterator[SplitBatch]:
        """Each chunk's prefix/suffix inputs, in order, the next built while this one runs.

        Building inputs (image patches, tokens) is CPU work; done on a thread while the model
        runs the previous chunk, it no longer leaves a GPU idle.
        """
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.inputs.split, chunks[0], prompts, self.model)
            for following in [*chunks[1:], None]:
                split = pending.result()
                if following is not None:
                    pending = pool.submit(self.inputs.split, following, prompts, self.model)
                yield split

    @torch.inference_mode()
    def embed_split(self, split: SplitBatch) -> np.ndarray:
        """The prefix pass, the cache repeated per prompt, the suffix pass; float32 (rows, dim)."""
        batch = split.to(self.device, self.dtype)
        cache = self.prefix_pass(batch)
        if batch.prompts_per_image > 1:
            cache.batch_repeat_interleave(batch.prompts_per_image)
        return self.suffix_pass(batch, cache)

    @torch.inference_mode()
    def prefix_pass(self, batch: SplitBatch) -> Any:
        """Run the prefixes (images included) and return their KV cache."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        self._hidden(batch.prefix_inputs, cache=cache, use_cache=True)
        return cache

    @torch.inference_mode()
    def suffix_pass(self, batch: SplitBatch, cache: Any) -> np.ndarray:
        """Run the suffixes against `cache`, already repeated per prompt; float32 (rows, dim).

        Prefixes of different lengths leave pad slots in the cache between a row's prefix and
        its suffix: the 2-D mask over (cache + suffix) hides them, and positions are explicit.
        """
        repeats = batch.prompts_per_image
        prefix_mask = batch.prefix_inputs["attention_mask"].repeat_interleave(repeats, dim=0)
        steps = torch.arange(batch.suffix_ids.shape[1], device=batch.suffix_ids.device)
        hidden = self._hidden(
            {
                "input_ids": batch.suffix_ids,
                "attention_mask": torch.cat([prefix_mask, batch.suffix_mask], dim=1),
                "position_ids": batch.next_position.repeat_interleave(repeats)[:, None] + steps,
            },
            cache=cache,
            use_cache=True,
        )
        return self._last_tokens(hidden, last_token_index(batch.suffix_mask))

    def embed_full(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """`embed` by a full forward pass per row: float32 (n_images, n_prompts, dim)."""
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
        images = [fit_within(image, self.settings.max_side) for image in images]
        batch = self.inputs.build(images, prompts).to(self.device, self.dtype)
        hidden = self._hidden(batch.inputs, use_cache=False)
        return self._last_tokens(hidden, batch.last_index)

    def _hidden(self, inputs: dict[str, torch.Tensor], **options: Any) -> torch.Tensor:
        """The chosen layer's hidden states for `inputs`: (rows, tokens, dim)."""
        if self._hidden_index is None:
            last: torch.Tensor = self.model(**inputs, **options).last_hidden_state
            return last
        outputs = self.model(**inputs, **options, output_hidden_states=True)
        chosen: torch.Tensor = outputs.hidden_states[self._hidden_index]
        return chosen

    @staticmethod
    def _last_tokens(hidden: torch.Tensor, last_index: torch.Tensor) -> np.ndarray:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        vectors: np.ndarray = hidden[rows, last_index].float().cpu().numpy()
        return vectors

    def _stop_prefix_reuse(self, reason: str) -> None:
        self._prefix_reuse = False
        log.warning(
            "prefix reuse is off for %s (%s): one full forward pass per condition",
            self.source,
            reason,
        )


def keep_first_layers(model: Any, n_layers: int) -> bool:
    """Drop the decoder layers after the first `n_layers`, and the final norm.

    The model's last hidden state is then `hidden_states[n_layers]` of the whole model (the
    final norm applies only after the last layer). False where the decoder is not laid out as
    `layers` and `norm`, and nothing is dropped.
    """
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not isinstance(
        getattr(decoder, "norm", None), torch.nn.Module
    ):
        return False
    decoder.layers = layers[:n_layers]
    decoder.norm = torch.nn.Identity()
    return True
