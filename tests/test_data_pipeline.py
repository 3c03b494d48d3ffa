"""The real-data pipeline on hand-made COCO and VOC fixtures: filters with hand-computed counts, VOC
conversion, the build command (OpenCV inpainting, resumable), model subsets and their intersection."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mechanisms.data import resolve_dataset
from mechanisms.data.__main__ import main as data_main
from mechanisms.data.dataset import load_dataset
from mechanisms.data.filters import apply_filters
from mechanisms.data.voc import voc_to_coco


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def _box_polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


@pytest.fixture
def coco_fixture(tmp_path) -> tuple[Path, Path]:
    """Five images (one too small, one grayscale, one RGBA, one missing) and twelve annotations, each
    built to trip exactly one filter or to survive; expected counts are written next to each."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {1: (300, 250), 2: (150, 400), 3: (320, 240), 4: (260, 260), 5: (300, 300)}
    for image_id, (w, h) in sizes.items():
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        if image_id == 3:
            Image.fromarray(pixels[:, :, 0], mode="L").save(images / f"{image_id}.png")
        elif image_id == 4:
            Image.fromarray(np.dstack([pixels, np.full((h, w), 200, np.uint8)]), mode="RGBA").save(
                images / f"{image_id}.png")
        elif image_id != 5:  # image 5 is listed but its file is missing
            Image.fromarray(pixels).save(images / f"{image_id}.png")
    big = np.zeros((250, 300), bool)
    big[:, :260] = True  # 87 % of image 1
    tiny = np.zeros((250, 300), bool)
    tiny[5:7, 5:7] = True  # 4 px
    rgba_mask = np.zeros((260, 260), bool)
    rgba_mask[50:130, 60:145] = True  # 10 %
    ann = [
        (1, 1, 1, _box_polygon(10, 10, 40, 40), 0),        # kept
        (2, 1, 2, _box_polygon(60, 60, 50, 50), 1),        # crowd
        (3, 1, 3, _rle(tiny), 0),                          # area < 0.4 %
        (4, 1, 4, _rle(big), 0),                           # area > 60 %
        (5, 2, 1, _box_polygon(10, 10, 60, 60), 0),        # image side 150 < 200
        (6, 3, 1, _box_polygon(10, 10, 60, 60), 0),        # category 1 twice in image 3
        (7, 3, 1, _box_polygon(100, 100, 60, 60), 0),      # ... both go
        (8, 3, 2, _box_polygon(150, 20, 80, 70), 0),       # kept (grayscale image)
        (9, 4, 3, _uncompressed_rle(rgba_mask), 0),        # kept (RGBA image, uncompressed RLE)
        (10, 5, 1, _box_polygon(10, 10, 60, 60), 0),       # kept by the filters, file missing at load
        (11, 99, 1, _box_polygon(10, 10, 60, 60), 0),      # orphan: no image 99
        (12, 1, 5, [[1, 2, 3, 4]], 0),                     # malformed polygon
    ]
    instances = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, (w, h) in sizes.items()],
        "categories": [{"id": i, "name": n} for i, n in enumerate(["cat", "dog", "bus", "cup", "kite"], 1)],
        "annotations": [{"id": a, "image_id": im, "category_id": c, "segmentation": seg, "iscrowd": crowd,
                         "bbox": [10, 10, 40, 40], "area": 1600} for a, im, c, seg, crowd in ann]}
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(instances))
    return path, images


def test_filters_count_each_reason_as_computed_by_hand(coco_fixture):
    path, _ = coco_fixture
    filtered, report = apply_filters(json.loads(path.read_text()))
    assert report.to_dict() == {
        "annotations_in": 12,
        "removed": {"area < 0.4% of the image": 1, "area > 60% of the image": 1, "category not unique in its image": 2,
                    "crowd annotation": 1, "image side < 200 px": 1, "malformed or orphan entry": 1,
                    "malformed segmentation": 1},
        "annotations_out": 4, "images_out": 4}
    assert sorted(a["id"] for a in filtered["annotations"]) == [1, 8, 9, 10]


def test_build_command_filters_inpaints_and_resumes(coco_fixture, tmp_path, capsys):
    path, images = coco_fixture
    out = tmp_path / "built"
    assert data_main(["build", "--instances", str(path), "--images", str(images), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "annotations kept: 4 in 4 images" in printed and "missing image file" in printed
    dataset = load_dataset(out)
    assert [s.annotation_id for s in dataset.samples] == [1, 8, 9]
    assert dataset.skipped["missing image file"] == 1
    assert len(dataset.with_counterfactuals()) == 3
    for sample in dataset.samples:
        removed, original = np.asarray(dataset.counterfactual(sample)), np.asarray(dataset.image(sample))
        mask = dataset.mask(sample)
        assert removed.shape == original.shape
        assert (removed[mask] != original[mask]).any() and (removed[~mask] == original[~mask]).mean() > 0.9
    assert data_main(["build", "--instances", str(path), "--images", str(images), "--out", str(out), "--quiet"]) == 0
    assert "(0 new, 3 already there)" in capsys.readouterr().out


def test_build_command_reports_bad_input_clearly(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert data_main(["build", "--instances", str(broken), "--images", str(tmp_path), "--out",
                      str(tmp_path / "o")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert data_main(["build", "--voc", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "not a VOC folder" in capsys.readouterr().err


def _write_voc(root: Path) -> None:
    for folder in ("Annotations", "JPEGImages", "SegmentationObject", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    specs = {"a": (320, 240, ["cat", "dog"]), "b": (300, 260, ["person", "unicorn"]), "c": (300, 300, ["car"])}
    for stem, (w, h, names) in specs.items():
        node = ET.Element("annotation")
        size = ET.SubElement(node, "size")
        ET.SubElement(size, "width").text, ET.SubElement(size, "height").text = str(w), str(h)
        for name in names:
            obj = ET.SubElement(node, "object")
            ET.SubElement(obj, "name").text = name
        ET.ElementTree(node).write(root / "Annotations" / f"{stem}.xml")
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        if stem == "c":
            continue  # no instance segmentation for this image
        instance_map = np.zeros((h, w), np.uint8)
        for index in range(1, len(names) + 1):
            instance_map[30 * index: 30 * index + 50, 40 * index: 40 * index + 70] = index
        instance_map[30:32, 40:110] = 255  # VOC's void border
        Image.fromarray(instance_map, mode="L").save(root / "SegmentationObject" / f"{stem}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("a\nb\nc\n")


def test_voc_objects_become_coco_annotations_with_their_masks(tmp_path):
    _write_voc(tmp_path / "voc")
    instances, skipped = voc_to_coco(tmp_path / "voc")
    assert [(a["image_id"], a["category_id"]) for a in instances["annotations"]] == [(1, 8), (1, 12), (2, 15)]
    assert skipped == {"unknown class": 1, "image without instance segmentation": 1}
    first = mask_utils.decode(instances["annotations"][0]["segmentation"]).astype(bool)
    # object 1's 50x70 box, minus object 2 painted over its corner (20x30), minus the void border (2x70)
    assert first.sum() == 50 * 70 - 20 * 30 - 2 * 70 and first[40, 60] and not first[30, 60]
    out = tmp_path / "built"
    assert data_main(["build", "--voc", str(tmp_path / "voc"), "--out", str(out), "--quiet"]) == 0
    dataset = load_dataset(out)
    assert {s.category for s in dataset.samples} == {"cat", "dog", "person"}
    assert len(dataset.with_counterfactuals()) == 3


def test_model_subsets_and_their_intersection(tmp_path, capsys):
    source = resolve_dataset("synthetic:5:6").root
    built = tmp_path / "built"
    assert data_main(["build", "--instances", str(source / "instances.json"), "--images", str(source / "images"),
                      "--out", str(built), "--inpainter", "exact", "--source", str(source), "--quiet"]) == 0
    first = tmp_path / "subset"
    assert data_main(["subset", "--dataset", str(built), "--profile", "tiny_llava", "--out", str(first)]) == 0
    counts = json.loads((first / "manifest.json").read_text())["counts"]
    kept = load_dataset(first)
    assert len(kept.samples) == counts["kept"] == len(kept.with_counterfactuals())
    assert counts["kept"] <= counts["classified_on_original"] <= counts["pairs"]
    final = tmp_path / "final"
    assert data_main(["intersect", str(first), str(first), "--out", str(final)]) == 0
    assert [s.annotation_id for s in load_dataset(final).samples] == [s.annotation_id for s in kept.samples]
    # the criterion is recorded (binary presence by default), reaches the report's dataset description,
    # and subsets chosen by different criteria do not intersect
    assert kept.control_criterion == "binary" == load_dataset(final).control_criterion
    assert load_dataset(final).describe()["control_criterion"] == "binary"
    by_list = tmp_path / "by-list"
    assert data_main(["subset", "--dataset", str(built), "--profile", "tiny_llava", "--criterion", "list",
                      "--out", str(by_list)]) == 0
    assert load_dataset(by_list).control_criterion == "list"
    assert data_main(["intersect", str(first), str(by_list), "--out", str(tmp_path / "mixed")]) == 2


def test_coco_rem_style_annotations_load_like_coco(coco_fixture, tmp_path):
    """COCO-ReM's instances_valrem.json is COCO instances with extra `source`/`source_id` keys and RLE
    masks: the same path reads it."""
    path, images = coco_fixture
    instances = json.loads(path.read_text())
    for ann in instances["annotations"]:
        ann.update({"source": "lvis", "source_id": ann["id"] * 10})
    rem = tmp_path / "instances_valrem.json"
    rem.write_text(json.dumps(instances))
    out = tmp_path / "rem"
    assert data_main(["build", "--instances", str(rem), "--images", str(images), "--out", str(out),
                      "--inpainter", "none", "--quiet"]) == 0
    assert [s.annotation_id for s in load_dataset(out).samples] == [1, 8, 9]


# ----- provenance: which of the paper's tables a run on this dataset reproduces ---------------------------


def test_the_manifest_records_the_source_and_a_subset_keeps_it(coco_fixture, tmp_path):
    """The source is written at build time (never read from a folder name) and survives `subset`."""
    path, images = coco_fixture
    out = tmp_path / "any-name"
    assert data_main(["build", "--instances", str(path), "--images", str(images), "--out", str(out),
                      "--kind", "coco-rem", "--inpainter", "none", "--quiet"]) == 0
    dataset = load_dataset(out)
    assert dataset.source == "coco-rem" and dataset.provenance["source"]["path"] == str(path.resolve())
    assert dataset.provenance["filters"]["annotations_in"] == 12
    _write_voc(tmp_path / "voc")
    voc = tmp_path / "named-like-coco"
    assert data_main(["build", "--voc", str(tmp_path / "voc"), "--out", str(voc), "--inpainter", "none",
                      "--quiet"]) == 0
    assert load_dataset(voc).source == "voc" and load_dataset(voc).provenance["source"]["split"] == "val"
    assert resolve_dataset("synthetic:5:6").source == "synthetic"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "instances_val.json").write_text(path.read_text())
    assert load_dataset(plain).source is None  # a folder not built here: unknown, not guessed


def _claims_report(tmp_path, dataset: Path) -> dict:
    """The object-ablation claims with the llava7b profile (its paper values) on the shipped tiny-llava."""
    from tests.test_claims_end_to_end import load_report, run_claims

    proc, reports = run_claims("claims/test_object_token_ablation.py", "-m", "llava7b", "--model-path",
                               "llava7b=fixtures/models/tiny-llava", "--dtype", "float32", "--dataset", str(dataset),
                               tmp_path=tmp_path)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    return load_report(reports, "llava7b"), (reports / "llava7b" / "REPORT.md").read_text()


def _row(table: dict, strategy: str) -> dict:
    return next(r for r in table["rows"] if r["strategy"].startswith(strategy))


def test_a_voc_run_reports_table5_and_its_provenance(tmp_path):
    """Build the hand-made VOC folder, run the ablation claims: the paper columns are Table 5's (not
    Table 1's), the table says what it reproduces, and the report opens with the VOC provenance."""
    _write_voc(tmp_path / "voc")
    out = tmp_path / "voc-set"
    assert data_main(["build", "--voc", str(tmp_path / "voc"), "--out", str(out), "--inpainter", "none",
                      "--quiet"]) == 0
    report, markdown = _claims_report(tmp_path, out)
    assert report["model"]["paper_tables"] == "voc"
    table = report["tables"]["table1"]
    assert table["title"].startswith("Table 5: token ablation on Pascal VOC")
    assert _row(table, "Baseline")["paper_localization"] == 52.41
    assert _row(table, "Object")["paper_classification"] == 31.37
    assert _row(table, "Random (as many as object)")["paper_localization"] == 50.41
    assert "- **Source**: voc" in markdown and "split val" in markdown
    assert "- **Paper values**: Pascal VOC (Table 5; 1,957 objects" in markdown


def test_a_coco_run_reports_table1(coco_fixture, tmp_path):
    path, images = coco_fixture
    out = tmp_path / "coco-set"
    assert data_main(["build", "--instances", str(path), "--images", str(images), "--out", str(out),
                      "--inpainter", "none", "--quiet"]) == 0
    report, markdown = _claims_report(tmp_path, out)
    table = report["tables"]["table1"]
    assert report["model"]["paper_tables"] == "coco" and table["title"].startswith("Table 1")
    assert _row(table, "Baseline")["paper_localization"] == 35.34
    assert _row(table, "Object")["paper_localization"] == 5.92
    assert _row(table, "Random (as many as object)")["paper_localization"] is None  # Table 1 has no such row
    assert "- **Source**: coco" in markdown and "filtered COCO subset (Tables 1-4" in markdown
