"""tiny-llava: a real `LlavaForConditionalGeneration` small enough to train on two CPU cores.

Same classes and same processing as LLaVA-1.5 (CLIP vision tower, two-layer GELU MLP projector, Llama
LM, `LlavaProcessor` with a pad-to-square `LlavaImageProcessor`), scaled down. Two recipes (`RECIPES`):
"v1", the shipped model (96 px / patch 8 = a 12 x 12 grid, 3-layer tower, 6-layer LM with 4 query heads
sharing 2 key/value heads), and "v2", the one in training (issue 14: 128 px = 16 x 16, a 12-layer LM with
8 query heads sharing 2 key/value heads, i.e. 96 heads: room for layer bands and sparse head circuits).
The tokenizer is word-level over the closed vocabulary of the prompts and answers, with every digit a
token of its own, so box coordinates decode exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from mechanisms.data.synthetic import CATEGORY_NAMES
from mechanisms.organisms.vocabulary import word_level_tokenizer
from mechanisms.tasks.prompts import BINARY_PROMPT, BOX_PROMPT, LIST_PROMPT

PATCH_SIZE = 8


@dataclass(frozen=True)
class Recipe:
    """The architecture of one generation of tiny-llava, and how its tower is pre-trained."""

    image_size: int
    vision_layers: int
    lm_layers: int
    lm_heads: int
    lm_kv_heads: int
    lm_intermediate: int
    max_positions: int
    tower_pooling: str  # how the tower's pre-training head pools its patch tokens (train.pretrain_tower)

    @property
    def grid(self) -> int:
        return self.image_size // PATCH_SIZE


RECIPES = {"v1": Recipe(96, 3, 6, 4, 2, 384, 512, "mean"), "v2": Recipe(128, 3, 12, 8, 2, 256, 640, "max")}
SHIPPED = "v1"  # what fixtures/models/tiny-llava was made with (its training code: commit d4d369a)
TRAINING = "v2"  # what `python -m mechanisms.organisms.train` trains; shipped once it meets its floors
SYSTEM_TEXT = "A chat between a curious user and an artificial intelligence assistant."
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# LLaVA-1.5's conversation shape: system text, then "USER: <image>\n{task} ASSISTANT: {answer}</s>".
CHAT_TEMPLATE = (
    "{{ '" + SYSTEM_TEXT + "' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %} USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% else %} ASSISTANT: "
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
# Later turns of a training chat, and the answer's ending (the LM learns to stop at </s>).
FOLLOW_UP_TURN = " USER: {question} ASSISTANT:"
REPLY = " {answer}</s>"


def _vocabulary_corpus() -> list[str]:
    """Every text the model is trained on is made of these pieces."""
    classes = ", ".join(CATEGORY_NAMES)
    pieces = [SYSTEM_TEXT, " USER: ", " ASSISTANT: ", "Yes", "No", " Yes", " No", "[0.12, 0.34, 0.56, 0.78]",
              " 0123456789", LIST_PROMPT.format(classes=classes)]
    for name in CATEGORY_NAMES:
        pieces += [BOX_PROMPT.format(cls=name), BINARY_PROMPT.format(cls=name), " " + name + ","]
    return pieces + [" " + piece for piece in pieces]


def build_tokenizer() -> PreTrainedTokenizerFast:
    return word_level_tokenizer(_vocabulary_corpus(), SPECIAL_TOKENS, unk="<unk>", eos="</s>", pad="<pad>",
                                bos="<s>", named_tokens={"image_token": "<image>"}, keep_newlines=False)


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None, recipe: str = SHIPPED) -> LlavaProcessor:
    tokenizer = tokenizer or build_tokenizer()
    size = RECIPES[recipe].image_size
    # do_pad=True is LLaVA-1.5's expand2square (pad with the mean colour), then resize to the square.
    image_processor = LlavaImageProcessor(
        do_pad=True, size={"shortest_edge": size},
        crop_size={"height": size, "width": size}, do_center_crop=True,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE)


def build_config(tokenizer: PreTrainedTokenizerFast, recipe: str = SHIPPED) -> LlavaConfig:
    r = RECIPES[recipe]
    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=r.vision_layers, num_attention_heads=4,
        image_size=r.image_size, patch_size=PATCH_SIZE, projection_dim=128)
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=r.lm_intermediate, num_hidden_layers=r.lm_layers,
        num_attention_heads=r.lm_heads, num_key_value_heads=r.lm_kv_heads, head_dim=128 // r.lm_heads,
        max_position_embeddings=r.max_positions,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu", vision_feature_select_strategy="default",
        # the tower is only 3 layers deep: read its last layer (LLaVA-1.5 reads the penultimate of 24)
        vision_feature_layer=-1, image_seq_length=r.grid * r.grid, tie_word_embeddings=True)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position table [grid*grid, dim]: a position-aware init for the tower."""
    assert dim % 4 == 0
    omega = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing="ij")
    out_y = ys.reshape(-1, 1) * omega
    out_x = xs.reshape(-1, 1) * omega
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)


def build_model(seed: int, tokenizer: PreTrainedTokenizerFast | None = None,
                recipe: str = SHIPPED) -> LlavaForConditionalGeneration:
    """A freshly initialised tiny-llava (the untrained control uses exactly this)."""
    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(tokenizer, recipe))
    embeddings = model.model.vision_tower.embeddings
    with torch.no_grad():
        # amplitude 1, as fixed sin-cos tables usually are: a table at CLIP's init scale (std 0.02) is
        # drowned by the patch embeddings (std ~0.3) and position is then barely decodable (R^2 ~0.4)
        table = embeddings.position_embedding.weight
        table[1:] = sincos_2d(RECIPES[recipe].grid, table.shape[1])
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_untrained(out, seed: int = 0):
    """Write a random-init tiny-llava of the shipped config: the control a claim must fail on."""
    tokenizer = build_tokenizer()
    model = build_model(seed, tokenizer)
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    return out


def save_random_real_geometry(out, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4):
    """A random-init LLaVA with LLaVA-1.5's real geometry (CLIP 336 px / patch 14 -> 24x24 = 576 tokens,
    penultimate-layer features, GQA LM) saved like a llava-hf checkpoint, i.e. with the centre-cropping
    CLIP image processor llava-hf ships: tests and benchmarks use it where the image geometry matters."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig

    tokenizer = build_tokenizer()
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=2, image_size=336, patch_size=14)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                       max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    clip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                              image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaProcessor(image_processor=clip, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
