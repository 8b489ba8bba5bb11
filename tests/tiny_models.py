"""Tiny random-weight models of each supported family and of the baselines, built offline."""

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    T5Config,
    T5EncoderModel,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from dior_search.models.tiny_training import (
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


def save_qwen25(folder: Path, seed: int = 0, tie_word_embeddings: bool = True) -> Path:
    torch.manual_seed(seed)
    tokenizer = build_qwen_tokenizer(tiny_corpus(), vocab_size=400)
    config = qwen25_config(tokenizer, hidden=64, layers=2, vision_hidden=32, vision_layers=2)
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = tie_word_embeddings
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


def clip_tokenizer() -> Any:
    """A CLIP-style tokenizer: start and end tokens around every text, padded with the end."""
    from tokenizers import processors

    from dior_search.data.indirect_texts import SYNTHETIC_LISTS

    corpus = [
        *tiny_corpus(),
        *(t.format(item=i) for t, items in SYNTHETIC_LISTS.values() for i in items),
    ]
    tokenizer = build_bpe_tokenizer(
        corpus,
        ["<|startoftext|>", "<|endoftext|>"],
        vocab_size=320,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)],
    )
    return tokenizer


def save_clip(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 56,
            "patch_size": 14,
        },
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
    ).save_pretrained(folder)
    return folder


def text_tokenizer(pad_token: str, **named: str) -> Any:
    corpus = [*tiny_corpus(), "system user assistant red green blue circle square"]
    special = [pad_token, *named.values()]
    tokenizer = build_bpe_tokenizer(corpus, special, vocab_size=300, pad_token=pad_token, **named)
    return tokenizer


def save_bert_encoder(folder: Path, seed: int = 0) -> Path:
    """A plain transformers text encoder: mean pooling and L2 normalisation apply."""
    torch.manual_seed(seed)
    tokenizer = text_tokenizer("[PAD]", unk_token="[UNK]")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


SENTENCE_T5_DENSE = {"in_features": 32, "out_features": 20, "bias": True}


def save_sentence_t5(folder: Path, seed: int = 0) -> Path:
    """A T5 encoder in sentence-transformers layout: mean pooling, Dense (tanh), Normalize."""
    torch.manual_seed(seed)
    tokenizer = text_tokenizer("<pad>", eos_token="</s>", unk_token="<unk>")
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    T5EncoderModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    modules = [
        ("", "Transformer"),
        ("1_Pooling", "Pooling"),
        ("2_Dense", "Dense"),
        ("3_Normalize", "Normalize"),
    ]
    write_json(
        folder / "modules.json",
        [
            {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
            for i, (path, kind) in enumerate(modules)
        ],
    )
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 24, "do_lower_case": True})
    write_json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": 32,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    dense = torch.nn.Linear(SENTENCE_T5_DENSE["in_features"], SENTENCE_T5_DENSE["out_features"])
    write_json(
        folder / "2_Dense" / "config.json",
        {**SENTENCE_T5_DENSE, "activation_function": "torch.nn.modules.activation.Tanh"},
    )
    # sentence-t5-base ships its Dense weights as a pickled state dict.
    torch.save(
        {f"linear.{k}": v for k, v in dense.state_dict().items()},
        folder / "2_Dense" / "pytorch_model.bin",
    )
    (folder / "3_Normalize").mkdir()
    return folder


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def save_talkative_qwen25(folder: Path) -> Path:
    """A Qwen2.5-VL whose greedy answers vary with image and prompt.

    With tied embeddings a random model echoes its last prompt token forever, the same for
    every row, and a test comparing answers could not fail.
    """
    return save_qwen25(folder, seed=2, tie_word_embeddings=False)


BASELINE_BUILDERS = {
    "qwen2_5_vl_untied": save_talkative_qwen25,
    "clip": save_clip,
    "bert": save_bert_encoder,
    "sentence_t5": save_sentence_t5,
}
