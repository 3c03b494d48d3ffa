"""Benchmark: the circuit sweeps, fast path vs naive loops vs nnsight, in one process on the same pairs.

    python benchmarks/circuits.py [--pairs 4] [--knockout-samples 4] [--real-geometry --heads H --layers L]

Head mediation (every head of the LM, both tasks): (a) a naive loop, one full forward per patched head;
(b) the same sweep written with nnsight; (c) ours (`experiments.prefix`: the prefix once, shared-prefix
attention, rows branching in at their layer). Prints the time ratios, the largest |MF difference| and
relative perplexity difference, and each pair's relative gap (MF divides by it). Knockout sweep (every
layer group): one full `generate` per group vs ours (one prefix, every group a row decoded together);
answers compared. Recorded results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mechanisms.data import resolve_dataset
from mechanisms.experiments.knockout_sweep import knockout_answers, layer_groups
from mechanisms.experiments.mediation import mediate_pair
from mechanisms.experiments.reference import naive_knockout_answers, naive_mediation, nnsight_mediation
from mechanisms.models.adapters.llava import load_llava
from mechanisms.models.registry import REPO_ROOT, fingerprint_checkpoint, load_profiles
from mechanisms.tasks.model_under_test import VLM
from mechanisms.tasks.specs import BINARY, BOX


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--knockout-samples", type=int, default=4)
    parser.add_argument("--model-path", default=str(REPO_ROOT / "fixtures/models/tiny-llava"))
    parser.add_argument("--real-geometry", action="store_true",
                        help="time a random-init LLaVA with LLaVA-1.5's 576-token image instead (speed only)")
    parser.add_argument("--heads", type=int, default=4, help="with --real-geometry: query heads per layer")
    parser.add_argument("--layers", type=int, default=6, help="with --real-geometry: LM layers")
    parser.add_argument("--skip-naive", action="store_true", help="time our sweeps only (large head counts)")
    parser.add_argument("--skip-nnsight", action="store_true")
    args = parser.parse_args()

    path = Path(args.model_path)
    if args.real_geometry:
        import tempfile

        from mechanisms.organisms.tiny_llava import save_random_real_geometry

        path = save_random_real_geometry(Path(tempfile.mkdtemp()) / "llava-336", hidden=32 * args.heads,
                                         layers=args.layers, heads=args.heads)
    profile = load_profiles()["tiny_llava"]
    vlm = VLM(profile, load_llava(path, torch.float32, "cpu"), path, fingerprint_checkpoint(path))
    dataset = resolve_dataset("synthetic")
    pairs = dataset.with_counterfactuals()[: args.pairs]
    layout = vlm.adapter.head_layout()
    heads = [(l, h) for l in range(layout.n_layers) for h in range(layout.n_query_heads)]

    times = {"naive": 0.0, "nnsight": 0.0, "ours": 0.0}
    worst = {"naive": 0.0, "nnsight": 0.0}
    relative = {"naive": 0.0, "nnsight": 0.0}  # largest relative perplexity difference
    gaps = []  # (P_base - P_src) / P_src of each pair: MF amplifies perplexity round-off by ~2 / gap
    gap_floor = profile.claims["mediation"]["min_relative_gap"]
    for spec in (BOX, BINARY):
        for sample in pairs:
            if not args.skip_naive:
                mediate_pair(vlm, dataset, sample, spec)  # warm-up, untimed
            ours, t = timed(lambda: mediate_pair(vlm, dataset, sample, spec))
            times["ours"] += t
            gaps.append((ours.p_base - ours.p_source) / ours.p_source)
            for name, fn in (("naive", naive_mediation), ("nnsight", nnsight_mediation)):
                if args.skip_naive or (name == "nnsight" and args.skip_nnsight):
                    continue
                ref, t = timed(lambda fn=fn: fn(vlm, dataset, sample, spec, heads))
                times[name] += t
                diff = np.abs(ours.fractions().ravel() - ref.fractions())
                worst[name] = max(worst[name], float(np.nanmax(diff)))
                mine = np.array([ours.p_source, ours.p_base, *ours.p_patched.ravel()])
                theirs = np.array([ref.p_source, ref.p_base, *ref.p_patched])
                relative[name] = max(relative[name], float(np.max(np.abs(mine - theirs) / np.abs(theirs))))
    n = 2 * len(pairs)
    print(f"head mediation: {len(heads)} heads x {len(pairs)} pairs x 2 tasks ({n} pair-sweeps), "
          f"{torch.get_num_threads()} threads")
    for name, seconds in times.items():
        if seconds:
            print(f"  {name:8} {seconds:8.2f} s   ({seconds / n:.3f} s per pair-sweep)")
    for name in ("naive", "nnsight"):
        if times[name]:
            print(f"  speed-up vs {name:8}: {times[name] / times['ours']:.1f}x   max |MF ours - {name}| = "
                  f"{worst[name]:.2e}, max relative |perplexity ours - {name}| = {relative[name]:.1e}")
    print(f"  pairs' relative gaps (P_base - P_src) / P_src: {', '.join(f'{g:.4f}' for g in gaps)}; the claims keep "
          f"gaps >= {gap_floor}, where the perplexity agreement bounds |MF difference| by "
          f"{relative['naive'] * (2 + gap_floor) / gap_floor:.1e}")

    if not args.skip_naive:  # the same pair in float64: the two paths agree to round-off, whatever the gap
        vlm.adapter.model.double()
        sample = pairs[0]
        exact = mediate_pair(vlm, dataset, sample, BOX)
        reference = naive_mediation(vlm, dataset, sample, BOX, heads)
        print(f"  float64, first pair (localization): max |MF ours - naive| = "
              f"{float(np.nanmax(np.abs(exact.fractions().ravel() - reference.fractions()))):.1e}")
        vlm.adapter.model.float()
    if args.knockout_samples == 0:
        return
    groups = layer_groups(layout.n_layers, profile.claims["knockout"]["group_sizes"])
    samples = dataset.samples[: args.knockout_samples]
    for spec in (BOX,):
        vlm.results.memory.clear()
        fast, t_fast = timed(lambda: knockout_answers(vlm, dataset, samples, spec, groups))
        slow, t_slow = timed(lambda: naive_knockout_answers(vlm, dataset, samples, spec, groups))
        agree = sum(a == b for name in fast for a, b in zip(fast[name], slow[name]))
        total = sum(len(v) for v in fast.values())
        print(f"knockout ({spec.task}): {len(groups)} groups + baseline x {len(samples)} samples")
        print(f"  full recompute {t_slow:8.2f} s, ours {t_fast:8.2f} s, speed-up {t_slow / t_fast:.1f}x, "
              f"answers agreeing {agree}/{total}")


if __name__ == "__main__":
    main()
