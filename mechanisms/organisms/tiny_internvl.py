"""tiny-internvl: a real `InternVLForConditionalGeneration` small enough to train on two CPU cores.

Same classes and processing as InternVL-3.5 (InternViT-style vision tower, pixel shuffle 0.5, two-layer
MLP projector, Qwen3 LM with grouped-query attention, `InternVLProcessor` with dynamic tiling capped at
6 tiles plus a global thumbnail), scaled down: 48 px tiles, patch 4 (12 x 12 patches, shuffled to
6 x 6 = 36 tokens per view), a GQA LM: recipe "v1" (shipped) has 6 layers of 4 query heads sharing 2
key/value heads, "v2" (in training, issue 14) 12 layers of 8 query heads sharing 2. The token
budget per view, not the model width, sets the CPU training cost: ~5 views of 36 tokens keep chats
near 350 tokens.
The tokenizer is word-level over the closed vocabulary of the prompts and answers, digits one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVisionConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
)
from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

from mechanisms.data.synthetic import CATEGORY_NAMES
from mechanisms.organisms.tiny_llava import sincos_2d
from mechanisms.organisms.vocabulary import word_level_tokenizer
from mechanisms.tasks.prompts import BINARY_PROMPT, BOX_PROMPT, LIST_PROMPT

TILE_SIZE = 48
PATCH_SIZE = 4
MAX_TILES = 6  # the paper's cap
PATCH_GRID = TILE_SIZE // PATCH_SIZE  # 12 x 12 patches per view
TOKENS_PER_VIEW = (PATCH_GRID // 2) ** 2  # pixel shuffle 0.5 -> 6 x 6


@dataclass(frozen=True)
class Recipe:
    """One generation of tiny-internvl's LM, and how its tower is pre-trained."""

    lm_layers: int
    lm_heads: int
    lm_kv_heads: int
    mlp_ratio: int  # LM intermediate size / hidden size
    tower_pooling: str


# v2: 96 query heads, room for layer bands and sparse head circuits
RECIPES = {"v1": Recipe(6, 4, 2, 3, "mean"), "v2": Recipe(12, 8, 2, 2, "max")}
SHIPPED = "v1"  # what fixtures/models/tiny-internvl was made with (its training code: commit d4d369a)
TRAINING = "v2"  # what `python -m mechanisms.organisms.train_internvl` trains
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
NAMED_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
SPECIAL_TOKENS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", *NAMED_TOKENS.values()]

# InternVL-3.5's (Qwen) chat shape; the processor expands <IMG_CONTEXT> into <img> + tokens + </img>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Later turns of a training chat, and the answer's ending (the LM learns to stop at <|im_end|>).
FOLLOW_UP_TURN = "\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
REPLY = "{answer}<|im_end|>"


def _vocabulary_corpus() -> list[str]:
    classes = ", ".join(CATEGORY_NAMES)
    pieces = ["user\n", "assistant\n", "Yes", "No", "<box>[[123, 456, 789, 1000]]</box>", "0123456789",
              LIST_PROMPT.format(classes=classes)]
    for name in CATEGORY_NAMES:  # a list answer starts right after "assistant\n": its first word has no space
        pieces += [BOX_PROMPT.format(cls=name), BINARY_PROMPT.format(cls=name), " " + name + ",", name + ","]
    return pieces + [" " + piece for piece in pieces]


def build_tokenizer() -> PreTrainedTokenizerFast:
    return word_level_tokenizer(_vocabulary_corpus(), SPECIAL_TOKENS, unk="<unk>", eos="<|im_end|>",
                                pad="<|endoftext|>", bos=None, named_tokens=NAMED_TOKENS, keep_newlines=True)


def build_image_processor(tile_size: int = TILE_SIZE, max_tiles: int = MAX_TILES) -> GotOcr2ImageProcessor:
    return GotOcr2ImageProcessor(
        size={"height": tile_size, "width": tile_size}, crop_to_patches=True, min_patches=1,
        max_patches=max_tiles, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, resample=3)


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None, tile_size: int = TILE_SIZE,
                    tokens_per_view: int = TOKENS_PER_VIEW) -> InternVLProcessor:
    tokenizer = tokenizer or build_tokenizer()
    return InternVLProcessor(
        image_processor=build_image_processor(tile_size), tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(), image_seq_length=tokens_per_view, chat_template=CHAT_TEMPLATE)


def build_config(tokenizer: PreTrainedTokenizerFast, *, tile_size: int = TILE_SIZE, patch_size: int = PATCH_SIZE,
                 vision_hidden: int = 128, vision_layers: int = 3, hidden: int = 128, recipe: str = SHIPPED,
                 layers: int | None = None, heads: int | None = None, kv_heads: int | None = None) -> InternVLConfig:
    r = RECIPES[recipe]
    layers, heads, kv_heads = layers or r.lm_layers, heads or r.lm_heads, kv_heads or r.lm_kv_heads
    vision = InternVLVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
        num_attention_heads=4, image_size=tile_size, patch_size=patch_size,
        use_absolute_position_embeddings=True, use_mean_pooling=False)
    text = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=r.mlp_ratio * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    grid = tile_size // patch_size // 2
    return InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.context_image_token_id,
        downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_seq_length=grid * grid, tie_word_embeddings=True)


def build_model(seed: int, tokenizer: PreTrainedTokenizerFast | None = None, **config) -> InternVLForConditionalGeneration:
    """A freshly initialised tiny-internvl (the untrained control uses exactly this)."""
    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(build_config(tokenizer, **config))
    embeddings = model.model.vision_tower.embeddings
    with torch.no_grad():  # a fixed 2-D sine-cosine position table at amplitude 1, as in tiny-llava
        table = embeddings.position_embeddings
        grid = int((table.shape[1] - 1) ** 0.5)
        table[0, 1:] = sincos_2d(grid, table.shape[2])
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_untrained(out, seed: int = 0):
    """Write a random-init tiny-internvl of the shipped config: the control a claim must fail on."""
    tokenizer = build_tokenizer()
    build_model(seed, tokenizer).save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    return out


def save_random_real_geometry(out, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4,
                              kv_heads: int = 2):
    """A random-init InternVL with InternVL-3.5's real geometry (448 px tiles, patch 14 -> 32 x 32 patches,
    pixel shuffle to 16 x 16 = 256 tokens per view, tiles + thumbnail) and a GQA Qwen3 LM, saved like a hub
    checkpoint (its processor allows 12 tiles; the loader applies the paper's cap of 6)."""
    tokenizer = build_tokenizer()
    model = build_model(seed, tokenizer, tile_size=448, patch_size=14, vision_hidden=32, vision_layers=1,
                        hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads)
    model.save_pretrained(out)
    processor = build_processor(tokenizer, tile_size=448, tokens_per_view=256)
    processor.image_processor.max_patches = 12  # what the hub's InternVL-3.5 processors allow
    processor.save_pretrained(out)
    return out
