"""Pascal VOC (XML boxes + SegmentationObject PNGs) in the suite's one internal form: COCO instances.

In `SegmentationObject/<id>.png` pixel value k (1-based) marks the k-th `<object>` of
`Annotations/<id>.xml`; 255 is the void border, 0 background. An object becomes one COCO annotation
with its RLE mask; an image without an instance segmentation, and an object whose mask is empty, are
skipped and counted (the claims need masks).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from mechanisms.data.dataset import DatasetError

# VOC's class names as people write them (the prompts name the class)
READABLE = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor",
            "motorbike": "motorbike", "aeroplane": "aeroplane"}
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]


def _image_ids(root: Path, split: str) -> list[str]:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if listing.is_file():
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return sorted(p.stem for p in (root / "SegmentationObject").glob("*.png"))


def voc_to_coco(root: str | Path, split: str = "val") -> tuple[dict, Counter]:
    """(COCO instances dict with file names relative to `JPEGImages/`, skipped counts by reason)."""
    from pycocotools import mask as mask_utils

    root = Path(root)
    if not (root / "Annotations").is_dir():
        raise DatasetError(f"{root}: not a VOC folder (no Annotations/)")
    categories = [{"id": i + 1, "name": READABLE.get(c, c)} for i, c in enumerate(VOC_CLASSES)]
    category_id = {c: i + 1 for i, c in enumerate(VOC_CLASSES)}
    images, annotations, skipped = [], [], Counter()
    next_id = 1
    for image_number, stem in enumerate(_image_ids(root, split), start=1):
        xml_path, seg_path = root / "Annotations" / f"{stem}.xml", root / "SegmentationObject" / f"{stem}.png"
        if not xml_path.is_file():
            skipped["image listed without an annotation file"] += 1
            continue
        try:
            tree = ET.parse(xml_path).getroot()
            width = int(tree.findtext("size/width"))
            height = int(tree.findtext("size/height"))
        except (ET.ParseError, TypeError, ValueError):
            skipped["malformed annotation file"] += 1
            continue
        if not seg_path.is_file():
            skipped["image without instance segmentation"] += 1
            continue
        instance_map = np.asarray(Image.open(seg_path))
        if instance_map.shape != (height, width):
            skipped["segmentation of the wrong size"] += 1
            continue
        images.append({"id": image_number, "file_name": f"{stem}.jpg", "width": width, "height": height})
        for index, obj in enumerate(tree.findall("object"), start=1):
            name = (obj.findtext("name") or "").strip()
            if name not in category_id:
                skipped["unknown class"] += 1
                continue
            mask = instance_map == index
            if not mask.any():
                skipped["empty mask"] += 1
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            ys, xs = np.nonzero(mask)
            annotations.append({
                "id": next_id, "image_id": image_number, "category_id": category_id[name], "segmentation": rle,
                "area": float(mask.sum()), "iscrowd": 0,
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
                "difficult": int(obj.findtext("difficult") or 0)})
            next_id += 1
    return {"images": images, "annotations": annotations, "categories": categories}, skipped
