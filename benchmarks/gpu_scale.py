"""On a GPU: the circuit sweeps and IG at LLaVA-1.5-7B's real size (random weights), ours next to the naive loops.

    python benchmarks/gpu_scale.py --out results.json                  # on the device machine (bf16, cuda)
    python benchmarks/gpu_scale.py --device cpu --dtype float32 --layers 2 --width 128 --pairs 1   # a smoke test

Builds llava-hf/llava-1.5-7b-hf's own config (`models.paper_configs`; `--layers`/`--width` shrink it for a
smoke test) with random weights directly on the device, with the checkpoint's real tokenizer, template
and processor (fixtures/real-configs). Times, on the same pairs and objects: the head-mediation sweep
(every head) vs one full pass per head; the knockout sweep (every layer group) vs one `generate` per
group; one IG sample (32 steps, steps per pass sized by memory); each with its peak device memory. Writes
the numbers as JSON (and prints them): `benchmarks/README.md` records them with the date and the device.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def build(device: str, dtype: torch.dtype, layers: int | None, width: int | None):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mechanisms.models.adapters.llava import llava_adapter
    from mechanisms.models.paper_configs import REAL, paper_config

    config = paper_config("llava7b")
    if layers:
        config.text_config.num_hidden_layers = layers
    if width:  # keep the head count, shrink every width
        heads = config.text_config.num_attention_heads
        config.text_config.hidden_size, config.text_config.intermediate_size = width, 2 * width
        config.text_config.head_dim = width // heads
        config.vision_config.hidden_size, config.vision_config.intermediate_size = width, 2 * width
        config.vision_config.num_attention_heads = max(1, width // 64)
        config.vision_config.num_hidden_layers = 2
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype).eval()
    return llava_adapter(model, AutoProcessor.from_pretrained(REAL / "llava-1.5-7b-hf"))


def measured(device: str, fn):
    """(result, seconds, peak device memory in bytes) of fn()."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    return result, time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--pairs", type=int, default=2, help="mediation pairs timed with our sweep")
    parser.add_argument("--naive-pairs", type=int, default=1, help="of those, timed with the naive loop too")
    parser.add_argument("--knockout-samples", type=int, default=2)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import numpy as np

    from mechanisms.data import resolve_dataset
    from mechanisms.experiments.attribution import integrated_gradients
    from mechanisms.experiments.knockout_sweep import knockout_answers, layer_groups
    from mechanisms.experiments.mediation import mediate_pair
    from mechanisms.experiments.reference import naive_knockout_answers, naive_mediation
    from mechanisms.models.registry import load_profiles
    from mechanisms.tasks.model_under_test import VLM
    from mechanisms.tasks.specs import BOX

    dtype = getattr(torch, args.dtype)
    adapter = build(args.device, dtype, args.layers, args.width)
    profile = load_profiles()["llava7b"]
    vlm = VLM(profile, adapter, "random-llava-7b", "random-llava-7b", device=args.device)
    dataset = resolve_dataset("synthetic")
    pairs = dataset.with_counterfactuals()[: args.pairs]
    layout = adapter.head_layout()
    heads = [(l, h) for l in range(layout.n_layers) for h in range(layout.n_query_heads)]
    out = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if args.device.startswith(
        "cuda") else platform.processor() or "cpu", "dtype": args.dtype, "layers": layout.n_layers,
           "heads": len(heads), "torch": torch.__version__}

    mediate_pair(vlm, dataset, pairs[0], BOX)  # warm-up (kernels, allocator)
    ours = [measured(args.device, lambda s=s: mediate_pair(vlm, dataset, s, BOX)) for s in pairs]
    out["mediation_seconds_per_pair"] = float(np.mean([t for _, t, _ in ours]))
    out["mediation_peak_bytes"] = max(p for _, _, p in ours)
    naive = [measured(args.device, lambda s=s: naive_mediation(vlm, dataset, s, BOX, heads))
             for s in pairs[: args.naive_pairs]]
    out["naive_mediation_seconds_per_pair"] = float(np.mean([t for _, t, _ in naive]))
    out["mediation_speedup"] = out["naive_mediation_seconds_per_pair"] / out["mediation_seconds_per_pair"]
    out["max_relative_perplexity_difference"] = max(
        float(np.max(np.abs(a.p_patched.ravel() - b.p_patched) / np.abs(b.p_patched)))
        for (a, _, _), (b, _, _) in zip(ours, naive))

    groups = layer_groups(layout.n_layers, profile.claims["knockout"]["group_sizes"])
    samples = dataset.samples[: args.knockout_samples]
    fast, t_fast, p_fast = measured(args.device, lambda: knockout_answers(vlm, dataset, samples, BOX, groups))
    slow, t_slow, _ = measured(args.device, lambda: naive_knockout_answers(vlm, dataset, samples, BOX, groups))
    out.update(knockout_seconds_per_object=t_fast / len(samples), naive_knockout_seconds_per_object=t_slow / len(samples),
               knockout_speedup=t_slow / t_fast, knockout_peak_bytes=p_fast, knockout_groups=len(groups),
               knockout_answers_agreeing=sum(a == b for n in fast for a, b in zip(fast[n], slow[n])),
               knockout_answers=sum(len(v) for v in fast.values()))

    vlm.mean_visual_embedding()
    _, t_ig, p_ig = measured(args.device, lambda: integrated_gradients(vlm, dataset, samples[:1], BOX, 32))
    out.update(ig_seconds_per_sample=t_ig, ig_peak_bytes=p_ig)
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
