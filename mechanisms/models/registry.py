"""Model profiles (data in `mechanisms/models/profiles/*.toml`) and where their weights come from, offline only.

A profile names a model family (which adapter), where its weights may be found, and the claims'
thresholds and the paper's reference values for it. Weights are looked up, in order: an explicit
`--model-path`, the profile's environment variable, the path shipped in this repo, the Hugging Face
cache. Nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@functools.cache
def native_bf16(device: str) -> bool:
    """Whether `device` multiplies bf16 natively (CUDA; CPUs with AVX-512-BF16 or AMX). Elsewhere torch emulates
    it: on an AVX2-only CPU a bf16 matmul is ~65x slower than fp32 (measured on this project's CI machine:
    250 ms vs 3.8 ms for [2048, 128] x [128, 512])."""
    if torch.device(device).type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class CheckpointError(RuntimeError):
    """A path given as a checkpoint is not one."""


class CheckpointUnavailable(LookupError):
    """No weights for a profile on this machine; the message says how to provide them."""


@dataclass(frozen=True)
class Profile:
    name: str
    family: str
    description: str
    dtype: str = "float32"
    batch_size: int = 16
    default_dataset: str = "synthetic"
    hf_id: str | None = None
    shipped_path: str | None = None
    system_prompt: str | None = None  # the system text the model was trained with (None: the template's own)
    processor: dict[str, Any] = field(default_factory=dict)  # keywords of every processor call (pan-and-scan)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)
    paper: dict[str, dict[str, Any]] = field(default_factory=dict)  # as in the TOML: per dataset, and model-level
    paper_dataset: str | None = None  # which dataset's tables `paper_value` reads (`for_dataset`); None: none
    # a model the paper did not measure: whose COCO tables its `paper` columns show for scale (labelled so)
    nearest_paper_model: str | None = None
    nearest_tables: dict[str, Any] = field(default_factory=dict, repr=False)  # its dataset tables (load_profiles)

    @property
    def env_var(self) -> str:
        return f"VLM_MECHANISMS_{self.name.upper()}_PATH"

    def threshold(self, claim: str, key: str) -> float:
        try:
            return self.claims[claim][key]
        except KeyError as err:
            raise KeyError(f"profile {self.name!r} has no threshold [claims.{claim}] {key} "
                           f"(add it to {PROFILE_DIR / (self.name + '.toml')})") from err

    def for_dataset(self, source: str | None) -> "Profile":
        """This profile reading the paper's tables for a dataset of this recorded source ("coco",
        "coco-rem", "voc", "synthetic", None): COCO's Tables 1-4 for COCO, Table 5 for VOC, no dataset
        table for a source the paper did not measure (model-level facts stay)."""
        return replace(self, paper_dataset=PAPER_DATASETS.get(source))

    def paper_sections(self) -> dict[str, dict[str, Any]]:
        """The paper's sections for this model on the bound dataset, plus its model-level sections. A model
        the paper did not measure reads its nearest paper model's COCO tables instead (for scale only: never
        that model's model-level facts, such as layer locations, nor its recorded contradictions)."""
        model_level = {k: v for k, v in self.paper.items() if k not in set(PAPER_DATASETS.values())}
        if self.paper_from_nearest:  # the bound dataset's tables, COCO's on a dataset the paper did not measure
            return {**model_level, **self.nearest_tables.get(self.paper_dataset or "coco", {})}
        return {**model_level, **self.paper.get(self.paper_dataset, {})} if self.paper_dataset else model_level

    @property
    def paper_from_nearest(self) -> bool:
        """Whether `paper` values are the nearest paper model's (this model is not in the paper)."""
        return not self.paper and self.nearest_paper_model is not None

    def paper_value(self, section: str, key: str, task: str | None = None):
        """The paper's value for this model on the bound dataset (None where the paper has none); per-task
        tables (`{ localization = ..., classification = ... }`) are read with `task`."""
        value = self.paper_sections().get(section, {}).get(key)
        if task is not None and isinstance(value, dict):
            return value.get(task)
        return value

    def paper_drop(self, section: str, key: str, task: str):
        """The paper's drop from its baseline under a condition (baseline - value), None where it has either
        missing."""
        base, value = self.paper_value("ablation", "baseline", task), self.paper_value(section, key, task)
        return None if base is None or value is None else round(base - value, 4)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


SHARED_FINDINGS = "_findings.toml"
# A dataset's recorded source -> the paper's table set measured on it (COCO-ReM corrects COCO val's masks:
# the paper's COCO tables are measured on it). Sources not listed (synthetic, unknown) have no paper table.
PAPER_DATASETS = {"coco": "coco", "coco-rem": "coco", "voc": "voc"}


def load_profiles(directory: Path = PROFILE_DIR) -> dict[str, Profile]:
    """Every `<name>.toml` profile, its [claims.*] laid over the shared thresholds of `_findings.toml`."""
    shared_path = directory / SHARED_FINDINGS
    shared = tomllib.loads(shared_path.read_text()).get("claims", {}) if shared_path.is_file() else {}
    profiles = {}
    for path in sorted(directory.glob("*.toml")):
        if path.name.startswith("_"):
            continue
        data = tomllib.loads(path.read_text())
        claims = {section: dict(values) for section, values in shared.items()}
        for section, values in data.get("claims", {}).items():
            claims.setdefault(section, {}).update(values)
        for values in claims.values():  # "all" (TOML has no null): no cap on a sample count
            values.update({key: None for key, value in values.items() if value == "all"})
        data["claims"] = claims
        profile = Profile(**data)
        profile = profile.for_dataset(profile.default_dataset)  # until a run binds its own dataset
        if profile.name != path.stem:
            raise ValueError(f"{path}: profile name {profile.name!r} must match the file name")
        profiles[profile.name] = profile
    for name, profile in profiles.items():
        if profile.nearest_paper_model:
            nearest = profiles[profile.nearest_paper_model].paper
            tables = {dataset: {k: v for k, v in nearest.get(dataset, {}).items() if k != "contradicts"}
                      for dataset in set(PAPER_DATASETS.values())}
            profiles[name] = replace(profile, nearest_tables=tables)
    return profiles


def check_checkpoint_dir(path: str | Path) -> Path:
    """An explicit checkpoint path must be a folder holding a transformers config and weights."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (it is a file)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it has no config.json")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise CheckpointError(f"{path} is not a checkpoint: it has no *.safetensors or *.bin weights")
    return path


def resolve_checkpoint(profile: Profile, explicit: str | Path | None = None) -> Path:
    """Where this profile's weights are on this machine, or CheckpointUnavailable saying how to get them."""
    if explicit:
        return check_checkpoint_dir(explicit)
    from_env = os.environ.get(profile.env_var)
    if from_env:
        return check_checkpoint_dir(from_env)
    if profile.shipped_path:
        shipped = REPO_ROOT / profile.shipped_path
        if (shipped / "config.json").is_file():
            return shipped
    if profile.hf_id:
        cached = _hf_cache_snapshot(profile.hf_id)
        if cached is not None:
            return cached
    where = [f"--model-path {profile.name}=/path/to/checkpoint", f"the environment variable {profile.env_var}"]
    if profile.hf_id:
        where.append(f"{profile.hf_id} in the Hugging Face cache ({_hf_cache_dir()})")
    raise CheckpointUnavailable(f"no weights for {profile.name} ({profile.description}) on this machine; "
                                f"provide them with " + ", or ".join(where))


def _hf_cache_dir() -> str:
    from huggingface_hub import constants
    return str(constants.HF_HUB_CACHE)


def _hf_cache_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not in the cache (the hub raises several kinds here, all meaning "absent")
        return None
    return path if (path / "config.json").is_file() else None


def fingerprint_checkpoint(path: Path) -> str:
    """Short content hash of a checkpoint's config and weight files (sizes + first/last MiB for big ones)."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if not file.is_file() or file.suffix not in {".json", ".safetensors", ".bin", ".model"}:
            continue
        digest.update(file.name.encode())
        size = file.stat().st_size
        digest.update(str(size).encode())
        with open(file, "rb") as handle:
            if size <= 64 << 20:
                digest.update(handle.read())
            else:
                digest.update(handle.read(1 << 20))
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]
