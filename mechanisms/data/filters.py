"""The paper's quality filters (§2.2, §6.1) on COCO-format instances, each counted in a filter report.

In order, an annotation is dropped when it is a crowd annotation; when its image has a side shorter
than 200 px; when its category occurs more than once in its image (the target would be ambiguous;
crowd instances count toward this); when its mask covers less than 0.4 % or more than 60 % of the
image. Entries that cannot be read at all are counted as malformed and dropped first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MIN_AREA_FRACTION = 0.004
MAX_AREA_FRACTION = 0.60
MIN_SIDE = 200


@dataclass
class FilterReport:
    """How many annotations each filter removed, and what is left."""

    annotations_in: int = 0
    removed: Counter = field(default_factory=Counter)
    annotations_out: int = 0
    images_out: int = 0

    def to_dict(self) -> dict:
        return {"annotations_in": self.annotations_in, "removed": dict(sorted(self.removed.items())),
                "annotations_out": self.annotations_out, "images_out": self.images_out}

    def lines(self) -> list[str]:
        rows = [f"annotations in: {self.annotations_in}"]
        rows += [f"  removed, {reason}: {count}" for reason, count in sorted(self.removed.items())]
        rows.append(f"annotations kept: {self.annotations_out} in {self.images_out} images")
        return rows


def _mask_area(ann: dict, image: dict) -> float:
    from mechanisms.data.dataset import decode_mask

    return float(decode_mask(ann, image).sum())


def apply_filters(instances: dict, min_area: float = MIN_AREA_FRACTION, max_area: float = MAX_AREA_FRACTION,
                  min_side: int = MIN_SIDE) -> tuple[dict, FilterReport]:
    """(filtered instances, report). Images keep only if an annotation of theirs survives."""
    report = FilterReport(annotations_in=len(instances.get("annotations", [])))
    images = {im["id"]: im for im in instances.get("images", []) if isinstance(im, dict) and "id" in im}
    per_image_category: Counter = Counter()
    for ann in instances.get("annotations", []):
        if isinstance(ann, dict) and "image_id" in ann and "category_id" in ann:
            per_image_category[(ann["image_id"], ann["category_id"])] += 1
    kept = []
    for ann in instances.get("annotations", []):
        image = images.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if image is None or not all(k in ann for k in ("id", "category_id", "segmentation")) or \
                not all(k in image for k in ("width", "height")):
            report.removed["malformed or orphan entry"] += 1
            continue
        if ann.get("iscrowd", 0):
            report.removed["crowd annotation"] += 1
            continue
        if min(image["width"], image["height"]) < min_side:
            report.removed[f"image side < {min_side} px"] += 1
            continue
        if per_image_category[(ann["image_id"], ann["category_id"])] > 1:
            report.removed["category not unique in its image"] += 1
            continue
        try:
            fraction = _mask_area(ann, image) / (image["width"] * image["height"])
        except Exception:  # pycocotools raises several kinds on bad segmentations
            report.removed["malformed segmentation"] += 1
            continue
        if fraction < min_area:
            report.removed[f"area < {min_area:.1%} of the image"] += 1
            continue
        if fraction > max_area:
            report.removed[f"area > {max_area:.0%} of the image"] += 1
            continue
        kept.append(ann)
    used = {ann["image_id"] for ann in kept}
    filtered = {**instances, "annotations": kept, "images": [im for im in images.values() if im["id"] in used]}
    report.annotations_out, report.images_out = len(kept), len(used)
    return filtered, report
