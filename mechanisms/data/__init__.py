"""Datasets: the synthetic scenes (generated on demand, cached) and COCO-format folders on disk."""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

from mechanisms.data.dataset import Dataset, DatasetError, ObjectSample, load_dataset

# The default evaluation set: held-out scenes (training draws its scenes from other seeds).
SYNTHETIC_EVAL_SEED = 20_251_130
SYNTHETIC_EVAL_IMAGES = 300


def cache_root() -> Path:
    """Where generated data and cached results go: $VLM_MECHANISMS_CACHE or ./.cache in the repo."""
    default = Path(__file__).resolve().parents[2] / ".cache"
    return Path(os.environ.get("VLM_MECHANISMS_CACHE", default))


def synthetic_dataset_path(seed: int = SYNTHETIC_EVAL_SEED, n_images: int = SYNTHETIC_EVAL_IMAGES) -> Path:
    """Generate the synthetic set once (one process writes, concurrent xdist workers wait) and return it."""
    from mechanisms.data.synthetic import write_dataset

    root = cache_root() / "datasets" / f"synthetic-seed{seed}-n{n_images}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not (root / "manifest.json").is_file():  # the manifest is written last
            write_dataset(root, n_images, seed, name=f"synthetic-eval-seed{seed}")
    return root


def resolve_dataset(spec: str) -> Dataset:
    """`synthetic` (default held-out scenes), `synthetic:SEED:N`, or a path to a dataset folder."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        parts = spec.split(":")
        seed = int(parts[1]) if len(parts) > 1 else SYNTHETIC_EVAL_SEED
        n_images = int(parts[2]) if len(parts) > 2 else SYNTHETIC_EVAL_IMAGES
        return load_dataset(synthetic_dataset_path(seed, n_images))
    return load_dataset(Path(spec))


__all__ = ["Dataset", "DatasetError", "ObjectSample", "load_dataset", "resolve_dataset", "cache_root"]
