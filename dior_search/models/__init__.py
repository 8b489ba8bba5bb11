"""Models: the embedder interface, its settings, and the model families behind it.

`load_embedder(settings)` builds the embedder a settings object describes: DIOR from a
vision-language model, or a baseline (CLIP, generative, InDiReCT). Which embedder a method
loads is in `models.methods`, the one table of methods. Heavy modules load on first use.
"""

from dior_search.models.methods import load_embedder

__all__ = ["load_embedder"]
