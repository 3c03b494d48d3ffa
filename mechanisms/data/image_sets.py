"""Image sets named by a spec: a folder of images, or a synthetic pool (`synthetic:SEED:N`).

Used for the reference images of the mean visual embedding and for the positional probes' images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def image_set(spec: str) -> tuple[list, str]:
    """(one loader per image, fingerprint of the set) for a folder or a synthetic spec."""
    if spec.startswith("synthetic"):
        from mechanisms.data import resolve_dataset

        dataset = resolve_dataset(spec)
        first = {}
        for sample in dataset.samples:
            first.setdefault(sample.image_id, sample)
        return [lambda s=s: dataset.image(s) for s in first.values()], dataset.fingerprint
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{spec}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{spec}: no {'/'.join(sorted(IMAGE_SUFFIXES))} files in it")
    digest = hashlib.sha256("\n".join(str(p.relative_to(folder)) for p in files).encode()).hexdigest()[:16]
    return [lambda p=p: Image.open(p).convert("RGB") for p in files], digest
