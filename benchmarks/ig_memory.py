"""Peak memory of Integrated Gradients against the interpolation steps run per pass (each in a fresh process).

    python benchmarks/ig_memory.py [--steps-per-pass 1 2 4 8] [--layers 8] [--heads 8]

On the random-init LLaVA with LLaVA-1.5's real image geometry (576 image tokens, ~630 in all), fp32 on the
CPU: the peak resident memory above what the process held before the call (polled every millisecond),
per value of `steps_per_pass`, its linear fit (bytes
per step), and that slope divided by (tokens x LM layers x hidden x 4 bytes), next to the formula
`attribution.ig_step_bytes` uses to size the passes on a device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, os, sys, tempfile, threading, time, torch
from pathlib import Path
from mechanisms.data import resolve_dataset
from mechanisms.experiments.attribution import integrated_gradients
from mechanisms.models.adapters.llava import load_llava
from mechanisms.models.registry import fingerprint_checkpoint, load_profiles
from mechanisms.organisms.tiny_llava import save_random_real_geometry
from mechanisms.tasks.model_under_test import VLM
from mechanisms.tasks.specs import BOX
steps, layers, heads = (int(a) for a in sys.argv[1:4])
path = save_random_real_geometry(Path(tempfile.mkdtemp()) / "m", hidden=32 * heads, layers=layers, heads=heads)
vlm = VLM(load_profiles()["tiny_llava"], load_llava(path, torch.float32, "cpu"), path, fingerprint_checkpoint(path))
dataset = resolve_dataset("synthetic")
sample = dataset.samples[0]
vlm.mean_visual_embedding()
import captum.attr  # imported before measuring
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak, running = [0], [True]
def poll():
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
before = rss()
thread = threading.Thread(target=poll)
thread.start()
integrated_gradients(vlm, dataset, [sample], BOX, 32, steps)
running[0] = False
thread.join()
inputs = vlm.adapter.encode([dataset.image(sample)], ["x"])
print(json.dumps({"steps_per_pass": steps, "peak_above_mib": (peak[0] - before) / 2**20, "tokens": int(inputs["input_ids"].shape[1]),
                  "hidden": 32 * heads, "layers": layers}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-per-pass", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    args = parser.parse_args()
    import numpy as np

    rows = []
    for steps in args.steps_per_pass:
        out = subprocess.run([sys.executable, "-c", CHILD, str(steps), str(args.layers), str(args.heads)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{steps:3d} steps per pass: peak {rows[-1]['peak_above_mib']:8.1f} MiB above the loaded model")
    x = np.array([r["steps_per_pass"] for r in rows], float)
    y = np.array([r["peak_above_mib"] for r in rows]) * 2 ** 20
    slope, intercept = np.polyfit(x, y, 1)
    r = rows[0]
    per = slope / (r["tokens"] * r["layers"] * r["hidden"] * 4)
    from mechanisms.experiments.attribution import ig_step_bytes

    formula = ig_step_bytes(r["hidden"], 2 * r["hidden"], r["layers"], r["tokens"], 4)
    print(f"fit: {slope / 2**20:.1f} MiB per step + {intercept / 2**20:.1f} MiB; tokens {r['tokens']}, "
          f"{r['layers']} layers, hidden {r['hidden']}: {per:.1f} values per (token, layer, hidden unit); "
          f"attribution.ig_step_bytes: {formula / 2**20:.1f} MiB per step")


if __name__ == "__main__":
    main()
