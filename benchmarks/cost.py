"""What a paper-scale run of a profile costs, per experiment, before starting it (`mechanisms.experiments.costs`).

    python benchmarks/cost.py --profile llava7b|llava13b|internvl8b [--objects 2248] [--check-cpu]

Prints, per experiment of `pytest claims -m <profile>` at the paper's sizes (2,248 objects; 50 CMA pairs x
2 tasks x every head; the knockout groups; probes on 50,000 / 10,000 images): FLOPs, batched decoding
steps, peak GPU memory, disk, and an H200 time estimate, from the model's real configuration built on the
meta device (no weights) and the code's own batch and cache sizes.

`--check-cpu` checks the FLOP formulas against time: on the random-init LLaVA with LLaVA-1.5's real image
geometry it times one mediation pair, one knockout object, one IG sample and a naive mediation pair, and
prints each one's formula FLOPs / measured seconds. Similar rates mean the formulas count the work the
code does (decoding, latency-bound on a CPU, runs slower per FLOP).
"""

from __future__ import annotations

import argparse
import time

from mechanisms.experiments import costs as cost_model
from mechanisms.models.registry import load_profiles


def print_costs(name: str, objects: int, device: cost_model.Device) -> None:
    profile = load_profiles()[name]
    shape = cost_model.paper_shape(name)
    works = cost_model.paper_scale_work(profile, shape, device, objects)
    print(f"{name}: {shape.weight_bytes / 1e9:.1f} GB of bf16 weights, {shape.layers} LM layers x {shape.heads} "
          f"heads ({shape.kv_heads} key/value), {shape.prompt_tokens} prompt tokens ({shape.image_tokens} image "
          f"tokens in {shape.views} view{'s' if shape.views > 1 else ''}); {objects} objects; {device.name}, "
          f"{device.mfu:.0%} of peak FLOP/s, {device.bandwidth_use:.0%} of bandwidth")
    print(f"  {'experiment':26} {'PFLOP':>9} {'decode steps':>13} {'peak GPU GB':>12} {'disk GB':>8} {'H200 h':>7}")
    total_s = total_disk = 0.0
    peak = 0.0
    for w in works:
        seconds = w.seconds(shape, device)
        total_s, total_disk, peak = total_s + seconds, total_disk + w.disk_bytes, max(peak, w.peak_bytes)
        print(f"  {w.name:26} {(w.flops + w.decode_flops) / 1e15:9.1f} {w.decode_steps:13,.0f} "
              f"{w.peak_bytes / 1e9:12.1f} {w.disk_bytes / 1e9:8.1f} {seconds / 3600:7.2f}")
        for note in [f"claims: {w.claims}", *w.notes]:
            print(f"  {'':26}   {note}")
    print(f"  {'total':26} {sum(w.flops + w.decode_flops for w in works) / 1e15:9.1f} "
          f"{sum(w.decode_steps for w in works):13,.0f} {peak / 1e9:12.1f} {total_disk / 1e9:8.1f} "
          f"{total_s / 3600:7.2f}")
    fits = "fits" if peak <= device.memory_bytes else "does NOT fit"
    print(f"  widest pass {peak / 1e9:.0f} GB: {fits} one {device.name.split(' (')[0]}")


def check_cpu(layers: int, heads: int) -> None:
    import tempfile
    from pathlib import Path

    import torch

    from mechanisms.data import resolve_dataset
    from mechanisms.experiments.attribution import integrated_gradients
    from mechanisms.experiments.knockout_sweep import knockout_answers, layer_groups
    from mechanisms.experiments.mediation import mediate_pair
    from mechanisms.experiments.reference import naive_mediation
    from mechanisms.models.adapters.llava import load_llava
    from mechanisms.models.registry import fingerprint_checkpoint
    from mechanisms.organisms.tiny_llava import save_random_real_geometry
    from mechanisms.tasks.model_under_test import VLM
    from mechanisms.tasks.specs import BOX

    path = save_random_real_geometry(Path(tempfile.mkdtemp()) / "m", hidden=32 * heads, layers=layers, heads=heads)
    profile = load_profiles()["tiny_llava"]
    vlm = VLM(profile, load_llava(path, torch.float32, "cpu"), path, fingerprint_checkpoint(path))
    dataset = resolve_dataset("synthetic")
    pair = dataset.with_counterfactuals()[0]
    adapter = vlm.adapter
    question, answer = BOX.question(pair, dataset.categories), BOX.correct_answer(adapter, pair)
    inputs, span = adapter.encode_with_answer(dataset.image(pair), question, answer)
    n_image = adapter.n_image_tokens(pair.width, pair.height)
    end = int(adapter.image_token_mask(inputs["input_ids"])[0].nonzero()[-1]) + 1
    shape = cost_model.shape_of(adapter.model, n_image, 1, n_image + 1, text_tokens=span.start - n_image)
    suffix = inputs["input_ids"].shape[1] - end
    answer_tokens = span.stop - span.start
    heads_all = [(l, h) for l in range(layers) for h in range(heads)]
    groups = layer_groups(layers, profile.claims["knockout"]["group_sizes"])

    def timed(fn, repeats=2):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats

    vlm.mean_visual_embedding()
    rows = [
        ("mediation pair (ours)", cost_model.mediation_pair_flops(shape, suffix),
         timed(lambda: mediate_pair(vlm, dataset, pair, BOX))),
        ("mediation pair (naive)", cost_model.naive_mediation_pair_flops(shape, suffix),
         timed(lambda: naive_mediation(vlm, dataset, pair, BOX, heads_all), 1)),
        ("knockout object", cost_model.knockout_object_flops(shape, list(groups.values()), span.start - end,
                                                             BOX.max_new_tokens),
         timed(lambda: (vlm.results.memory.clear(), knockout_answers(vlm, dataset, [pair], BOX, groups)))),
        ("IG sample (32 steps)", cost_model.ig_sample_flops(shape, 32, answer_tokens),
         timed(lambda: (vlm.results.memory.clear(), integrated_gradients(vlm, dataset, [pair], BOX, 32)), 1)),
    ]
    print(f"CPU check: random LLaVA, {layers} layers x {heads} heads, hidden {32 * heads}, {shape.prompt_tokens} "
          f"prompt tokens, {torch.get_num_threads()} threads")
    print(f"  {'pass':24} {'formula GFLOP':>14} {'seconds':>9} {'GFLOP/s':>9}")
    for name, flops, seconds in rows:
        print(f"  {name:24} {flops / 1e9:14.1f} {seconds:9.3f} {flops / 1e9 / seconds:9.1f}")
    print("  (the knockout row counts max_new_tokens decoding steps; random weights may stop earlier)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["llava7b", "llava13b", "internvl8b"], action="append")
    parser.add_argument("--objects", type=int, default=cost_model.PAPER_OBJECTS)
    parser.add_argument("--check-cpu", action="store_true")
    parser.add_argument("--layers", type=int, default=8, help="with --check-cpu")
    parser.add_argument("--heads", type=int, default=8, help="with --check-cpu")
    args = parser.parse_args()
    for name in args.profile or ["llava7b", "llava13b", "internvl8b"]:
        print_costs(name, args.objects, cost_model.H200)
        print()
    if args.check_cpu:
        check_cpu(args.layers, args.heads)


if __name__ == "__main__":
    main()
