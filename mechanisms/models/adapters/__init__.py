"""One adapter per model family; `load_adapter` is the only place that asks which family a model is."""

from __future__ import annotations

from pathlib import Path

import torch

from mechanisms.models.adapters.base import HeadLayout, ModelAdapter
from mechanisms.models.adapters.internvl import InternVLAdapter, load_internvl
from mechanisms.models.adapters.llava import LlavaAdapter, load_llava

LOADERS = {"llava": load_llava, "internvl": load_internvl}


class FamilyNotSupported(LookupError):
    """The profile's family has no adapter yet."""


def load_adapter(family: str, path: Path, dtype: torch.dtype, device: str,
                 system_prompt: str | None = None) -> ModelAdapter:
    """`device` is a torch device, or "auto" to spread a model too large for one device over all of them
    (transformers' `device_map="auto"`, which needs accelerate); `system_prompt`: the profile's."""
    if family not in LOADERS:
        raise FamilyNotSupported(f"the {family!r} model family has no adapter yet "
                                 f"(available: {', '.join(sorted(LOADERS))})")
    adapter = LOADERS[family](path, dtype, device)
    adapter.system_prompt = system_prompt
    return adapter


__all__ = ["FamilyNotSupported", "HeadLayout", "InternVLAdapter", "LlavaAdapter", "ModelAdapter", "load_adapter"]
