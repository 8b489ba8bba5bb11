"""The one table of embedding methods: every dispatch on a method goes through it, the settings
base class answers what callers read of any method, and `AnsweringEmbedder` is a real check."""

from dataclasses import asdict

import pytest

from dior_search import defaults
from dior_search.errors import UsageError
from dior_search.models import load_embedder
from dior_search.models.clip import ClipEmbedder
from dior_search.models.dior import DiorEmbedder
from dior_search.models.embedder import AnsweringEmbedder, EmbedderDescription, answers_given
from dior_search.models.layer_views import LayerStack, LayerView
from dior_search.models.methods import METHODS, method_named, settings_for
from dior_search.models.settings import (
    ClipSettings,
    DiorSettings,
    EmbedderOptions,
    GenerativeSettings,
    IndirectSettings,
)
from dior_search.store.manifest_schema import EMBEDDER_FIELDS


def test_each_method_has_one_entry_that_every_dispatch_reads():
    assert list(METHODS) == ["dior", "clip", "generative", "indirect"]
    options = EmbedderOptions(model="tiny", clip_model="a-clip")
    for name, method in METHODS.items():
        settings = settings_for(name, options)
        assert type(settings) is method.settings and settings.method == name
        # A manifest's fields rebuild the settings of its method.
        stored = {"method": name, **asdict(settings), "model_type": "m", "weights_fingerprint": ""}
        rebuilt = EmbedderDescription.from_fields({**stored, "dim": 4})
        assert rebuilt.settings == settings
    # The manifest schema accepts exactly the table's methods.
    assert set(EMBEDDER_FIELDS["method"].choices) == set(METHODS)


def test_an_unknown_method_is_a_usage_error_listing_the_valid_ones():
    valid = "valid: dior, clip, generative, indirect"
    with pytest.raises(UsageError, match=f"unknown embedding method 'magic'; {valid}"):
        method_named("magic")
    with pytest.raises(UsageError, match=f"unknown embedding method 'magic'; {valid}"):
        settings_for("magic", EmbedderOptions())
    stored = {"method": "magic", "model_type": "m", "weights_fingerprint": "", "dtype": "float32"}
    with pytest.raises(UsageError, match=f"unknown embedding method 'magic'; {valid}"):
        EmbedderDescription.from_fields({**stored, "dim": 4})


def test_load_embedder_builds_the_embedder_the_table_names(baseline_model_dirs):
    assert type(load_embedder(DiorSettings(model="tiny", device="cpu"))) is DiorEmbedder
    clip = load_embedder(ClipSettings(model=str(baseline_model_dirs["clip"]), device="cpu"))
    assert type(clip) is ClipEmbedder


def test_the_settings_base_class_answers_for_every_method():
    # What indexing, the manifest and search read of any method's settings, without getattr.
    for settings in (ClipSettings(), IndirectSettings()):
        assert settings.layer is None
        assert settings.source == defaults.DEFAULT_SOURCE
        assert settings.num_token == -1
        assert settings.template == defaults.DEFAULT_TEMPLATE
    generative = GenerativeSettings(template="express")
    assert generative.template == "express" and generative.layer is None
    dior = DiorSettings(layer=3, source="first_output", template="express")
    assert (dior.layer, dior.source, dior.template) == (3, "first_output", "express")
    assert DiorSettings(num_token=-2).num_token == -2
    # Only the fields a method has are written into a manifest (its format is unchanged).
    assert not {"layer", "source", "num_token", "template"} & set(asdict(ClipSettings()))
    assert "layer" not in asdict(GenerativeSettings())


class VectorsOnly:
    """An embedder that gives no answers."""

    dim = 4

    def check_size(self, width: int, height: int) -> None: ...

    def describe(self) -> EmbedderDescription:
        raise AssertionError("an embedder without answers is not asked for its answer state")

    def embed(self, images, conditions, on_progress=None): ...


def test_answering_embedders_are_told_apart_by_the_protocol():
    dior = DiorEmbedder(DiorSettings(model="tiny", device="cpu"))
    assert isinstance(dior, AnsweringEmbedder) and answers_given(dior) == "stored"
    several = DiorEmbedder(DiorSettings(model="tiny", device="cpu"), layers=[-1, 1])
    views = [LayerView(several, layer) for layer in several.layers]
    assert all(isinstance(view, AnsweringEmbedder) for view in views)
    assert [answers_given(view) for view in views] == ["stored", "not-last-layer"]
    assert isinstance(LayerStack(several), AnsweringEmbedder)
    assert not isinstance(VectorsOnly(), AnsweringEmbedder)
    assert answers_given(VectorsOnly()) == "off"
