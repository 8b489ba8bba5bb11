"""Model families: how each kind of vision-language model gets its inputs built.

The shared part (batches, the `InputBuilder` protocol, the choice of family) is in
families.inputs; each family has a module of its own (qwen_vl, processor_vl).
"""

from dior_search.models.families.inputs import (
    InputBuilder,
    ModelBatch,
    PrefixReuseUnsupported,
    SplitBatch,
    check_image_size,
    last_token_index,
    load_input_builder,
    processor_size_policy,
)

__all__ = [
    "InputBuilder",
    "ModelBatch",
    "PrefixReuseUnsupported",
    "SplitBatch",
    "check_image_size",
    "last_token_index",
    "load_input_builder",
    "processor_size_policy",
]
