"""Benchmark: batched token interventions vs a per-sample, per-condition `generate` loop (same run).

    python benchmarks/token_interventions.py [--samples 32] [--model-path fixtures/models/tiny-llava]
    python benchmarks/token_interventions.py --family internvl --model-path fixtures/models/tiny-internvl

The batched path (what the claims use) runs the vision tower once per batch of images and decodes every
condition from the same visual tokens in batches; the naive path calls `model.generate` once per
(sample, condition) with pixels and a projector hook. Prints both wall times, their ratio, and how
many answers agree (they should all agree: batching changes nothing but speed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mechanisms.data import resolve_dataset
from mechanisms.interventions import conditions as C
from mechanisms.interventions.tokens import editing_visual_tokens
from mechanisms.models.adapters import load_adapter
from mechanisms.models.mean_embedding import DEFAULT_REFERENCE, mean_visual_embedding
from mechanisms.models.registry import REPO_ROOT, fingerprint_checkpoint
from mechanisms.tasks.generation import Generator
from mechanisms.tasks.prompts import box_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model-path", default=str(REPO_ROOT / "fixtures/models/tiny-llava"))
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--family", default="llava", choices=["llava", "internvl"])
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    adapter = load_adapter(args.family, Path(args.model_path), torch.float32, "cpu")
    dataset = resolve_dataset("synthetic")
    samples = dataset.samples[: args.samples]
    mean = mean_visual_embedding(adapter, fingerprint_checkpoint(Path(args.model_path)), DEFAULT_REFERENCE,
                                 REPO_ROOT / ".cache")
    conditions = [C.object_ablation(0), C.object_ablation(1), C.matched_random_ablation(0),
                  C.containerization(1, 0), C.object_shuffle(0), C.full_shuffle(0)]
    images = [dataset.image(s) for s in samples]
    questions = [box_prompt(s.category) for s in samples]

    def makers():
        return {c.name: (lambda i, f, c=c: c.edit(samples[i], adapter.views(samples[i].width, samples[i].height), f,
                                                  dataset))
                for c in conditions}

    start = time.perf_counter()
    batched = Generator(adapter, batch_size=args.batch_size).generate_conditions(
        images, questions, args.max_new_tokens, makers(), mean)
    t_batched = time.perf_counter() - start

    start = time.perf_counter()
    naive: dict[str, list[str]] = {c.name: [] for c in conditions}
    with torch.no_grad():
        for c in conditions:
            for i, (image, question) in enumerate(zip(images, questions)):
                inputs = adapter.encode([image], [question])
                features = adapter.visual_tokens(inputs)[0]
                edit = makers()[c.name](i, features)
                with editing_visual_tokens(adapter, [edit], mean):
                    out = adapter.model.generate(**inputs, do_sample=False, max_new_tokens=args.max_new_tokens,
                                                 pad_token_id=adapter.tokenizer.pad_token_id)
                naive[c.name].append(adapter.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                                              skip_special_tokens=True).strip())
    t_naive = time.perf_counter() - start

    total = len(samples) * len(conditions)
    agree = sum(a == b for c in conditions for a, b in zip(batched[c.name], naive[c.name]))
    print(f"{len(samples)} samples x {len(conditions)} conditions = {total} generations, "
          f"{args.max_new_tokens} new tokens max, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"naive per-sample loop : {t_naive:8.2f} s  ({total / t_naive:6.1f} generations/s)")
    print(f"batched (claims path) : {t_batched:8.2f} s  ({total / t_batched:6.1f} generations/s)")
    print(f"speed-up              : {t_naive / t_batched:8.2f}x")
    print(f"answers agreeing      : {agree}/{total}")


if __name__ == "__main__":
    main()
