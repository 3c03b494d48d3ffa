"""Model profiles and offline checkpoint resolution (mechanisms.models.registry)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mechanisms.models import registry
from mechanisms.models.registry import (
    PROFILE_DIR,
    CheckpointError,
    CheckpointUnavailable,
    check_checkpoint_dir,
    load_profiles,
    resolve_checkpoint,
)


@pytest.fixture
def offline_empty_hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline, with no profile path variables set."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    for name in ("VLM_MECHANISMS_LLAVA7B_PATH", "VLM_MECHANISMS_LLAVA13B_PATH",
                 "VLM_MECHANISMS_INTERNVL8B_PATH", "VLM_MECHANISMS_TINY_LLAVA_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these variables once, at import: point its constants at the empty cache too
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def _checkpoint(folder: Path, weights: str | None = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    if weights:
        (folder / weights).write_bytes(b"\0" * 8)
    return folder


# ----- profiles ---------------------------------------------------------------------------------------


def test_load_profiles_finds_the_models():
    """The profiles: tiny_llava, llava7b, llava13b (family llava), tiny_internvl and internvl8b (internvl), and
    the families the paper did not measure (Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, Gemma 3), which read
    InternVL-3.5-8B's tables for scale and none of its model-level facts."""
    profiles = load_profiles()
    families = {name: p.family for name, p in profiles.items()}
    assert families == {"tiny_llava": "llava", "llava7b": "llava", "llava13b": "llava", "internvl8b": "internvl",
                        "tiny_internvl": "internvl", "qwen25vl7b": "qwen2_5_vl", "qwen3vl8b": "qwen3_vl",
                        "llavaov7b": "llava_onevision", "gemma3_4b": "gemma3"}
    for name in ("qwen25vl7b", "qwen3vl8b", "llavaov7b", "gemma3_4b"):
        assert profiles[name].paper_from_nearest and profiles[name].paper_value("locations", "knockout_layers") is None
    assert profiles["gemma3_4b"].processor == {"do_pan_and_scan": True}
    assert profiles["llava7b"].hf_id == "llava-hf/llava-1.5-7b-hf"
    assert profiles["tiny_llava"].shipped_path == "fixtures/models/tiny-llava"
    assert profiles["tiny_llava"].default_dataset == "synthetic"


def test_every_profile_has_baseline_and_hallucination_thresholds():
    """Each profile defines the thresholds the claims read, as numbers."""
    for profile in load_profiles().values():
        for claim, key in [("baseline", "min_localization"), ("baseline", "min_classification"),
                           ("hallucination", "min_difference")]:
            assert isinstance(profile.threshold(claim, key), float), (profile.name, claim, key)
        assert profile.torch_dtype is not None


def test_threshold_missing_names_the_profile_file():
    """A missing threshold raises KeyError naming the claim, the key and the profile's .toml file."""
    profile = load_profiles()["llava7b"]
    with pytest.raises(KeyError) as excinfo:
        profile.threshold("baseline", "no_such_key")
    message = str(excinfo.value)
    assert str(PROFILE_DIR / "llava7b.toml") in message
    assert "no_such_key" in message and "baseline" in message
    with pytest.raises(KeyError, match="llava7b.toml"):
        profile.threshold("no_such_claim", "min_localization")


def test_paper_value_defaults_to_none():
    """paper_value returns the recorded reference, or None when there is none."""
    profiles = load_profiles()
    assert profiles["llava7b"].paper_value("baseline", "localization") == pytest.approx(0.3534)
    assert profiles["tiny_llava"].paper_value("probing", "peak_llm_layer") is None
    assert profiles["llava7b"].paper_value("baseline", "no such key") is None


def test_profile_env_var_name():
    """The environment variable is VLM_MECHANISMS_<NAME>_PATH."""
    profiles = load_profiles()
    assert profiles["llava7b"].env_var == "VLM_MECHANISMS_LLAVA7B_PATH"
    assert profiles["tiny_llava"].env_var == "VLM_MECHANISMS_TINY_LLAVA_PATH"


def test_profile_name_must_match_file_name(tmp_path):
    """A profile whose name differs from its file name is rejected."""
    (tmp_path / "other.toml").write_text('name = "llava7b"\nfamily = "llava"\ndescription = "x"\n')
    with pytest.raises(ValueError, match="must match the file name"):
        load_profiles(tmp_path)


# ----- check_checkpoint_dir ---------------------------------------------------------------------------


def test_check_checkpoint_dir_missing_path(tmp_path):
    """A path that does not exist is not a checkpoint."""
    with pytest.raises(CheckpointError, match="does not exist"):
        check_checkpoint_dir(tmp_path / "absent")


def test_check_checkpoint_dir_file(tmp_path):
    """A file is not a checkpoint folder."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="it is a file"):
        check_checkpoint_dir(path)


def test_check_checkpoint_dir_without_config(tmp_path):
    """A folder without config.json is not a checkpoint, weights or not."""
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no config.json"):
        check_checkpoint_dir(tmp_path)


def test_check_checkpoint_dir_without_weights(tmp_path):
    """A folder with config.json but no *.safetensors / *.bin is not a checkpoint."""
    folder = _checkpoint(tmp_path / "ckpt", weights=None)
    with pytest.raises(CheckpointError, match="no \\*.safetensors or \\*.bin"):
        check_checkpoint_dir(folder)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin", "model-00001-of-00002.safetensors"])
def test_check_checkpoint_dir_valid(tmp_path, weights):
    """A folder with config.json and weights is returned as a Path."""
    folder = _checkpoint(tmp_path / "ckpt", weights)
    assert check_checkpoint_dir(str(folder)) == folder


# ----- resolve_checkpoint -----------------------------------------------------------------------------


def test_resolve_llava7b_unavailable_says_how_to_provide_weights(offline_empty_hf_cache):
    """With no path, no env var and an empty cache, the error names --model-path, the env var and the hub id."""
    profile = load_profiles()["llava7b"]
    with pytest.raises(CheckpointUnavailable) as excinfo:
        resolve_checkpoint(profile)
    message = str(excinfo.value)
    assert "--model-path" in message
    assert "VLM_MECHANISMS_LLAVA7B_PATH" in message
    assert "llava-hf/llava-1.5-7b-hf" in message
    assert str(offline_empty_hf_cache) in message


def test_hf_cache_lookup_of_an_impossible_repo_is_none(offline_empty_hf_cache):
    """The cache lookup answers None (never raises, never downloads) for a repo absent from every cache."""
    assert registry._hf_cache_snapshot("vlm-mechanisms-tests/no-such-model-3f9c1e") is None


def test_resolve_unavailable_without_hf_id(offline_empty_hf_cache):
    """A profile with neither shipped path nor hub id names only --model-path and its env var."""
    profile = dataclasses.replace(load_profiles()["llava7b"], hf_id=None)
    with pytest.raises(CheckpointUnavailable) as excinfo:
        resolve_checkpoint(profile)
    assert "--model-path" in str(excinfo.value) and "Hugging Face" not in str(excinfo.value)


def test_resolve_via_env_var(offline_empty_hf_cache, tmp_path, monkeypatch):
    """The profile's env var pointing at a valid checkpoint folder is returned."""
    folder = _checkpoint(tmp_path / "llava7b")
    monkeypatch.setenv("VLM_MECHANISMS_LLAVA7B_PATH", str(folder))
    assert resolve_checkpoint(load_profiles()["llava7b"]) == folder


def test_resolve_via_env_var_checks_the_folder(offline_empty_hf_cache, tmp_path, monkeypatch):
    """An env var pointing at something that is not a checkpoint raises CheckpointError, no fallback."""
    monkeypatch.setenv("VLM_MECHANISMS_LLAVA7B_PATH", str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(load_profiles()["llava7b"])


def test_explicit_path_wins_over_env_var(offline_empty_hf_cache, tmp_path, monkeypatch):
    """An explicit --model-path is used (and checked) before the env var."""
    explicit = _checkpoint(tmp_path / "explicit")
    monkeypatch.setenv("VLM_MECHANISMS_LLAVA7B_PATH", str(_checkpoint(tmp_path / "from-env")))
    profile = load_profiles()["llava7b"]
    assert resolve_checkpoint(profile, explicit) == explicit
    with pytest.raises(CheckpointError):
        resolve_checkpoint(profile, tmp_path / "nope")


def test_shipped_path_used_when_config_present(offline_empty_hf_cache, tmp_path, monkeypatch):
    """A profile's shipped path (relative to the repo) is used when it holds a config.json."""
    monkeypatch.setattr(registry, "REPO_ROOT", tmp_path)
    _checkpoint(tmp_path / "fixtures" / "models" / "tiny-llava")
    profile = load_profiles()["tiny_llava"]
    assert resolve_checkpoint(profile) == tmp_path / "fixtures" / "models" / "tiny-llava"


def test_shipped_path_absent_is_unavailable(offline_empty_hf_cache, tmp_path, monkeypatch):
    """Without the shipped folder the tiny model is unavailable, with instructions."""
    monkeypatch.setattr(registry, "REPO_ROOT", tmp_path)
    with pytest.raises(CheckpointUnavailable, match="VLM_MECHANISMS_TINY_LLAVA_PATH"):
        resolve_checkpoint(load_profiles()["tiny_llava"])


def test_fingerprint_checkpoint_tracks_content(tmp_path):
    """The checkpoint fingerprint is stable and changes when a weight file changes."""
    folder = _checkpoint(tmp_path / "ckpt")
    first = registry.fingerprint_checkpoint(folder)
    assert registry.fingerprint_checkpoint(folder) == first
    (folder / "notes.txt").write_text("ignored")
    assert registry.fingerprint_checkpoint(folder) == first
    (folder / "model.safetensors").write_bytes(b"\1" * 8)
    assert registry.fingerprint_checkpoint(folder) != first


def test_a_model_the_paper_did_not_measure_reads_its_nearest_paper_models_tables_only():
    """tiny-llava's `paper` values are LLaVA-1.5-7B's COCO (or VOC) tables, for scale; never that model's
    model-level facts (probe peak, layer locations: those claims skip) nor its recorded contradictions."""
    from mechanisms.models.registry import load_profiles

    profiles = load_profiles()
    tiny, llava = profiles["tiny_llava"], profiles["llava7b"]
    assert tiny.paper_from_nearest and not llava.paper_from_nearest
    assert tiny.paper_value("baseline", "localization") == llava.paper_value("baseline", "localization")
    assert tiny.for_dataset("voc").paper_value("ablation", "baseline", "localization") == \
        llava.for_dataset("voc").paper_value("ablation", "baseline", "localization")
    assert tiny.paper_value("probing", "peak_llm_layer") is None
    assert tiny.paper_value("locations", "knockout_layers") is None
    internvl = profiles["tiny_internvl"]
    assert "contradicts" in profiles["internvl8b"].paper_sections() and "contradicts" not in internvl.paper_sections()
