"""Tiny random-weight vision-language models of each supported family, built offline."""

from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from dior_search.tiny_training import (
    QWEN_SPECIAL_TOKENS,
    build_bpe_tokenizer,
    build_qwen_tokenizer,
    qwen25_config,
    qwen_image_processor,
    tiny_corpus,
)

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def save_qwen25(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = build_qwen_tokenizer(tiny_corpus(), vocab_size=400)
    config = qwen25_config(tokenizer, hidden=64, layers=2, vision_hidden=32, vision_layers=2)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    qwen_image_processor(max_pixels=140 * 140).save_pretrained(folder)
    return folder


def save_qwen2(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = build_qwen_tokenizer(tiny_corpus(), vocab_size=400)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 6, 6],
            },
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    qwen_image_processor(max_pixels=140 * 140).save_pretrained(folder)
    return folder


def save_llava(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = build_bpe_tokenizer(
        [*tiny_corpus(), "USER: ASSISTANT:"],
        ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        vocab_size=400,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        ),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


BUILDERS = {"qwen2_5_vl": save_qwen25, "qwen2_vl": save_qwen2, "llava": save_llava}
