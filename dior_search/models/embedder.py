"""The embedder interface: images in, one vector per (image, condition) out, and a description.

Every method (DIOR and the baselines) implements `Embedder`. Its `describe()` says what made the
vectors; the store writes that description into each manifest and compares it before vectors
of two runs are mixed or a query is embedded for an index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from dior_search import defaults
from dior_search.errors import InputError
from dior_search.models.methods import method_named
from dior_search.models.settings import Method, ModelSettings

if TYPE_CHECKING:
    from dior_search.models.answers import Answer

ProgressCallback = Callable[[int], None]
# Whether an index's rows carry the model's own answers (see models.answers): `stored`; `off`
# (not asked for, or built before answers existed); `not-last-layer` (the output head reads the
# last layer's state only, so other layers have none).
AnswerState = Literal["stored", "off", "not-last-layer"]
ANSWER_STATES: tuple[AnswerState, ...] = ("stored", "off", "not-last-layer")

# Settings that change the vectors; the others (device, batch size, ...) only how they are made.
IDENTITY_SETTINGS = (
    "model",
    "template",
    "layer",
    "source",
    "num_token",
    "position_scheme",
    "max_pixels",
    "max_side",
    "text_encoder",
    "components",
)


@dataclass(frozen=True)
class EmbedderDescription:
    """What made a set of vectors: the settings, and what the loaded model turned out to be."""

    settings: ModelSettings
    model_type: str
    commit: str | None
    weights_fingerprint: str
    # The compute dtype in effect ("float32", "bfloat16", ...), not the one asked for.
    dtype: str
    dim: int
    image_size_policy: dict[str, Any] = field(default_factory=dict)
    text_encoder_commit: str | None = None
    text_encoder_fingerprint: str | None = None
    # Whether this embedder gives answers with its vectors (`stored`), or why not. Not part of
    # the identity: the manifest records per index whether its rows carry answers.
    answers: AnswerState = "off"

    @property
    def method(self) -> Method:
        return self.settings.method

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def source(self) -> str:
        """Where DIOR's vectors were read (see models.dior); the last input for the others."""
        return self.settings.source

    @property
    def reads_last_input(self) -> bool:
        """Whether the vectors are states of the prompt's last token, from which the output
        head gives the answer's first token (what a text query scores by)."""
        return self.source == defaults.DEFAULT_SOURCE and self.settings.num_token == -1

    def to_fields(self) -> dict[str, Any]:
        """The flat form a manifest stores: `method`, the settings' fields, the model's."""
        described = {
            "method": self.method,
            **asdict(self.settings),
            "model_type": self.model_type,
            "commit": self.commit,
            "weights_fingerprint": self.weights_fingerprint,
            "dtype": self.dtype,
            "dim": self.dim,
        }
        if self.image_size_policy:
            described["image_size_policy"] = self.image_size_policy
        if self.text_encoder_fingerprint is not None:
            described["text_encoder_commit"] = self.text_encoder_commit
            described["text_encoder_fingerprint"] = self.text_encoder_fingerprint
        return described

    @classmethod
    def from_fields(cls, stored: dict[str, Any]) -> EmbedderDescription:
        """The description a manifest stored; its settings are rebuilt, dtype as it ran."""
        settings_class = method_named(stored.get("method", "dior")).settings
        return cls(
            settings=settings_class.from_fields(stored),
            model_type=str(stored["model_type"]),
            commit=stored.get("commit"),
            weights_fingerprint=str(stored["weights_fingerprint"]),
            dtype=str(stored["dtype"]),
            dim=int(stored["dim"]),
            image_size_policy=dict(stored.get("image_size_policy") or {}),
            text_encoder_commit=stored.get("text_encoder_commit"),
            text_encoder_fingerprint=stored.get("text_encoder_fingerprint"),
        )

    def identity(self) -> dict[str, Any]:
        """What must match for two sets of vectors to be comparable."""
        described = asdict(self.settings)
        return {
            "method": self.method,
            **{key: described.get(key) for key in IDENTITY_SETTINGS},
            "commit": self.commit,
            "weights_fingerprint": self.weights_fingerprint,
            "text_encoder_fingerprint": self.text_encoder_fingerprint,
        }

    def differences(self, other: EmbedderDescription) -> list[str]:
        """Each identity field where `other` differs, as `name stored (asked: other's)`."""
        mine, theirs = self.identity(), other.identity()
        return [
            f"{key} {mine[key]!r} (asked: {theirs[key]!r})"
            for key in mine
            if mine[key] != theirs[key]
        ]


class ImageRefused(InputError):
    """An image the model's input processing would refuse (an extreme aspect ratio, say)."""


class Embedder(Protocol):
    """Anything that embeds images under text conditions."""

    @property
    def dim(self) -> int: ...

    def check_size(self, width: int, height: int) -> None:
        """Raise ImageRefused, saying why, if `embed` would refuse an image of this size (as
        given, before any shrinking); it needs no model call, nor the pixels."""
        ...

    def describe(self) -> EmbedderDescription:
        """What makes these embeddings, for the index manifest."""
        ...

    def embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Float32 array of shape (len(images), len(conditions), dim)."""
        ...


@runtime_checkable
class AnsweringEmbedder(Embedder, Protocol):
    """An embedder that also reads the model's own answer for every (image, condition):
    `isinstance(embedder, AnsweringEmbedder)` says whether it does."""

    def embed_with_answers(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, list[list[Answer | None]]]:
        """`embed`'s vectors and `answers[image][condition]` (None where that condition's
        vectors come from a layer other than the last)."""
        ...


def answers_given(embedder: Embedder) -> AnswerState:
    """Whether `embedder`'s vectors come with the model's answers (`stored`), or why not
    (`off`: it gives none; `not-last-layer`)."""
    return embedder.describe().answers if isinstance(embedder, AnsweringEmbedder) else "off"
