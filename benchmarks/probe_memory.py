"""Peak memory of hidden-state extraction as the image count grows (each size in a fresh process).

    python benchmarks/probe_memory.py [--sizes 32 128 512]

Extraction writes every stage's states per chunk of images and keeps nothing else, so the peak resident
memory should stay flat as the number of images grows; the on-disk size grows linearly.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, tempfile, time, torch
from pathlib import Path
from mechanisms.models.adapters.llava import load_llava
from mechanisms.data.image_sets import image_set
from mechanisms.experiments.probing import extract
from mechanisms.models.registry import REPO_ROOT
n = int(sys.argv[1])
adapter = load_llava(REPO_ROOT / "fixtures/models/tiny-llava", torch.float32, "cpu")
loaders, _ = image_set(f"synthetic:41:{n}")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
root = Path(tempfile.mkdtemp())
start = time.perf_counter()
extract(adapter, loaders, root, chunk_images=32)
size = sum(p.stat().st_size for p in root.rglob("*.npz"))
print(json.dumps({"images": n, "peak_rss_mib_before": before / 1024, "peak_rss_mib": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, "disk_mib": size / 2**20, "seconds": time.perf_counter() - start}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512])
    args = parser.parse_args()
    for n in args.sizes:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{row['images']:6d} images: peak RSS {row['peak_rss_mib']:7.1f} MiB (after loading: "
              f"{row['peak_rss_mib_before']:7.1f}), states on disk {row['disk_mib']:7.1f} MiB, {row['seconds']:.1f} s")


if __name__ == "__main__":
    main()
