"""How many Integrated-Gradients steps the token rankings need: accuracy and time against the step count.

    python benchmarks/ig_steps.py [--model-path fixtures/models/tiny-llava] [--samples 8] [--steps 4 8 16 32 64]

For each of the claim's first samples (the IG claim's seeded subset) and both tasks, IG (captum's
Gauss-Legendre quadrature, the claim's path) at each step count, against the most steps asked as the
reference: the completeness error (|sum of attributions - (f(x) - f(baseline))| relative to the change),
the overlap of the top-k token sets with the reference's (k = 16, the claim's compare_k, and 48, its
largest k), Spearman's rank correlation of the token scores, and seconds per sample. The IG claim ranks
tokens by |attribution|; fewer steps are as good as more when these sets agree.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mechanisms.data import resolve_dataset
from mechanisms.experiments.attribution import token_attributions
from mechanisms.models.registry import REPO_ROOT, fingerprint_checkpoint, load_profiles
from mechanisms.models.adapters import load_adapter
from mechanisms.tasks.model_under_test import VLM
from mechanisms.tasks.specs import BOX, LIST


def top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k of two score vectors."""
    k = min(k, a.size)
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=str(REPO_ROOT / "fixtures/models/tiny-llava"))
    parser.add_argument("--profile", default="tiny_llava")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    profile = load_profiles()[args.profile]
    path = Path(args.model_path)
    vlm = VLM(profile, load_adapter(profile.family, path, torch.float32, "cpu"), path, fingerprint_checkpoint(path))
    dataset = resolve_dataset(profile.default_dataset)
    pick = np.sort(np.random.default_rng(0).choice(len(dataset.samples), args.samples, replace=False))
    samples = [dataset.samples[i] for i in pick]
    vlm.mean_visual_embedding()
    steps = sorted(args.steps)
    print(f"{path.name}: {len(samples)} samples x (box, list); reference = {steps[-1]} steps")
    print(f"  {'task':5} {'steps':>5} {'s/sample':>9} {'complete err':>13} {'top16 overlap':>14} "
          f"{'top48 overlap':>14} {'spearman':>9}")
    for spec in (BOX, LIST):
        runs = {n: [] for n in steps}
        seconds = {n: 0.0 for n in steps}
        for sample in samples:
            for n in steps:
                start = time.perf_counter()
                runs[n].append(token_attributions(vlm, dataset, sample, spec, n))
                seconds[n] += time.perf_counter() - start
        reference = runs[steps[-1]]
        for n in steps:
            errors = [r.completeness_error for r in runs[n]]
            o16 = [top_overlap(r.magnitude, ref.magnitude, 16) for r, ref in zip(runs[n], reference)]
            o48 = [top_overlap(r.magnitude, ref.magnitude, 48) for r, ref in zip(runs[n], reference)]
            rho = [spearman(r.magnitude, ref.magnitude) for r, ref in zip(runs[n], reference)]
            print(f"  {spec.task[:5]:5} {n:5d} {seconds[n] / len(samples):9.2f} "
                  f"{np.median(errors):6.4f}/{max(errors):6.4f} {np.mean(o16):6.3f}/{min(o16):6.3f} "
                  f"{np.mean(o48):6.3f}/{min(o48):6.3f} {np.mean(rho):9.4f}")
    print("  (completeness error: median/max; overlaps: mean/min over samples)")


if __name__ == "__main__":
    main()
