"""A COCO-format dataset folder, read through pycocotools, as the per-object samples the claims use.

A dataset folder holds `manifest.json` (written by this project: which instances file, which images
folder, the object-removed counterfactuals) or, for a plain COCO layout, an `instances*.json` next to
an images folder. Bad entries never crash a run half-way: they are skipped and counted by reason
(`Dataset.skipped`), and a file that cannot be read at all raises `DatasetError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mechanisms.geometry import Box


class DatasetError(ValueError):
    """The dataset cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ObjectSample:
    """One (image, object) pair: the unit every claim measures."""

    image_id: int
    annotation_id: int
    category: str
    box: Box  # original-image pixels
    area: float  # mask area in pixels
    width: int
    height: int
    image_path: Path
    counterfactual_path: Path | None = None


@dataclass
class Dataset:
    name: str
    root: Path
    categories: list[str]
    samples: list[ObjectSample]
    fingerprint: str
    skipped: Counter = field(default_factory=Counter)
    control_criterion: str | None = None  # how the object-removed control set was chosen (`data subset`)
    source: str | None = None  # what the objects come from: "coco", "coco-rem", "voc", "synthetic" (None: unknown)
    provenance: dict = field(default_factory=dict)  # from the manifest: source, filters, inpainter, subsets
    _annotations: dict = field(default_factory=dict, repr=False)
    _images: dict = field(default_factory=dict, repr=False)

    def image(self, sample: ObjectSample) -> Image.Image:
        return _open_rgb(sample.image_path)

    def counterfactual(self, sample: ObjectSample) -> Image.Image:
        if sample.counterfactual_path is None:
            raise DatasetError(f"{self.name} has no object-removed image for annotation {sample.annotation_id}")
        return _open_rgb(sample.counterfactual_path)

    def mask(self, sample: ObjectSample) -> np.ndarray:
        return decode_mask(self._annotations[sample.annotation_id], self._images[sample.image_id])

    def classes_in_image(self, image_id: int) -> list[str]:
        """The categories of the image's usable objects, in the dataset's category order (a list answer)."""
        present = {s.category for s in self.samples if s.image_id == image_id}
        return [c for c in self.categories if c in present]

    def with_counterfactuals(self) -> list[ObjectSample]:
        return [s for s in self.samples if s.counterfactual_path is not None]

    def select(self, max_samples: int | None, seed: int) -> list[ObjectSample]:
        """A deterministic subset (all samples when max_samples is None or large enough)."""
        if max_samples is None or max_samples >= len(self.samples):
            return list(self.samples)
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(self.samples), size=max_samples, replace=False))
        return [self.samples[i] for i in keep]

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root), "fingerprint": self.fingerprint,
                "n_samples": len(self.samples), "n_images": len({s.image_id for s in self.samples}),
                "skipped": dict(sorted(self.skipped.items())),
                **({"control_criterion": self.control_criterion} if self.control_criterion else {}),
                "source": self.source, **({"provenance": self.provenance} if self.provenance else {})}


def manifest_provenance(manifest: dict) -> dict:
    """Where a dataset folder's objects come from, as its manifest records it (written at build time,
    carried through subsets): the source (kind, path, split), the filters' counts, the inpainter, the
    control-set criterion and the folders it was cut from. The kind is never guessed from a folder name."""
    source = manifest.get("source")
    if source is None and (manifest.get("generator") or {}).get("kind") == "synthetic":
        generator = manifest["generator"]
        source = {"kind": "synthetic", "seed": generator.get("seed"), "n_images": generator.get("n_images")}
    kept = {k: v for k, v in {"source": source, "inpainter": manifest.get("inpainter"),
                              "control_criterion": manifest.get("control_criterion"),
                              "filters": manifest.get("filter_report"),
                              "subset_of": manifest.get("subset_of"),
                              "intersection_of": manifest.get("intersection_of"),
                              "subset_counts": manifest.get("counts")}.items() if v}
    return kept


def _open_rgb(path: Path) -> Image.Image:
    """Grayscale, palette and RGBA images become RGB (RGBA composited on white)."""
    with Image.open(path) as image:
        image.load()
        if image.mode == "RGBA":
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.split()[3])
            return background
        return image.convert("RGB")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: file not found") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        manifest = read_json(manifest_path)
        instances_path = root / manifest.get("instances", "instances.json")
        images_dir = root / manifest.get("images_dir", "images")
        name = manifest.get("name", root.name)
        criterion = manifest.get("control_criterion")
        counterfactuals = {int(c["annotation_id"]): root / c["file_name"]
                           for c in manifest.get("counterfactuals", [])}
        provenance = manifest_provenance(manifest)
    else:
        candidates = sorted(root.glob("instances*.json")) + sorted(root.glob("annotations/instances*.json"))
        if not candidates:
            raise DatasetError(f"{root}: neither a manifest.json nor an instances*.json annotation file")
        instances_path = candidates[0]
        images_dir = next((d for d in (root / "images", root / instances_path.stem.split("_")[-1], root)
                           if d.is_dir()), root)
        name, counterfactuals, criterion, provenance = root.name, {}, None, {}
    instances = read_json(instances_path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(instances.get(key), list):
            raise DatasetError(f"{instances_path}: missing or malformed {key!r} list")

    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = instances
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco.createIndex()
        except (KeyError, TypeError) as err:
            raise DatasetError(f"{instances_path}: malformed entry ({err!r})") from err

    categories = {c["id"]: c["name"] for c in instances["categories"] if isinstance(c, dict) and "id" in c}
    skipped: Counter = Counter()
    samples: list[ObjectSample] = []
    annotations: dict[int, dict] = {}
    for ann in instances["annotations"]:
        if not isinstance(ann, dict):
            skipped["malformed annotation"] += 1
            continue
        if ann.get("id") in annotations:  # ids key masks and counterfactuals: a repeat would mix them up
            skipped["duplicate annotation id"] += 1
            continue
        reason = _problem(ann, coco, categories, images_dir)
        if reason:
            skipped[reason] += 1
            continue
        info = coco.imgs[ann["image_id"]]
        try:
            mask_area = float(decode_mask(ann, info).sum())
        except Exception:  # pycocotools raises bare Exception, TypeError or ValueError on bad segmentations
            skipped["malformed segmentation"] += 1
            continue
        if mask_area == 0:
            skipped["empty mask"] += 1
            continue
        annotations[ann["id"]] = ann
        samples.append(ObjectSample(
            image_id=ann["image_id"], annotation_id=ann["id"], category=categories[ann["category_id"]],
            box=Box.from_coco(ann["bbox"]), area=mask_area, width=int(info["width"]), height=int(info["height"]),
            image_path=images_dir / info["file_name"], counterfactual_path=counterfactuals.get(ann["id"])))
    samples.sort(key=lambda s: s.annotation_id)
    missing_cf = [s for s in samples if s.counterfactual_path is not None and not s.counterfactual_path.is_file()]
    if missing_cf:
        skipped["missing counterfactual image"] += len(missing_cf)
        gone = {s.annotation_id for s in missing_cf}
        samples = [s if s.annotation_id not in gone else _without_counterfactual(s) for s in samples]
    digest = hashlib.sha256(instances_path.read_bytes())
    if manifest_path.is_file():
        digest.update(manifest_path.read_bytes())
    return Dataset(name=name, root=root, categories=[categories[k] for k in sorted(categories)],
                   samples=samples, fingerprint=digest.hexdigest()[:16], skipped=skipped,
                   control_criterion=criterion, source=(provenance.get("source") or {}).get("kind"),
                   provenance=provenance, _annotations=annotations, _images=coco.imgs)


def decode_mask(ann: dict, image_info: dict) -> np.ndarray:
    """Bool [height, width] mask from a polygon, RLE or uncompressed-RLE segmentation."""
    from pycocotools import mask as mask_utils

    height, width = int(image_info["height"]), int(image_info["width"])
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list)]
        if not polygons or any(len(p) < 6 or len(p) % 2 for p in polygons):
            raise ValueError("polygon with fewer than three points")
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    mask = mask_utils.decode(rle).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(f"mask of shape {mask.shape} for an image of {height}x{width}")
    return mask


def _without_counterfactual(sample: ObjectSample) -> ObjectSample:
    from dataclasses import replace
    return replace(sample, counterfactual_path=None)


def _problem(ann: dict, coco, categories: dict, images_dir: Path) -> str | None:
    """Why an annotation cannot be used, or None."""
    if not all(k in ann for k in ("id", "image_id", "category_id", "bbox", "segmentation")):
        return "annotation missing a required key"
    if ann["image_id"] not in coco.imgs:
        return "annotation for an absent image"
    info = coco.imgs[ann["image_id"]]
    if not all(k in info for k in ("file_name", "width", "height")):
        return "malformed image entry"
    if ann["category_id"] not in categories:
        return "unknown category"
    if ann.get("iscrowd", 0):
        return "crowd annotation"
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        return "malformed box"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return "degenerate box"
    if not ann["segmentation"]:
        return "empty mask"
    if not (images_dir / coco.imgs[ann["image_id"]]["file_name"]).is_file():
        return "missing image file"
    return None
