"""Several hidden layers from one forward pass equal one run per layer."""

import numpy as np
import pytest

from dior_search.errors import UsageError
from dior_search.models.dior import DiorEmbedder
from dior_search.models.layer_views import LayerStack
from dior_search.models.settings import DiorSettings

CONDITIONS = ["object color", None, "background color"]


def settings(**overrides):
    return DiorSettings(model="tiny", device="cpu", batch_size=4, **overrides)


def count_forward_passes(embedder):
    calls = []
    forward = embedder.model.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    embedder.model.forward = counted
    return calls


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_layers_of_one_pass_equal_one_run_per_layer(mixed_images, prefix_reuse):
    layers = [-1, 2, 3, -4]
    several = DiorEmbedder(settings(prefix_reuse=prefix_reuse), layers)
    calls = count_forward_passes(several)
    stacked = several.embed_layers(mixed_images, CONDITIONS)
    assert stacked.shape == (len(mixed_images), len(CONDITIONS), len(layers), several.dim)
    one_layer = DiorEmbedder(settings(prefix_reuse=prefix_reuse))
    single_calls = count_forward_passes(one_layer)
    one_layer.embed(mixed_images, CONDITIONS)
    # The hidden states of the same forward passes, not a pass per layer.
    assert len(calls) == len(single_calls) > 0
    for position, layer in enumerate(layers):
        alone = DiorEmbedder(settings(prefix_reuse=prefix_reuse, layer=layer))
        expected = alone.embed(mixed_images, CONDITIONS)
        np.testing.assert_allclose(stacked[:, :, position], expected, rtol=1e-4, atol=1e-5)
    # The test can fail: the layers differ.
    assert np.abs(stacked[:, :, 0] - stacked[:, :, 1]).max() > 1e-2


def test_a_stack_embeds_its_conditions_once_per_layer(mixed_images):
    several = DiorEmbedder(settings(), [-1, 1])
    stack = LayerStack(several)
    vectors = stack.embed(mixed_images[:2], ["object color", "pattern"] * 2)
    layers = several.embed_layers(mixed_images[:2], ["object color", "pattern"])
    np.testing.assert_array_equal(vectors[:, :2], layers[:, :, 0])
    np.testing.assert_array_equal(vectors[:, 2:], layers[:, :, 1])
    assert [view.describe().settings.layer for view in stack.views] == [-1, 1]


def test_a_layer_out_of_range_is_refused():
    with pytest.raises(UsageError, match="layer 9 out of range"):
        DiorEmbedder(settings(), [-1, 9])
    # The embedding layer gives every image the same vector.
    with pytest.raises(UsageError, match="layer -5 is the embedding layer"):
        DiorEmbedder(settings(), [-1, -5])
