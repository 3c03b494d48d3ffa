"""One adapter per model family; `load_adapter` is the only place that asks which family a model is."""

from __future__ import annotations

from pathlib import Path

import torch

from mechanisms.models.adapters.base import HeadLayout, ModelAdapter
from mechanisms.models.adapters.gemma3 import Gemma3Adapter, load_gemma3
from mechanisms.models.adapters.internvl import InternVLAdapter, load_internvl
from mechanisms.models.adapters.llava import LlavaAdapter, load_llava
from mechanisms.models.adapters.llava_onevision import LlavaOnevisionAdapter, load_llava_onevision
from mechanisms.models.adapters.qwen_vl import Qwen3VLAdapter, QwenVLAdapter, load_qwen2_5_vl, load_qwen3_vl

LOADERS = {"llava": load_llava, "internvl": load_internvl, "qwen2_5_vl": load_qwen2_5_vl, "qwen3_vl": load_qwen3_vl,
           "llava_onevision": load_llava_onevision, "gemma3": load_gemma3}


class FamilyNotSupported(LookupError):
    """The profile's family has no adapter yet."""


def load_adapter(family: str, path: Path, dtype: torch.dtype, device: str,
                 system_prompt: str | None = None, processor_settings: dict | None = None) -> ModelAdapter:
    """`device` is a torch device, or "auto" to spread a model too large for one device over all of them
    (transformers' `device_map="auto"`, which needs accelerate); `system_prompt` and `processor_settings`
    (keywords of every processor call): the profile's."""
    if family not in LOADERS:
        raise FamilyNotSupported(f"the {family!r} model family has no adapter yet "
                                 f"(available: {', '.join(sorted(LOADERS))})")
    adapter = LOADERS[family](path, dtype, device)
    adapter.system_prompt = system_prompt
    adapter.processor_settings = dict(processor_settings or {})
    return adapter


__all__ = ["FamilyNotSupported", "Gemma3Adapter", "HeadLayout", "InternVLAdapter", "LlavaAdapter", "LlavaOnevisionAdapter",
           "ModelAdapter", "Qwen3VLAdapter", "QwenVLAdapter", "load_adapter"]
