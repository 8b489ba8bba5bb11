"""How embeddings are made: one frozen settings class per method, and the user's options.

Settings are written into every index manifest (inside an `EmbedderDescription`) and rebuilt
from it, so a query embeds exactly as the index did. Defaults come from `dior_search.defaults`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Literal, TypeVar, cast

from dior_search import defaults
from dior_search.errors import UsageError
from dior_search.models.prompts import build_prompt

PositionScheme = Literal["reference", "native"]
POSITION_SCHEMES: tuple[PositionScheme, ...] = ("reference", "native")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
Method = Literal["dior", "clip", "generative", "indirect"]
# Where a DIOR vector is read (see models.dior): the last input token, or the greedy answer's
# first generated token fed back, or the mean over the answer's tokens fed back.
EmbeddingSource = Literal["last_input", "first_output", "mean_output"]
SOURCES: tuple[EmbeddingSource, ...] = ("last_input", "first_output", "mean_output")
# The methods that take a source: DIOR's (bench's dior and dior-unconditional).
SOURCE_METHODS = ("dior", "dior-unconditional")
# Which prompt token DIOR reads, counted from the end as the reference's `--num_token`: -1 is
# the last one (the paper's DIOR), -2 the one before it, ...
DEFAULT_NUM_TOKEN = -1


def check_num_token(num_token: int, source: str) -> None:
    """A position from the end of the prompt (-1, -2, ...), read where the source is the
    prompt's last input."""
    if num_token > -1:
        raise UsageError(
            f"--num-token counts from the end of the prompt: -1 (the last token), -2, ...; "
            f"got {num_token}"
        )
    check_at_most("--num-token's distance from the end", -num_token)
    if num_token != DEFAULT_NUM_TOKEN and source != defaults.DEFAULT_SOURCE:
        raise UsageError(
            f"--num-token reads a prompt token: it applies to --source "
            f"{defaults.DEFAULT_SOURCE} only, not {source}"
        )


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise UsageError(f"unknown --source {source!r}; valid: {', '.join(SOURCES)}")


def check_position_scheme(scheme: str) -> None:
    if scheme not in POSITION_SCHEMES:
        valid = ", ".join(POSITION_SCHEMES)
        raise UsageError(f"unknown position scheme {scheme!r}; valid: {valid}")


def check_dtype(dtype: str) -> None:
    if dtype != "auto" and dtype not in DTYPE_NAMES:
        raise UsageError(f"unknown dtype {dtype!r}; valid: {', '.join(['auto', *DTYPE_NAMES])}")


def check_max_side(max_side: int | None) -> None:
    if max_side is not None and max_side < 1:
        raise UsageError("the image side cap must be at least 1 pixel")
    check_at_most("the image side cap", max_side)


def check_at_most(what: str, value: int | None) -> None:
    """Refuse a count or size larger than an index's manifest can record (an int64)."""
    if value is not None and value > defaults.MAX_STORED_INT:
        raise UsageError(f"{what} is at most {defaults.MAX_STORED_INT}, not {value}")


Settings = TypeVar("Settings", bound="ModelSettings")


def check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is not None and max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1 pixel, not {max_pixels}")
    check_at_most("--max-pixels", max_pixels)


@dataclass(frozen=True)
class ModelSettings:
    """What every method shares: which model, on which device, in batches of what size."""

    method: ClassVar[Method]

    model: str = defaults.DEFAULT_MODEL
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    # Images are first shrunk to this longer side (None: never), as the paper's code does.
    max_side: int | None = defaults.REFERENCE_MAX_SIDE
    batch_size: int = defaults.DEFAULT_BATCH_SIZE
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError("batch size must be at least 1")
        check_at_most("the batch size", self.batch_size)
        check_max_side(self.max_side)
        check_dtype(self.dtype)

    # DIOR's choices, read through this base class: a method that has no such field answers
    # with what its vectors amount to (the fields of the methods that have them override these,
    # and only fields are written into a manifest).
    @property
    def template(self) -> str:
        """The prompt template (the default one, recorded in the manifest, where none is
        chosen)."""
        return defaults.DEFAULT_TEMPLATE

    @property
    def layer(self) -> int | None:
        """The hidden layer the vectors are read from (None: not a hidden layer's)."""
        return None

    @property
    def source(self) -> EmbeddingSource:
        """Where the vector is read (see models.dior): the last input for every other method."""
        return "last_input"

    @property
    def num_token(self) -> int:
        """Which prompt token is read, from the end (-1: the last)."""
        return DEFAULT_NUM_TOKEN

    @classmethod
    def from_fields(cls: type[Settings], stored: dict[str, Any]) -> Settings:
        """Settings from a manifest's flat embedder fields (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in stored.items() if key in names})


@dataclass(frozen=True)
class DiorSettings(ModelSettings):
    """DIOR: the hidden state of a vision-language model's last input token."""

    method: ClassVar[Method] = "dior"

    template: str = defaults.DEFAULT_TEMPLATE
    layer: int = defaults.DEFAULT_LAYER
    position_scheme: PositionScheme = "reference"
    max_pixels: int | None = None
    # Run each image's shared prompt prefix once and only the condition suffixes per condition;
    # False runs a full forward pass per (image, condition) row. Both give the same embeddings.
    prefix_reuse: bool = True
    source: EmbeddingSource = "last_input"
    num_token: int = DEFAULT_NUM_TOKEN

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self.source)
        check_num_token(self.num_token, self.source)
        check_position_scheme(self.position_scheme)
        build_prompt(self.template, None)  # raises on an unknown template
        check_max_pixels(self.max_pixels)


@dataclass(frozen=True)
class ClipSettings(ModelSettings):
    """The CLIP baseline: a dual encoder's image embedding, the same under every condition."""

    method: ClassVar[Method] = "clip"

    model: str = defaults.DEFAULT_CLIP_MODEL
    batch_size: int = defaults.DEFAULT_CLIP_BATCH_SIZE


@dataclass(frozen=True)
class GenerativeSettings(ModelSettings):
    """The generative baseline: the VLM's answer to the prompt, embedded by a text encoder."""

    method: ClassVar[Method] = "generative"

    text_encoder: str = defaults.DEFAULT_TEXT_ENCODER
    text_encoder_revision: str | None = None
    template: str = defaults.DEFAULT_TEMPLATE
    max_new_tokens: int = defaults.GENERATIVE_MAX_NEW_TOKENS
    encode_prompt: bool = True
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens < 1:
            raise UsageError("max new tokens must be at least 1")
        build_prompt(self.template, None)  # raises on an unknown template
        check_max_pixels(self.max_pixels)


@dataclass(frozen=True)
class IndirectSettings(ModelSettings):
    """InDiReCT (Kobs et al., WACV 2023): CLIP image embeddings projected, per condition, onto
    the subspace in which CLIP's embeddings of texts about that condition vary."""

    method: ClassVar[Method] = "indirect"

    model: str = defaults.DEFAULT_CLIP_MODEL
    batch_size: int = defaults.DEFAULT_CLIP_BATCH_SIZE
    components: int = defaults.INDIRECT_COMPONENTS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.components < 1:
            raise UsageError("InDiReCT needs at least 1 component")
        check_at_most("the number of components", self.components)


DualEncoder = TypeVar("DualEncoder", ClipSettings, IndirectSettings)


@dataclass(frozen=True)
class EmbedderOptions:
    """What a user chose on the command line, for whichever methods a verb runs (a method's
    settings: `models.methods.settings_for`)."""

    # None: the default for the collection (defaults.default_model), chosen by `for_collections`.
    model: str | None = None
    revision: str | None = None
    template: str = defaults.DEFAULT_TEMPLATE
    layer: int = defaults.DEFAULT_LAYER
    dtype: str = "auto"
    device: str = "auto"
    position_scheme: str = defaults.DEFAULT_POSITION_SCHEME
    max_pixels: int | None = None
    # 0 or None: never shrink.
    max_side: int | None = defaults.REFERENCE_MAX_SIDE
    batch_size: int = defaults.DEFAULT_BATCH_SIZE
    trust_remote_code: bool = False
    clip_model: str = defaults.DEFAULT_CLIP_MODEL
    text_encoder: str = defaults.DEFAULT_TEXT_ENCODER
    source: str = defaults.DEFAULT_SOURCE
    num_token: int = DEFAULT_NUM_TOKEN

    def __post_init__(self) -> None:
        # Unknown values are refused when the options are made, before anything loads.
        check_position_scheme(self.position_scheme)
        check_source(self.source)
        check_num_token(self.num_token, self.source)

    def for_collections(self, collections: Sequence[str]) -> EmbedderOptions:
        """These options with the model filled in: as chosen, or the collections' default."""
        return replace(self, model=self.model or defaults.default_model(collections))

    @property
    def vlm(self) -> str:
        """The vision-language model (the paper's model when none was chosen)."""
        return self.model or defaults.DEFAULT_MODEL

    def dior(self) -> DiorSettings:
        return DiorSettings(
            model=self.vlm,
            revision=self.revision,
            template=self.template,
            layer=self.layer,
            dtype=self.dtype,
            device=self.device,
            position_scheme=cast(PositionScheme, self.position_scheme),  # checked when made
            source=cast(EmbeddingSource, self.source),  # checked when made
            num_token=self.num_token,
            max_pixels=self.max_pixels,
            max_side=self.max_side or None,
            batch_size=self.batch_size,
            trust_remote_code=self.trust_remote_code,
        )

    def clip(self) -> ClipSettings:
        return self.dual_encoder(ClipSettings)

    def only_dior_source(self, method: str) -> None:
        """UsageError where a source other than the last input is asked of a method that has
        no generated answer to read it from."""
        if self.source != defaults.DEFAULT_SOURCE:
            raise UsageError(
                f"--source {self.source} applies to the {' and '.join(SOURCE_METHODS)} methods "
                f"only, not {method}"
            )

    def generative(self) -> GenerativeSettings:
        self.only_dior_source("generative")
        return GenerativeSettings(
            model=self.vlm,
            revision=self.revision,
            text_encoder=self.text_encoder,
            template=self.template,
            dtype=self.dtype,
            device=self.device,
            max_pixels=self.max_pixels,
            max_side=self.max_side or None,
            batch_size=self.batch_size,
            trust_remote_code=self.trust_remote_code,
        )

    def indirect(self) -> IndirectSettings:
        return self.dual_encoder(IndirectSettings)

    def dual_encoder(self, kind: type[DualEncoder]) -> DualEncoder:
        """Settings of a method built on the CLIP model (`clip_model`)."""
        self.only_dior_source(kind.method)
        return kind(
            model=self.clip_model,
            dtype=self.dtype,
            device=self.device,
            max_side=self.max_side or None,
        )
