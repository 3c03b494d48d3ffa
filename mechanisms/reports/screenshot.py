"""A PNG of a report page as a browser shows it: `python -m mechanisms.reports.screenshot REPORT.html out.png`.

Uses headless Chromium (`/usr/bin/chromium`, or $CHROMIUM), the page opened from disk; flags keep it off the
network (the report needs none) and away from the user's profile.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") \
        or shutil.which("google-chrome")


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 1600, timeout: float = 120) -> Path:
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (install Debian's `chromium`, or set $CHROMIUM)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={Path(out).resolve()}", Path(page).resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args(argv)
    print(screenshot(args.page, args.out, args.width, args.height))


if __name__ == "__main__":
    main()
