"""The object-removed control set (§2.2): for every (image, object), the image with the object inpainted.

Inpainters share one interface, `inpainter(image, mask) -> image`:
- `OpenCVInpainter` (default, works everywhere): Telea inpainting of the mask dilated by a few pixels.
- `LamaInpainter`: LaMa, only when the `simple_lama_inpainting` package and a local weights file are
  present (`$LAMA_MODEL` or an explicit path); nothing is ever downloaded.
- `ExactCounterfactuals`: the synthetic scenes' own re-rendering without the object.
`build_control_set` writes one PNG per pair atomically and skips pairs already done, so a run that is
interrupted resumes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mechanisms.storage import atomic_write_bytes


class InpainterUnavailable(RuntimeError):
    """The requested inpainter cannot run on this machine; the message says what is missing."""


class OpenCVInpainter:
    name = "opencv-telea"

    def __init__(self, dilate_px: int = 7, radius: int = 5):
        try:
            import cv2
        except ImportError as err:
            raise InpainterUnavailable("OpenCV is missing: pip install opencv-python-headless") from err
        self.cv2, self.dilate_px, self.radius = cv2, dilate_px, radius

    def __call__(self, image: Image.Image, mask: np.ndarray) -> Image.Image:
        cv2 = self.cv2
        hole = mask.astype(np.uint8) * 255
        if self.dilate_px:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.dilate_px + 1,) * 2)
            hole = cv2.dilate(hole, kernel)
        filled = cv2.inpaint(np.asarray(image.convert("RGB"))[:, :, ::-1].copy(), hole, self.radius,
                             cv2.INPAINT_TELEA)
        return Image.fromarray(filled[:, :, ::-1].copy())


class LamaInpainter:
    name = "lama"

    def __init__(self, weights: str | Path | None = None):
        weights = weights or os.environ.get("LAMA_MODEL")
        try:
            from simple_lama_inpainting import SimpleLama
        except ImportError as err:
            raise InpainterUnavailable("LaMa needs the simple_lama_inpainting package (pip install "
                                       "simple-lama-inpainting) and local weights ($LAMA_MODEL)") from err
        if not weights or not Path(weights).is_file():
            raise InpainterUnavailable("LaMa weights not found: set $LAMA_MODEL to a local big-lama.pt "
                                       "(they are never downloaded)")
        os.environ["LAMA_MODEL"] = str(weights)
        self.model = SimpleLama()

    def __call__(self, image: Image.Image, mask: np.ndarray) -> Image.Image:
        result = self.model(image.convert("RGB"), Image.fromarray(mask.astype(np.uint8) * 255))
        return result.crop((0, 0, *image.size))


class ExactCounterfactuals:
    """The dataset's own object-removed renderings (synthetic scenes)."""

    name = "exact"

    def __init__(self, dataset):
        self.dataset = dataset

    def for_sample(self, sample) -> Image.Image:
        return self.dataset.counterfactual(sample)


def make_inpainter(name: str, dataset=None):
    if name == "opencv":
        return OpenCVInpainter()
    if name == "lama":
        return LamaInpainter()
    if name == "exact":
        if dataset is None or not dataset.with_counterfactuals():
            raise InpainterUnavailable("'exact' needs a dataset that ships object-removed images (synthetic)")
        return ExactCounterfactuals(dataset)
    raise InpainterUnavailable(f"unknown inpainter {name!r}: choose opencv, lama or exact")


def build_control_set(dataset, inpainter, out_dir: Path, progress: bool = True) -> tuple[list[dict], int]:
    """(manifest entries {annotation_id, file_name}, number newly written); finished pairs are skipped."""
    out_dir = Path(out_dir)
    entries, written = [], 0
    samples = dataset.samples
    if progress:
        from tqdm import tqdm
        samples = tqdm(samples, desc=f"object-removed images ({inpainter.name})", unit="object")
    for sample in samples:
        relative = Path("counterfactuals") / f"{sample.annotation_id}.png"
        target = out_dir / relative
        if not target.is_file():
            if isinstance(inpainter, ExactCounterfactuals):
                removed = inpainter.for_sample(sample)
            else:
                removed = inpainter(dataset.image(sample), dataset.mask(sample))
            buffer = io.BytesIO()
            removed.save(buffer, format="PNG")
            atomic_write_bytes(target, buffer.getvalue())
            written += 1
        entries.append({"annotation_id": sample.annotation_id, "file_name": str(relative)})
    return entries, written
