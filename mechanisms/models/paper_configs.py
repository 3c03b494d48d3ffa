"""The paper's checkpoints' configurations, full size, without weights (for the cost model and stand-ins).

- `llava7b`: llava-hf/llava-1.5-7b-hf's own config.json (verbatim in `fixtures/real-configs/`).
- `llava13b`: the same with llava-1.5-13b-hf's published text model (Vicuna-13B v1.5).
- `internvl8b`: OpenGVLab/InternVL3_5-8B-HF's published sizes: InternViT-300M (1,024 wide, 24 layers,
  16 heads, MLP 4,096, 448 px / patch 14) and Qwen3-8B (4,096 wide, 36 layers, 32 query / 8 key-value
  heads of 128, MLP 12,288, vocabulary 151,936), pixel shuffle 0.5 (`../shared/notes/real-checkpoints.md`).

`meta_model(profile)` builds the transformers model on the meta device: exact parameter counts and
shapes, no memory, nothing downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real-configs"
LLAVA13B_TEXT = {"_name_or_path": "lmsys/vicuna-13b-v1.5", "hidden_size": 5120, "intermediate_size": 13824,
                 "num_attention_heads": 40, "num_hidden_layers": 40}
INTERNVL8B_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "image_size": [448, 448], "patch_size": [14, 14]}
INTERNVL8B_TEXT = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False}
PAPER_PROFILES = ("llava7b", "llava13b", "internvl8b")


def paper_config(profile: str):
    """The full-size transformers config of a paper profile's checkpoint."""
    if profile in ("llava7b", "llava13b"):
        from transformers import LlavaConfig

        config = json.loads((REAL / "llava-1.5-7b-hf" / "config.json").read_text())
        if profile == "llava13b":
            config["text_config"].update(LLAVA13B_TEXT)
        return LlavaConfig(**{k: v for k, v in config.items() if k != "architectures"})
    if profile == "internvl8b":
        from transformers import InternVLConfig, InternVLVisionConfig, Qwen3Config

        return InternVLConfig(vision_config=InternVLVisionConfig(**INTERNVL8B_VISION),
                              text_config=Qwen3Config(**INTERNVL8B_TEXT), image_token_id=151671,
                              downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
                              vision_feature_select_strategy="default", tie_word_embeddings=False)
    raise ValueError(f"no paper configuration for profile {profile!r} (known: {', '.join(PAPER_PROFILES)})")


def meta_model(profile: str):
    """The profile's model class built from `paper_config` on the meta device (shapes only)."""
    import torch
    from transformers import InternVLForConditionalGeneration, LlavaForConditionalGeneration

    config = paper_config(profile)
    cls = InternVLForConditionalGeneration if profile == "internvl8b" else LlavaForConditionalGeneration
    with torch.device("meta"):
        return cls(config)
