"""Where an organism's boxes miss: its learning curve's held-out objects, broken down by object size and by edge.

    python scripts/where_boxes_miss.py fixtures/organisms-in-training/tiny-llava-v2 [--family llava] [--json rows.json]

The objects are the trainer's own evaluation set (`train.quick_eval`: the first ~96 objects of 64 held-out
scenes, a seed never trained on), answered greedily as during training, so the score printed first is the
learning curve's. Then:

- by object size (the square root of the box's area over the image's longer side), in quartiles: mean IoU,
  success at IoU 0.5 / 0.7 / 0.9, and how often the box misses entirely (IoU 0);
- by edge, over the objects found (IoU > 0.3): the error of x0, y0, x1, y1 in percent of the image's longer
  side (signed mean, and median and 90th percentile of its size), and how much of the horizontal and vertical
  error is the whole box shifted (the mean of its two edges' errors) rather than resized.

A diagnostic for the organisms' cards, not a claim: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mechanisms.data.synthetic import SceneConfig, generate_scenes
from mechanisms.models.adapters import load_adapter
from mechanisms.organisms.train import TRAIN_SCENE_SEED_OFFSET, heldout_boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--family", default="llava", help="adapter family: llava or internvl")
    parser.add_argument("--seed", type=int, default=0, help="the training run's --seed (its held-out scenes)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write every object's row here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    adapter = load_adapter(args.family, args.checkpoint, torch.float32, "cpu")
    scenes = generate_scenes(64, args.seed + 2 * TRAIN_SCENE_SEED_OFFSET, SceneConfig())
    rows = heldout_boxes(adapter, scenes)
    ious = np.asarray([row["iou"] for row in rows])
    print(f"{args.checkpoint}: {len(rows)} held-out objects; localization "
          f"{np.mean([(ious >= t).mean() for t in (0.5, 0.7, 0.9)]):.3f}, success@0.5 {(ious >= 0.5).mean():.2f}, "
          f"mean IoU {ious.mean():.3f}, unparsed {sum(row['box'] is None for row in rows)}")

    print("\nby object size (sqrt(box area) / longer image side), quartiles:")
    print(f"  {'size':>11} {'n':>3} {'mean IoU':>8} {'>=0.5':>6} {'>=0.7':>6} {'>=0.9':>6} {'IoU=0':>6}")
    sizes = np.asarray([np.sqrt(row["truth"].area) / max(row["width"], row["height"]) for row in rows])
    for part in np.array_split(np.argsort(sizes), 4):
        q = ious[part]
        print(f"  {sizes[part].min():.2f}-{sizes[part].max():.2f} {len(part):3d} {q.mean():8.2f} "
              f"{(q >= 0.5).mean():6.2f} {(q >= 0.7).mean():6.2f} {(q >= 0.9).mean():6.2f} {(q == 0).mean():6.2f}")

    found = [row for row in rows if row["box"] is not None and row["iou"] > 0.3]
    errors = np.asarray([[100 * (b - t) / max(row["width"], row["height"])
                          for b, t in zip(row["box"].as_list(), row["truth"].as_list())] for row in found])
    if len(found):
        print(f"\nby edge, over the {len(found)} objects found (IoU > 0.3), % of the longer image side:")
        print(f"  {'edge':>4} {'signed mean':>11} {'|err| median':>12} {'|err| p90':>9}")
        for k, edge in enumerate(("x0", "y0", "x1", "y1")):
            print(f"  {edge:>4} {errors[:, k].mean():11.2f} {np.median(np.abs(errors[:, k])):12.2f} "
                  f"{np.quantile(np.abs(errors[:, k]), 0.9):9.2f}")
        for axis, (lo, hi) in (("horizontal", (0, 2)), ("vertical", (1, 3))):
            shift = (errors[:, lo] + errors[:, hi]) / 2
            resize = errors[:, hi] - errors[:, lo]
            print(f"  {axis}: whole-box shift |median| {np.median(np.abs(shift)):.2f}, "
                  f"size error |median| {np.median(np.abs(resize)):.2f}")
    if args.json:
        args.json.write_text(json.dumps([{**row, "box": row["box"].as_list() if row["box"] else None,
                                          "truth": row["truth"].as_list()} for row in rows], indent=1))


if __name__ == "__main__":
    main()
