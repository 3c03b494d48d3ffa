"""Build evaluation datasets from files on disk (§2.2, §6.1): `python -m mechanisms.data COMMAND ...`.

    build      COCO instances (or a VOC folder) -> filtered set + object-removed control set
    subset     keep the pairs a model classifies in the original and misses once the object is removed
    intersect  the pairs every given subset kept (the paper's final probing set)

Every command writes a dataset folder (`manifest.json` + `instances.json`) that `pytest claims
--dataset FOLDER` accepts, prints its counts at each step, and resumes where an interrupted run stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mechanisms.data.dataset import DatasetError, load_dataset, read_json
from mechanisms.storage import atomic_write_json


def _write_folder(out: Path, instances: dict, manifest: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "instances.json", instances, indent=None)
    atomic_write_json(out / "manifest.json", {"instances": "instances.json", **manifest})


def build(args) -> int:
    from mechanisms.data.filters import apply_filters
    from mechanisms.data.inpaint import build_control_set, make_inpainter

    out = Path(args.out)
    if args.voc:
        from mechanisms.data.voc import voc_to_coco

        instances, skipped = voc_to_coco(args.voc, args.split)
        images_dir = Path(args.voc).resolve() / "JPEGImages"
        source = {"kind": "voc", "path": str(Path(args.voc).resolve()), "split": args.split}
        print(f"VOC {args.voc} ({args.split}): {len(instances['annotations'])} objects in "
              f"{len(instances['images'])} images; skipped: {dict(skipped) or 'none'}")
    else:
        instances = read_json(Path(args.instances))
        for key in ("images", "annotations", "categories"):
            if not isinstance(instances.get(key), list):
                raise DatasetError(f"{args.instances}: missing or malformed {key!r} list")
        images_dir = Path(args.images).resolve()
        source = {"kind": args.kind, "path": str(Path(args.instances).resolve())}
        print(f"{args.instances}: {len(instances['annotations'])} annotations in {len(instances['images'])} images")
    filtered, report = apply_filters(instances)
    print("filters (§6.1):")
    for line in report.lines():
        print("  " + line)
    manifest = {"name": args.name or out.name, "images_dir": str(images_dir), "source": source,
                "filter_report": report.to_dict()}
    _write_folder(out, filtered, manifest)
    dataset = load_dataset(out)
    print(f"loadable: {len(dataset.samples)} objects in {len({s.image_id for s in dataset.samples})} images; "
          f"skipped: {dict(dataset.skipped) or 'none'}")
    if args.inpainter != "none":
        renderings = load_dataset(args.source) if args.inpainter == "exact" and args.source else None
        inpainter = make_inpainter(args.inpainter, renderings)
        if renderings is not None:  # exact counterfactuals come from the source folder's own renderings
            by_id = {s.annotation_id: s for s in renderings.samples}
            dataset.samples = [by_id.get(s.annotation_id, s) for s in dataset.samples]
        entries, written = build_control_set(dataset, inpainter, out, progress=not args.quiet)
        manifest.update({"counterfactuals": entries, "inpainter": inpainter.name})
        _write_folder(out, filtered, manifest)
        print(f"object-removed images ({inpainter.name}): {len(entries)} ({written} new, "
              f"{len(entries) - written} already there)")
    print(f"dataset folder: {out}  (pytest claims --dataset {out})")
    return 0


def subset(args) -> int:
    import torch

    from mechanisms.models.adapters import load_adapter
    from mechanisms.models.registry import fingerprint_checkpoint, load_profiles, resolve_checkpoint
    from mechanisms.tasks.model_under_test import VLM
    from mechanisms.tasks.specs import BINARY, LIST

    profile = load_profiles()[args.profile]
    checkpoint = resolve_checkpoint(profile, args.model_path)
    adapter = load_adapter(profile.family, checkpoint, getattr(torch, args.dtype or profile.dtype), args.device,
                           profile.system_prompt, profile.processor)
    vlm = VLM(profile, adapter, checkpoint, fingerprint_checkpoint(checkpoint), args.device)
    dataset = load_dataset(args.dataset)
    pairs = dataset.with_counterfactuals()
    if not pairs:
        raise DatasetError(f"{args.dataset} has no object-removed images: run `build` with an inpainter first")
    spec = {"binary": BINARY, "list": LIST}[args.criterion]
    with torch.no_grad():
        original = vlm.ask(spec, dataset, pairs).detected
        removed = vlm.ask(spec, dataset, pairs, counterfactual=True).detected
    keep = {s.annotation_id for s, a, b in zip(pairs, original, removed) if a and not b}
    counts = {"pairs": len(pairs), "classified_on_original": int(original.sum()),
              "still_named_when_removed": int((original * removed).sum()), "kept": len(keep)}
    _write_subset(Path(args.dataset), Path(args.out), keep, {"model": args.profile, "checkpoint": str(checkpoint),
                                                             "counts": counts, "control_criterion": args.criterion})
    print(f"{args.profile}: {counts}")
    return 0


def _write_subset(source: Path, out: Path, keep: set[int], provenance: dict) -> None:
    manifest = read_json(source / "manifest.json")
    instances = read_json(source / manifest.get("instances", "instances.json"))
    annotations = [a for a in instances["annotations"] if isinstance(a, dict) and a.get("id") in keep]
    used = {a["image_id"] for a in annotations}
    images_dir = Path(manifest.get("images_dir", "images"))
    cfs = [{"annotation_id": c["annotation_id"], "file_name": str((source / c["file_name"]).resolve())}
           for c in manifest.get("counterfactuals", []) if c["annotation_id"] in keep]
    _write_folder(out, {**instances, "annotations": annotations,
                        "images": [im for im in instances["images"] if im.get("id") in used]},
                  {"name": out.name, "images_dir": str(images_dir if images_dir.is_absolute() else
                                                       (source / images_dir).resolve()),
                   "counterfactuals": cfs, "subset_of": str(source.resolve()),
                   **{key: manifest[key] for key in INHERITED if key in manifest}, **provenance})


INHERITED = ("source", "generator", "filter_report", "inpainter")  # what a subset keeps of its source folder's provenance


def intersect(args) -> int:
    folders = [Path(f) for f in args.subsets]
    kept, criteria = None, set()
    for folder in folders:
        manifest = read_json(folder / "manifest.json")
        criteria.add(manifest.get("control_criterion"))
        instances = read_json(folder / manifest.get("instances", "instances.json"))
        ids = {a["id"] for a in instances["annotations"] if isinstance(a, dict) and "id" in a}
        print(f"{folder}: {len(ids)} objects")
        kept = ids if kept is None else kept & ids
    if len(criteria) > 1:
        raise DatasetError(f"the subsets were chosen by different control criteria ({sorted(map(str, criteria))}): "
                           "intersect subsets built with the same --criterion")
    _write_subset(folders[0], Path(args.out), kept or set(),
                  {"intersection_of": [str(f.resolve()) for f in folders], "control_criterion": criteria.pop()})
    print(f"intersection: {len(kept or ())} objects -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mechanisms.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="filtered set + object-removed control set")
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--instances", help="COCO instances JSON (COCO val2017, or COCO-ReM's instances_valrem.json)")
    source.add_argument("--voc", help="a Pascal VOC folder (Annotations/, JPEGImages/, SegmentationObject/)")
    b.add_argument("--images", help="with --instances: the images folder (e.g. val2017/)")
    b.add_argument("--split", default="val", help="with --voc: ImageSets/Segmentation/<split>.txt")
    b.add_argument("--kind", default="coco", choices=["coco", "coco-rem", "synthetic", "other"],
                   help="with --instances: which annotations these are (recorded in the manifest; the paper's "
                        "COCO tables are measured on COCO val with COCO-ReM's corrected masks)")
    b.add_argument("--out", required=True)
    b.add_argument("--name")
    b.add_argument("--inpainter", default="opencv", choices=["opencv", "lama", "exact", "none"])
    b.add_argument("--source", help="with --inpainter exact: the dataset folder that has the renderings")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(run=build)
    s = commands.add_parser("subset", help="pairs a model gets right on the original and misses when removed")
    s.add_argument("--dataset", required=True)
    s.add_argument("--profile", required=True)
    s.add_argument("--model-path")
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (default: the profile's)")
    s.add_argument("--criterion", choices=["binary", "list"], default="binary",
                   help="which prompt must find the object in the original and miss it once removed: the binary "
                        "presence query (default; consistent with the paper's list baselines of 58-83%% and list "
                        "FPRs of 0.27-0.45 on its final set) or the list prompt (makes the list baseline 100%% "
                        "and the list FPR 0 by construction)")
    s.add_argument("--out", required=True)
    s.set_defaults(run=subset)
    i = commands.add_parser("intersect", help="objects kept by every subset")
    i.add_argument("subsets", nargs="+")
    i.add_argument("--out", required=True)
    i.set_defaults(run=intersect)
    args = parser.parse_args(argv)
    if args.command == "build" and args.instances and not args.images:
        parser.error("build --instances needs --images")
    try:
        return args.run(args)
    except (DatasetError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # an inpainter or checkpoint that cannot be used: say which, no traceback
        from mechanisms.data.inpaint import InpainterUnavailable
        from mechanisms.models.registry import CheckpointError, CheckpointUnavailable

        if isinstance(err, (InpainterUnavailable, CheckpointError, CheckpointUnavailable)):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
