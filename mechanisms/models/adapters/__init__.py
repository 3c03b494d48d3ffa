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


def load_adapter(family: str, path: Path, dtype: torch.dtype, device: str) -> ModelAdapter:
    """`device` is a torch device, or "auto" to spread a model too large for one device over all of them
    (transformers' `device_map="auto"`, which needs accelerate)."""
    if family not in LOADERS:
        raise FamilyNotSupported(f"the {family!r} model family has no adapter yet "
                                 f"(available: {', '.join(sorted(LOADERS))})")
    return LOADERS[family](path, dtype, device)


__all__ = ["FamilyNotSupported", "HeadLayout", "InternVLAdapter", "LlavaAdapter", "ModelAdapter", "load_adapter"]
