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

from mechanisms.models.adapters import load_adapter
from mechanisms.organisms.train import heldout_boxes, heldout_scenes


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
    result, truths, sizes = heldout_boxes(adapter, heldout_scenes(args.seed))
    ious = result.ious
    print(f"{args.checkpoint}: {len(ious)} held-out objects; localization {result.score:.3f}, "
          f"success@0.5 {result.success(0.5).mean():.2f}, mean IoU {ious.mean():.3f}, unparsed {(~result.parsed).sum()}")

    print("\nby object size (sqrt(box area) / longer image side), quartiles:")
    print(f"  {'size':>11} {'n':>3} {'mean IoU':>8} {'>=0.5':>6} {'>=0.7':>6} {'>=0.9':>6} {'IoU=0':>6}")
    sides = np.asarray([max(w, h) for w, h in sizes])
    object_sizes = np.asarray([np.sqrt(truth.area) for truth in truths]) / sides
    for part in np.array_split(np.argsort(object_sizes), 4):
        q = ious[part]
        print(f"  {object_sizes[part].min():.2f}-{object_sizes[part].max():.2f} {len(part):3d} {q.mean():8.2f} "
              f"{(q >= 0.5).mean():6.2f} {(q >= 0.7).mean():6.2f} {(q >= 0.9).mean():6.2f} {(q == 0).mean():6.2f}")

    boxes = [adapter.parse_box(text, w, h) for text, (w, h) in zip(result.answers, sizes)]
    found = [i for i, box in enumerate(boxes) if box is not None and ious[i] > 0.3]
    errors = np.asarray([[100 * (b - t) / sides[i] for b, t in zip(boxes[i].as_list(), truths[i].as_list())]
                         for i in found])
    if found:
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
        args.json.write_text(json.dumps([
            {"answer": text, "box": box.as_list() if box else None, "truth": truth.as_list(), "width": w, "height": h,
             "iou": float(value)}
            for text, box, truth, (w, h), value in zip(result.answers, boxes, truths, sizes, ious)], indent=1))

if __name__ == "__main__":
    main()
