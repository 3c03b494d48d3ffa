"""The global mean visual embedding that ablation writes into removed tokens (§3.1).

The paper averages the LM-input visual tokens over ImageNet val; here the reference set is any image
folder (`--reference-images DIR`) or a synthetic pool (`synthetic:SEED:N`, the default). Computed once
per (model, reference set) and cached on disk, atomically and under a lock so xdist workers share it.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from filelock import FileLock
from PIL import Image

from mechanisms.io import atomic_write_bytes

DEFAULT_REFERENCE = "synthetic:777:100"  # a seed no evaluation or training set uses
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def reference_images(spec: str) -> tuple[list, str]:
    """(loaders of the reference images, fingerprint of the set) for a folder or a synthetic spec."""
    if spec.startswith("synthetic"):
        from mechanisms.data import resolve_dataset

        dataset = resolve_dataset(spec)
        first = {}
        for sample in dataset.samples:
            first.setdefault(sample.image_id, sample)
        return [lambda s=s: dataset.image(s) for s in first.values()], dataset.fingerprint
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"--reference-images {spec}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"--reference-images {spec}: no {'/'.join(sorted(IMAGE_SUFFIXES))} files in it")
    digest = hashlib.sha256("\n".join(str(p.relative_to(folder)) for p in files).encode()).hexdigest()[:16]
    return [lambda p=p: Image.open(p).convert("RGB") for p in files], digest


@torch.no_grad()
def compute_mean_embedding(adapter, loaders: list, batch_size: int = 16) -> torch.Tensor:
    """Mean over all images and all their visual tokens, accumulated in float64."""
    total, count = None, 0
    for start in range(0, len(loaders), batch_size):
        images = [load() for load in loaders[start:start + batch_size]]
        batch = adapter.encode(images, ["Describe the image."] * len(images))
        device = next(adapter.model.parameters()).device
        features = adapter.visual_tokens({k: v.to(device) for k, v in batch.items()})
        flat = torch.cat(features).double()
        total = flat.sum(0) if total is None else total + flat.sum(0)
        count += flat.shape[0]
    return (total / count).float().cpu()


def mean_visual_embedding(adapter, model_fingerprint: str, spec: str, cache_dir: Path,
                          batch_size: int = 16) -> torch.Tensor:
    loaders, set_fingerprint = reference_images(spec)
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
