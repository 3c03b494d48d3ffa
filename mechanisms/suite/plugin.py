"""The pytest plugin that turns test functions into claims about a model.

- Options live in one group (`--model-path`, `--dataset`, `--max-samples`, `--report-dir`, `--device`,
  `--reference-images`, `--seed`); one marker per model profile, so `-m tiny_llava` or `-m llava7b` selects a model.
- Any test that asks for the `profile` fixture (directly or through `vlm`) is run once per profile.
- `vlm` and `dataset` are loaded once per worker process and kept on the run's `SuiteSession` (in
  `config.stash`, as syrupy keeps its session); absent weights skip with a reason.
- The `claim` fixture records measurements; after the run, the controller (never an xdist worker)
  writes `reports/<profile>/report.json` and `REPORT.md` from the test reports it received, with each
  worker's statistics (result-cache hits, claims run) from `workeroutput` under the report's `run`.
"""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mechanisms.models.registry import (
    CheckpointError,
    CheckpointUnavailable,
    Profile,
    check_checkpoint_dir,
    fingerprint_checkpoint,
    load_profiles,
    native_bf16,
    resolve_checkpoint,
)
from mechanisms.suite import recorder as rec

PROFILES: dict[str, Profile] = load_profiles()  # read at import: markers and parametrization need them


@dataclass
class SuiteSession:
    """What one pytest process holds for the run: the checkpoint paths it was given, the models and
    datasets it loaded (once per process), and the statistics it sends the controller."""

    model_paths: dict[str | None, str]
    models: dict[tuple, object] = field(default_factory=dict)
    datasets: dict[str, object] = field(default_factory=dict)
    claims_run: int = 0

    def statistics(self) -> dict:
        """Result-cache counters over this process's models, and how many claims it ran."""
        caches = [m.results for m in self.models.values() if hasattr(m, "results")]
        return {"claims": self.claims_run, "cache_hits": sum(c.hits for c in caches),
                "cache_misses": sum(c.misses for c in caches), "cache_recovered": sum(c.recovered for c in caches)}


SESSION = pytest.StashKey[SuiteSession]()
WORKER_STATISTICS = "vlm_statistics"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vlm-mechanisms", "claims about how vision-language models localize objects")
    group.addoption("--model-path", action="append", dest="vlm_model_paths", default=[],
                    metavar="[PROFILE=]PATH",
                    help="checkpoint folder for a profile (PROFILE=PATH), or for every selected profile (PATH)")
    group.addoption("--dataset", dest="vlm_dataset", default=None, metavar="SPEC",
                    help="dataset folder (COCO-format, see README), or 'synthetic' / 'synthetic:SEED:N'")
    group.addoption("--max-samples", dest="vlm_max_samples", type=int, default=None, metavar="N",
                    help="measure at most N objects per claim (a seeded subset)")
    group.addoption("--report-dir", dest="vlm_report_dir", default="reports", metavar="DIR",
                    help="where reports/<profile>/report.json and REPORT.md are written")
    group.addoption("--device", dest="vlm_device", default="cpu",
                    help="torch device for the models: cpu, cuda (under xdist each worker takes its own GPU), "
                         "cuda:N, or auto (one model spread over all GPUs with accelerate's device_map)")
    group.addoption("--shard", dest="vlm_shard", default=None, metavar="I/N",
                    help="run only the I-th of N equal shares of the claims (merge the reports with "
                         "python -m mechanisms.reports.compare --merge)")
    group.addoption("--reference-images", dest="vlm_reference_images", default=None, metavar="DIR",
                    help="images whose mean visual token replaces ablated tokens (the paper: ImageNet val); "
                         "default: a synthetic pool, 'synthetic:777:100'")
    group.addoption("--probe-train", dest="vlm_probe_train", default=None, metavar="DIR",
                    help="images to train positional probes on (default: the profile's synthetic set)")
    group.addoption("--probe-test", dest="vlm_probe_test", default=None, metavar="DIR",
                    help="held-out images to evaluate positional probes on")
    group.addoption("--probe-disk-budget", dest="vlm_probe_disk_budget", type=float, default=None, metavar="GB",
                    help="most disk the positional probes' hidden states may take (default: the free space left, "
                         "minus 1 GB); a run that would need more stops before extracting")
    group.addoption("--probe-tokens-per-image", dest="vlm_probe_tokens", type=int, default=None, metavar="N",
                    help="training tokens stored per image and stage, a seeded random subset (0: all; default: "
                         "the profile's train_tokens_per_image); test images are scored streamed, all tokens")
    group.addoption("--result-cache", dest="vlm_result_cache", default=None, metavar="DIR",
                    help="where finished measurements are kept so a rerun resumes (default: .cache/results)")
    group.addoption("--no-result-cache", dest="vlm_no_result_cache", action="store_true",
                    help="measure everything afresh and keep nothing on disk")
    group.addoption("--dtype", dest="vlm_dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="weights' dtype (default: the profile's; on CPU use float32 or bfloat16, fp16 is very slow)")
    group.addoption("--system-prompt", dest="vlm_system_prompt", default=None, metavar="TEXT",
                    help="the {System} text of every prompt (default: the profile's, as the model was trained; "
                         "'' for none)")
    group.addoption("--inconclusive", dest="vlm_inconclusive", default="fail", choices=["fail", "pass", "skip"],
                    help="what a claim whose intervals straddle a threshold (too few samples to tell) counts as "
                         "for the exit status (default: fail; the report says 'inconclusive' in every mode)")
    group.addoption("--mutation", dest="vlm_mutation", default=None, metavar="NAME",
                    help="break the model first, to see which claims notice (mechanisms/models/mutations.py): "
                         "untrained, vision-reinit, token-permutation, early-attention-off")
    group.addoption("--seed", dest="vlm_seed", type=int, default=0,
                    help="seed for sample subsets, random controls and bootstrap intervals")


def _parse_model_paths(values: list[str]) -> dict[str | None, str]:
    paths: dict[str | None, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in PROFILES:
            paths[name] = path
        elif sep and not Path(value).exists():
            raise pytest.UsageError(f"--model-path {value}: unknown profile {name!r} "
                                    f"(known: {', '.join(PROFILES)})")
        else:
            paths[None] = value
    for name, path in paths.items():
        try:
            check_checkpoint_dir(path)
        except CheckpointError as err:
            raise pytest.UsageError(f"--model-path {path}: {err}") from err
    return paths


class ClaimReporter:
    """Collects test reports on the controller and writes one report per profile (a registered plugin)."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.entries: dict[str, dict] = {}
        self.started = time.time()
        self.reports: dict[str, dict] = {}
        self.workers: dict[str, dict] = {}
        self.total: int | None = None  # claims to run (for the progress lines)
        self.finished = 0
        self.spent: dict[str, float] = {}  # seconds in a claim's setup (model, dataset, probes) before its call

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        self.total = len(ids)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.total = len(session.items) or self.total

    def progress(self, entry: dict, seconds: float) -> None:
        """One line per finished claim (also under -n, where per-test output is hidden): verdict, claim,
        time, how many are done; nothing with -q."""
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is None or self.config.get_verbosity() < 0:
            return
        self.finished += 1
        from mechanisms.reports.report import MARKS

        done = f"{self.finished}/{self.total}" if self.total else str(self.finished)
        name = entry["nodeid"].split("::")[-1]
        terminal.write_line(f"  [{done}] {MARKS.get(entry['outcome'], entry['outcome']):<18} {name} "
                            f"({seconds:.0f} s, {time.time() - self.started:.0f} s into the run)")

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """xdist: a worker finished; keep the statistics it sent."""
        statistics = getattr(node, "workeroutput", {}).get(WORKER_STATISTICS)
        if statistics is not None:
            self.workers[node.workerinput["workerid"]] = statistics

    def entry(self, report: pytest.TestReport) -> dict | None:
        props = dict((k, v) for k, v in report.user_properties if k in (rec.PROFILE, rec.CLAIM))
        if rec.PROFILE not in props:
            return None
        claim = props.get(rec.CLAIM, {})
        return self.entries.setdefault(report.nodeid, {
            "nodeid": report.nodeid, "profile": props[rec.PROFILE], "title": claim.get("title", report.nodeid),
            "finding": claim.get("finding", ""), "reference": claim.get("reference", ""),
            "outcome": "unknown", "measurements": [], "expectations": [], "notes": [], "tables": [],
            "context": None})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.entry(report)
        if entry is None:
            return
        if report.when == "call" or (report.when == "setup" and not report.passed) or \
                (report.when == "teardown" and report.failed):
            entry["measurements"] = [v for k, v in report.user_properties if k == rec.MEASUREMENT]
            entry["expectations"] = [v for k, v in report.user_properties if k == rec.EXPECTATION]
            entry["notes"] = [v for k, v in report.user_properties if k == rec.NOTE]
            entry["tables"] = [v for k, v in report.user_properties if k == rec.TABLE]
            contexts = [v for k, v in report.user_properties if k == rec.CONTEXT]
            entry["context"] = contexts[-1] if contexts else None
            verdicts = [v for k, v in report.user_properties if k == rec.VERDICT]
            sampling = [v for k, v in report.user_properties if k == rec.SAMPLING]
            if verdicts:
                entry["verdict"] = verdicts[-1]
            if sampling:
                entry["sampling"] = sampling[-1]
            contradiction = next((v for k, v in report.user_properties if k == rec.CONTRADICTED), None)
            if contradiction:
                entry["paper_contradicts"] = contradiction
            if hasattr(report, "wasxfail") and contradiction:  # failed (xfail) or held (xpass) against the paper
                entry["outcome"] = "contradicted" if report.skipped else "passed"
                entry["reason"] = (f"the paper's own numbers contradict this claim for this model: {contradiction}"
                                   + ("" if report.skipped else " (it holds here nonetheless)"))
            elif report.skipped:
                entry["outcome"] = "skipped"
                entry["reason"] = _skip_reason(report)
            elif report.failed:
                entry["outcome"] = "failed" if report.when == "call" else "error"
                entry["reason"] = _failure_reason(report)
            else:
                entry["outcome"] = "passed"
            if entry.get("verdict") == rec.INCONCLUSIVE:  # whatever --inconclusive made of it for the exit status
                entry["outcome"] = "inconclusive"
                entry.setdefault("reason", "inconclusive: an interval straddles its threshold (counted as a pass)")
            entry["duration_s"] = round(report.duration, 3)
            if report.when == "call" or entry["outcome"] in ("skipped", "error"):
                self.progress(entry, self.spent.get(report.nodeid, 0.0) + report.duration)
        else:
            self.spent[report.nodeid] = self.spent.get(report.nodeid, 0.0) + report.duration  # fixtures' setup

    def pytest_sessionfinish(self) -> None:
        by_profile: dict[str, list[dict]] = {}
        for entry in self.entries.values():
            by_profile.setdefault(entry["profile"], []).append(entry)
        from mechanisms.reports.report import build_report, write_report

        report_dir = Path(self.config.getoption("vlm_report_dir"))
        for profile, entries in sorted(by_profile.items()):
            durations = {e["nodeid"]: e.pop("duration_s", None) for e in entries}
            workers = self.workers or {"main": self.config.stash[SESSION].statistics()}
            report = build_report(profile, entries, self.config.getoption("vlm_seed"),
                                  run={"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started)),
                                       "wall_s": round(time.time() - self.started, 1), "durations_s": durations,
                                       "workers": dict(sorted(workers.items()))})
            write_report(report_dir, report)
            self.reports[profile] = report

    def pytest_terminal_summary(self, terminalreporter) -> None:
        from mechanisms.reports.report import terminal_rows

        for profile, report in self.reports.items():
            terminalreporter.write_sep("=", f"effect sizes: {profile}")
            for row in terminal_rows(report):
                terminalreporter.write_line(row)
            note = (report.get("model") or {}).get("reference_images_note")
            if note:
                terminalreporter.write_line(f"note: {note}")
            terminalreporter.write_line(f"report: {Path(self.config.getoption('vlm_report_dir')) / profile / 'REPORT.md'}")


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def _failure_reason(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    return crash.message if crash is not None else str(report.longrepr)[-2000:]


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # xdist: share the cores instead of oversubscribing them (2 threads x n workers)
        import os

        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workerinput.get("workercount", 1))))
    for name, profile in PROFILES.items():
        config.addinivalue_line("markers", f"{name}: claims run on {profile.description}")
    config.stash[SESSION] = SuiteSession(_parse_model_paths(config.getoption("vlm_model_paths")))
    mutation = config.getoption("vlm_mutation")
    from mechanisms.models.mutations import MUTATIONS

    if mutation and mutation not in MUTATIONS:
        raise pytest.UsageError(f"--mutation {mutation}: unknown; choose from {', '.join(MUTATIONS)}")
    if not hasattr(config, "workerinput"):  # the controller (or a plain run) writes reports, never a worker
        _check_dataset(config)
        config.pluginmanager.register(ClaimReporter(config), "vlm-claim-reporter")


def _check_dataset(config: pytest.Config) -> None:
    """An explicit --dataset that cannot be read, or holds no usable object, stops the run before any claim
    with one line (instead of every claim measuring n = 0)."""
    spec = config.getoption("vlm_dataset")
    if not spec:
        return
    from mechanisms.data import DatasetError, resolve_dataset

    try:
        dataset = resolve_dataset(spec)
    except (DatasetError, OSError, ValueError) as err:
        raise pytest.UsageError(f"--dataset {spec}: {err}") from None
    if not dataset.samples:
        skipped = "; ".join(f"{reason} {count}" for reason, count in sorted(dataset.skipped.items())) or "nothing"
        raise pytest.UsageError(f"--dataset {spec}: 0 usable objects; skipped: {skipped}")
    config.stash[SESSION].datasets[spec] = dataset


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "profile" in metafunc.fixturenames:
        metafunc.parametrize("profile", [pytest.param(p, id=name, marks=getattr(pytest.mark, name))
                                         for name, p in PROFILES.items()])


def pytest_sessionfinish(session: pytest.Session) -> None:
    """xdist worker: send this process's statistics to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and SESSION in session.config.stash:
        workeroutput[WORKER_STATISTICS] = session.config.stash[SESSION].statistics()


def _worker_device(config: pytest.Config) -> str:
    """`cuda` under xdist pins worker gwK to GPU K mod the GPU count, so each worker loads onto its own."""
    device = config.getoption("vlm_device")
    workerinput = getattr(config, "workerinput", None)
    if device == "cuda" and workerinput is not None:
        import torch

        count = torch.cuda.device_count()
        if count > 1:
            return f"cuda:{int(workerinput['workerid'].removeprefix('gw')) % count}"
    return device


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    index, sep, total = value.partition("/")
    if not sep or not index.isdigit() or not total.isdigit() or not 1 <= int(index) <= int(total):
        raise pytest.UsageError(f"--shard {value}: expected I/N with 1 <= I <= N, e.g. 2/4")
    return int(index), int(total)


@pytest.hookimpl(trylast=True)  # after -m/-k selection, so shards split what would actually run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = _parse_shard(config.getoption("vlm_shard"))
    if shard is not None:  # deterministic: the same claims land in the same shard on every machine
        index, total = shard
        ordered = sorted(item.nodeid for item in items)
        mine = {nodeid for i, nodeid in enumerate(ordered) if i % total == index - 1}
        deselected = [item for item in items if item.nodeid not in mine]
        items[:] = [item for item in items if item.nodeid in mine]
        config.hook.pytest_deselected(items=deselected)
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or "profile" not in callspec.params:
            continue
        profile = callspec.params["profile"]
        item.user_properties.append((rec.PROFILE, profile.name))
        item.user_properties.append((rec.CLAIM, _describe_claim(item)))
        bound = profile.for_dataset(dataset_source(config, profile))
        contradiction = bound.paper_sections().get("contradicts", {}).get(getattr(item, "originalname", item.name))
        if contradiction:  # measured and reported like any claim, but its failure is what the paper's table says
            item.user_properties.append((rec.CONTRADICTED, contradiction))
            item.add_marker(pytest.mark.xfail(reason=f"contradicted by the paper's own numbers: {contradiction}",
                                              strict=False))


def dataset_source(config: pytest.Config, profile: Profile) -> str | None:
    """The recorded source of the run's dataset for this profile (which of the paper's tables apply):
    --dataset, else the profile's default. "coco" (the paper profiles' default) cannot be loaded here;
    its source is COCO by definition."""
    spec = config.getoption("vlm_dataset") or profile.default_dataset
    if spec == "coco":
        return "coco"
    from mechanisms.data import DatasetError, resolve_dataset

    datasets = config.stash[SESSION].datasets
    if spec not in datasets:
        try:
            datasets[spec] = resolve_dataset(spec)
        except (DatasetError, OSError, ValueError):
            return None  # the dataset fixture reports it
    return datasets[spec].source


def _describe_claim(item: pytest.Item) -> dict:
    doc = inspect.getdoc(getattr(item, "obj", None)) or ""
    lines = doc.splitlines()
    reference = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Paper:")), "")
    finding = "\n".join(ln for ln in lines if not ln.startswith("Paper:")).strip()
    first_paragraph = " ".join(doc.split("\n\n")[0].split()) if doc else item.name
    title = first_paragraph.split(". ")[0].rstrip(".")
    return {"title": title, "finding": finding, "reference": reference}


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    result = yield
    recorder = pyfuncitem.funcargs.get("claim")
    if isinstance(recorder, rec.ClaimRecorder):
        pyfuncitem.config.stash[SESSION].claims_run += 1
        verdict = recorder.verdict() if recorder.expectations else rec.DOES_NOT_HOLD
        pyfuncitem.user_properties.append((rec.VERDICT, verdict))
        if recorder.sampling:
            pyfuncitem.user_properties.append((rec.SAMPLING, recorder.sampling))
        message = recorder.failure_message()
        if message and verdict == rec.INCONCLUSIVE:
            mode = pyfuncitem.config.getoption("vlm_inconclusive")
            if mode == "skip":
                pytest.skip(message)
            if mode == "pass":
                return result
        if message:
            raise AssertionError(message)
    return result


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):
    """An inconclusive claim is its own category (as rerunfailures adds "rerun"): "I" in the progress line,
    "N inconclusive" in the summary. It still fails the run unless --inconclusive=pass|skip."""
    if report.when == "call" and (rec.VERDICT, rec.INCONCLUSIVE) in report.user_properties:
        return "inconclusive", "I", ("INCONCLUSIVE", {"yellow": True})
    return None


# ----- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def vlm(profile: Profile, request: pytest.FixtureRequest):
    """The model under test for this profile, loaded once per worker; skips when its weights are absent."""
    from mechanisms.models.adapters import FamilyNotSupported, load_adapter
    from mechanisms.tasks.model_under_test import VLM

    session = request.config.stash[SESSION]
    explicit = session.model_paths.get(profile.name, session.model_paths.get(None))
    device = _worker_device(request.config)
    profile = profile.for_dataset(dataset_source(request.config, profile))  # the paper's tables for this dataset
    key = (profile.name, explicit, device, profile.paper_dataset)
    if key not in session.models:
        try:
            checkpoint = resolve_checkpoint(profile, explicit)
            import torch

            dtype = getattr(torch, request.config.getoption("vlm_dtype") or profile.dtype)
            if dtype == torch.bfloat16 and not native_bf16(device):
                warnings.warn(f"{profile.name} runs in bfloat16 on {device}, which has no native bf16: torch emulates "
                              "it (~65x slower than float32 on an AVX2-only CPU); pass --dtype float32", stacklevel=1)
            system = request.config.getoption("vlm_system_prompt")
            adapter = load_adapter(profile.family, checkpoint, dtype, device,
                                   profile.system_prompt if system is None else (system or None),
                                   profile.processor)
            mutation = request.config.getoption("vlm_mutation")
            if mutation:
                from mechanisms.models.mutations import mutate

                mutate(adapter, mutation)
        except (CheckpointUnavailable, FamilyNotSupported) as err:
            session.models[key] = err
        else:
            from mechanisms.data import cache_root
            from mechanisms.models.mean_embedding import DEFAULT_REFERENCE
            from mechanisms.storage import ResultCache

            reference = request.config.getoption("vlm_reference_images") or DEFAULT_REFERENCE
            fingerprint = fingerprint_checkpoint(checkpoint) + (f"-{mutation}" if mutation else "")
            root = None if request.config.getoption("vlm_no_result_cache") else Path(
                request.config.getoption("vlm_result_cache") or cache_root() / "results")
            session.models[key] = VLM(profile, adapter, checkpoint, fingerprint, device, reference_images=reference,
                                      results=ResultCache(root, fingerprint), mutation=mutation)
    loaded = session.models[key]
    if isinstance(loaded, Exception):
        pytest.skip(str(loaded))
    return loaded


@pytest.fixture
def dataset(profile: Profile, request: pytest.FixtureRequest):
    """The evaluation set: --dataset, else the profile's default; loaded once per worker."""
    from mechanisms.data import resolve_dataset

    spec = request.config.getoption("vlm_dataset") or profile.default_dataset
    if spec == "coco":
        pytest.skip(f"{profile.name} is measured on COCO, which cannot be downloaded here: pass --dataset "
                    f"/path/to/dataset-folder (README: 'running on COCO'), or --dataset synthetic")
    datasets = request.config.stash[SESSION].datasets
    if spec not in datasets:
        datasets[spec] = resolve_dataset(spec)
    return datasets[spec]


@pytest.fixture
def claim(request: pytest.FixtureRequest, vlm, dataset) -> rec.ClaimRecorder:
    """Records a claim's measurements and expectations into its test report."""
    recorder = rec.ClaimRecorder(request.node.user_properties, request.config.getoption("vlm_seed"),
                                 request.config.getoption("vlm_max_samples"))
    request.node.user_properties.append((rec.CONTEXT, {"model": vlm.describe(), "dataset": dataset.describe()}))
    return recorder


@pytest.fixture
def probes(vlm, claim, request: pytest.FixtureRequest):
    """The positional-probe study of this model (§3.2), for every claim that reads it: the profile's probe
    images unless --probe-train / --probe-test say otherwise (extracted once, cached on disk)."""
    from mechanisms.experiments.probing import probe_study

    settings = vlm.profile.claims["probing"]
    train = request.config.getoption("vlm_probe_train") or settings["train_images"]
    test = request.config.getoption("vlm_probe_test") or settings["test_images"]
    budget = request.config.getoption("vlm_probe_disk_budget")
    tokens = request.config.getoption("vlm_probe_tokens")
    tokens = settings["train_tokens_per_image"] if tokens is None else tokens
    study = probe_study(vlm, train, test, settings["epochs"], settings["chunk_images"], claim.seed,
                        None if budget is None else int(budget * 1e9), tokens)
    stored = "all tokens" if not tokens else f"{tokens} seeded random tokens"
    claim.note("probe images", f"train {train} ({stored} per image and stage), test {test} (every token), "
                               f"{settings['epochs']} epochs")
    return study
