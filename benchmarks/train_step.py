"""What one training step of a tiny organism costs, and what would make it cheaper.

    python benchmarks/train_step.py [--init fixtures/organisms-in-training/tiny-llava-v2] [--repeats 3]

Times the forward + backward of one 32-chat optimiser step (`train.answer_loss_backward`, the trainer's own
path) on real training chats, for each variant: bf16 autocast where the CPU multiplies bf16 natively or
plain fp32, micro-batches of 8 (the trainer's default), 16 or 32, and the LM's attention implementation
(SDPA, the default, or eager). The same chats in every variant; the first step of each is a warm-up. Prints
seconds per step and the ratio to the trainer's current setting, then the top operators of one current step.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from pathlib import Path

import torch

from mechanisms.data.synthetic import SceneConfig, generate_scenes
from mechanisms.models.adapters.llava import LlavaAdapter
from mechanisms.models.registry import REPO_ROOT, native_bf16
from mechanisms.organisms import tiny_llava
from mechanisms.organisms import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", type=Path, default=REPO_ROOT / "fixtures/organisms-in-training/tiny-llava-v2")
    parser.add_argument("--recipe", default=tiny_llava.TRAINING)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print the top operators of one step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import LlavaForConditionalGeneration

    scenes = generate_scenes(args.batch, 12345 + train.TRAIN_SCENE_SEED_OFFSET, SceneConfig())
    pixels = train.render_pixels(scenes, workers=1, recipe=args.recipe)
    tokenizer = tiny_llava.build_tokenizer()
    processor = tiny_llava.build_processor(tokenizer, args.recipe)
    results = {}
    for attention in ("sdpa", "eager"):
        model = LlavaForConditionalGeneration.from_pretrained(args.init, dtype=torch.float32,
                                                              attn_implementation=attention)
        model.model.vision_tower.requires_grad_(False)
        features = train.tower_features(model, pixels)
        adapter = LlavaAdapter(model, processor)
        builder = train.ChatBuilder(adapter, 6, random.Random(0))
        chats = [builder.encode(scene) for scene in scenes]
        model.train()
        for bf16 in sorted({native_bf16("cpu"), False}, reverse=True):
            for micro in (8, 16, 32):
                if attention == "eager" and micro != 8:
                    continue
                seconds = time_step(model, adapter, tokenizer, chats, features, micro, bf16, args.repeats)
                key = f"attn={attention} {'bf16' if bf16 else 'fp32'} micro={micro}"
                results[key] = seconds
                print(f"{key}: {seconds:.2f} s/step", flush=True)
        if attention == "sdpa" and args.profile:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                time_step(model, adapter, tokenizer, chats, features, 8, native_bf16("cpu"), 1, warmup=False)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    current = results[f"attn=sdpa {'bf16' if native_bf16('cpu') else 'fp32'} micro=8"]
    print("\nratio to the trainer's setting (lower is faster):")
    for key, seconds in results.items():
        print(f"  {key}: {seconds / current:.2f}")


def time_step(model, adapter, tokenizer, chats, features, micro: int, bf16: bool, repeats: int,
              warmup: bool = True) -> float:
    """Median seconds of one optimiser step's forward + backward over `chats` (gradients discarded)."""
    parts = [list(range(i, min(i + micro, len(chats)))) for i in range(0, len(chats), micro)]
    times = []
    for _ in range(repeats + int(warmup)):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with _precision(bf16):
            for part in parts:
                batch = train.collate([chats[i] for i in part], tokenizer.pad_token_id)
                train.answer_loss_backward(adapter, batch, features[part], len(parts), torch.device("cpu"))
        times.append(time.perf_counter() - start)
    times = times[int(warmup):]
    return sorted(times)[len(times) // 2]


@contextlib.contextmanager
def _precision(bf16: bool):
    """Force the trainer's `mixed_precision` on or off for this block."""
    original = train.native_bf16
    train.native_bf16 = lambda device_type: bf16
    try:
        yield
    finally:
        train.native_bf16 = original


if __name__ == "__main__":
    main()
