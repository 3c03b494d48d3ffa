"""The global mean visual embedding that ablation writes into removed tokens (§3.1).

The paper averages the LM-input visual tokens over ImageNet val; here the reference set is any image
folder (`--reference-images DIR`) or a synthetic pool (`synthetic:SEED:N`, the default). Computed once
per (model, reference set) and cached on disk, atomically and under a lock so xdist workers share it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from filelock import FileLock

from mechanisms.data.image_sets import image_set
from mechanisms.storage import atomic_write_bytes

DEFAULT_REFERENCE = "synthetic:777:100"  # a seed no evaluation or training set uses


@torch.no_grad()
def compute_mean_embedding(adapter, loaders: list, batch_size: int = 16) -> torch.Tensor:
    """Mean over all images and all their visual tokens, accumulated in float64."""
    total, count = None, 0
    for start in range(0, len(loaders), batch_size):
        features = adapter.image_features([load() for load in loaders[start:start + batch_size]])
        flat = torch.cat(features).double()
        total = flat.sum(0) if total is None else total + flat.sum(0)
        count += flat.shape[0]
    return (total / count).float().cpu()


def mean_visual_embedding(adapter, model_fingerprint: str, spec: str, cache_dir: Path,
                          batch_size: int = 16) -> torch.Tensor:
    loaders, set_fingerprint = image_set(spec)
    path = Path(cache_dir) / "mean-embeddings" / f"{model_fingerprint}-{set_fingerprint}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                return torch.load(path, weights_only=True)
            except Exception:  # a truncated or corrupt entry is recomputed
                path.unlink()
        mean = compute_mean_embedding(adapter, loaders, batch_size)
        buffer = io.BytesIO()
        torch.save(mean, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return mean
