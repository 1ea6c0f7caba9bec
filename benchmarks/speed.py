"""Speed benchmark of the few-shot segmenters: inference per episode, training step, peak memory.

For each registered model (``fss.models.MODELS``) and masking (FM, HM) it times

* ``infer_1shot`` / ``infer_5shot``: one episode through ``predict_mask`` (inference mode, k-shot vote);
* ``train_step``: forward + cross-entropy + backward + Adam step on a batch of 1-shot episodes;

as the median of ``--repeats`` runs after ``--warmup`` untimed ones. The configurations are
interleaved (FM, HM, FM, HM, ...) inside every repeat, so a machine that slows down during the run
slows all of them alike. It prints a table with HM's cost relative to FM side by side and writes
everything (raw times included) to ``--out`` as JSON.

On a GPU it uses CUDA events with synchronisation; on CPU the wall clock (``time.perf_counter``)
or the process time (``--clock process``). Peak memory is the CUDA allocator's peak on a GPU and,
on CPU, the peak of the allocations ``torch.profiler`` records (one extra, profiled run).

Examples::

    python benchmarks/speed.py --out results.json                       # 400 px, ResNet-50, all models
    python benchmarks/speed.py --quick --out quick.json                 # small CPU run (~minutes)
    python benchmarks/speed.py --models hsnet --bf16 --out bf16.json    # GPU, bf16 autocast
    git worktree add /tmp/base <commit>                                 # before / after a change:
    python benchmarks/speed.py --baseline /tmp/base --out after.json    # both versions, alternating

:func:`time_interleaved` and :func:`make_episode` are importable, e.g. to time another implementation
(the public reference code) in the same process, alternating with ours.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from fss.models import MODELS, build_model
from fss.models.base import FewShotSegmenter

MODEL_NAMES = tuple(MODELS)
#: the package name another checkout's ``fss`` is imported under (``--baseline``)
BASELINE = "fss_baseline"
MASKINGS = ("fm", "hm")


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device, clock: str = "wall") -> float:
    """Seconds taken by ``fn()``: CUDA events around it on a GPU, else the ``clock``.

    ``clock="process"`` (CPU only) counts the CPU time of this process instead of the wall clock:
    on a machine shared with other jobs it does not count the time spent waiting for a core, so
    single-thread timings stay comparable (with several threads it adds up their times).
    """
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    timer = {"wall": time.perf_counter, "process": time.process_time}[clock]
    start_s = timer()
    fn()
    return timer() - start_s


def time_interleaved(
    cases: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int = 5,
    warmup: int = 1,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Run every case ``warmup`` times, then ``repeats`` rounds of all cases in turn; seconds per run.

    Interleaving keeps slow phases of a shared machine from favouring whichever case ran last.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(time_once(fn, device, clock))
    return times


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by PyTorch during ``fn()``, above what was allocated before.

    On a GPU, the CUDA allocator's peak statistic. On a CPU, where PyTorch keeps no such
    statistic, the running total of the allocations and frees that ``torch.profiler`` records
    (``profile_memory=True``), in the order the operators start: exact for the tensors PyTorch
    allocates, blind to other memory (Python objects, oneDNN scratch buffers).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    running = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


def make_episode(
    batch: int, shots: int, size: int, device: torch.device, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random normalised images with a box mask: query [B,3,S,S], supports [B,K,3,S,S], masks [B,K,S,S], target [B,S,S]."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, 3, size, size, generator=gen)
    supports = torch.randn(batch, shots, 3, size, size, generator=gen)
    masks = torch.zeros(batch, shots, size, size)
    masks[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    target = torch.zeros(batch, size, size, dtype=torch.long)
    target[:, size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 1
    return query.to(device), supports.to(device), masks.to(device), target.to(device)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``bf16``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def inference_fn(model: FewShotSegmenter, episode: tuple[Tensor, ...], bf16: bool) -> Callable[[], Tensor]:
    """One call of ``predict_mask`` (inference mode, vote rule) on ``episode``."""
    query, supports, masks, _ = episode
    device = query.device

    def run() -> Tensor:
        with autocast(device, bf16):
            return model.predict_mask(query, supports, masks)

    return run


def train_step_fn(model: FewShotSegmenter, episode: tuple[Tensor, ...], bf16: bool) -> Callable[[], Tensor]:
    """One optimisation step (forward, cross-entropy, backward, Adam on the learner) on ``episode``."""
    query, supports, masks, target = episode
    optimizer = torch.optim.Adam(model.learner.parameters(), lr=1e-3)
    device = query.device

    def run() -> Tensor:
        model.train()
        with autocast(device, bf16):
            logits = model(query, supports, masks)
            loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.eval()
        return loss.detach()

    return run


def build(
    name: str,
    masking: str,
    backbone: str,
    device: torch.device,
    vat_feature_size: int | None,
    builder: Callable[..., FewShotSegmenter] = build_model,
):
    """A random-init model (no downloads) in eval mode on ``device`` (``builder``: another fss's)."""
    torch.manual_seed(0)
    kwargs = {"backbone": backbone, "masking": masking, "weights": None}
    if name == "vat" and vat_feature_size is not None:
        kwargs["feature_size"] = vat_feature_size
    return builder(name, **kwargs).to(device).eval()


@contextlib.contextmanager
def temporary_package(name: str) -> Iterator[Path]:
    """A directory on ``sys.path`` in which to assemble package ``name``; on exit the directory,
    its ``sys.path`` entry and the package's modules are gone (``--baseline``, reference.py)."""
    with tempfile.TemporaryDirectory() as workdir:
        sys.path.insert(0, workdir)
        try:
            yield Path(workdir) / name
        finally:
            sys.path.remove(workdir)
            for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
                del sys.modules[module]


def write_results(args: argparse.Namespace, payload: dict) -> dict:
    """``{"settings": the arguments, **payload}``, written as JSON to ``args.out`` when given."""
    out = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, **payload}
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")
    return out


@contextlib.contextmanager
def baseline_package(checkout: Path) -> Iterator[ModuleType]:
    """The ``fss`` package of another checkout (e.g. ``git worktree add /tmp/base <commit>``), imported.

    It is copied to a temporary ``fss_baseline`` package (imports rewritten) so that both versions
    live in this process and can be timed alternately (``speed.py`` and ``data_speed.py --baseline``).
    """
    source = Path(checkout) / "fss"
    if not (source / "__init__.py").is_file():
        raise SystemExit(f"--baseline {checkout}: no fss package there; pass a checkout of this repository")
    with temporary_package(BASELINE) as package:
        shutil.copytree(source, package)
        for path in package.rglob("*.py"):
            path.write_text(re.sub(r"\b(from|import)\s+fss\b", rf"\1 {BASELINE}", path.read_text()))
        yield importlib.import_module(BASELINE)


@contextlib.contextmanager
def baseline_builder(checkout: Path) -> Iterator[Callable[..., FewShotSegmenter]]:
    """``build_model`` of another fss checkout (see :func:`baseline_package`)."""
    if not (Path(checkout) / "fss" / "models" / "__init__.py").is_file():
        raise SystemExit(
            f"--baseline {checkout}: no fss/models package there; pass a checkout of this repository"
        )
    with baseline_package(checkout):
        yield importlib.import_module(f"{BASELINE}.models").build_model


def benchmark_model(
    name: str,
    args: argparse.Namespace,
    device: torch.device,
    baseline: Callable[..., FewShotSegmenter] | None = None,
) -> dict[str, dict]:
    """All measurements of one model with each masking; ``{masking: {measure: {...}}}``.

    With ``baseline`` (another checkout's ``build_model``), ``baseline_<masking>`` entries are
    timed too, interleaved with ours.
    """
    models = {m: build(name, m, args.backbone, device, args.vat_feature_size) for m in args.maskings}
    if baseline is not None:
        try:
            for m in args.maskings:
                models[f"baseline_{m}"] = build(
                    name, m, args.backbone, device, args.vat_feature_size, baseline
                )
        except ValueError as err:  # a model the baseline does not have
            print(f"  {name}: no baseline ({err})")
    episodes = {k: make_episode(1, k, args.img_size, device) for k in args.shots}
    train_episode = make_episode(args.train_batch, 1, args.img_size, device, seed=1)
    measures: dict[str, dict[str, Callable[[], object]]] = {}
    for k in args.shots:
        measures[f"infer_{k}shot"] = {m: inference_fn(models[m], episodes[k], args.bf16) for m in models}
    if not args.no_train:
        measures["train_step"] = {m: train_step_fn(models[m], train_episode, args.bf16) for m in models}
    results: dict[str, dict] = {m: {} for m in models}
    for measure, cases in measures.items():
        times = time_interleaved(cases, device, repeats=args.repeats, warmup=args.warmup, clock=args.clock)
        for masking, fn in cases.items():
            results[masking][measure] = {
                "median_s": statistics.median(times[masking]),
                "times_s": times[masking],
                "peak_mem_bytes": peak_memory(fn, device),
            }
        print(
            f"  {name} {measure}: " + ", ".join(f"{m} {statistics.median(t):.4f}s" for m, t in times.items())
        )
    return results


def report(results: dict[str, dict]) -> str:
    """The table: median seconds per measure and masking, HM / FM side by side, peak memory (MiB)."""
    lines = [
        f"{'model':<7}{'measure':<13}"
        + "".join(f"{m:>11}" for m in MASKINGS)
        + f"{'hm/fm':>8}{'mem fm/hm MiB':>18}"
    ]
    for name, per_masking in results.items():
        measures = next(iter(per_masking.values())).keys()
        for measure in measures:
            row = f"{name:<7}{measure:<13}"
            medians = {}
            for m in MASKINGS:
                entry = per_masking.get(m, {}).get(measure)
                medians[m] = entry["median_s"] if entry else None
                row += f"{medians[m]:>10.4f}s" if entry else f"{'-':>11}"
            ratio = medians["hm"] / medians["fm"] if medians.get("fm") and medians.get("hm") else None
            row += f"{ratio:>8.2f}" if ratio else f"{'-':>8}"
            mems = [per_masking.get(m, {}).get(measure, {}).get("peak_mem_bytes") for m in MASKINGS]
            row += f"{'/'.join('-' if b is None else f'{b / 2**20:.0f}' for b in mems):>18}"
            lines.append(row)
    return "\n".join(lines)


def baseline_report(results: dict[str, dict]) -> str:
    """Baseline against ours: median seconds and the speed-up (baseline / ours) per measure and masking."""
    lines = [f"{'model':<7}{'measure':<13}{'masking':<9}{'baseline':>10}{'ours':>10}{'speed-up':>10}"]
    for name, per_masking in results.items():
        for masking in MASKINGS:
            ours, base = per_masking.get(masking), per_masking.get(f"baseline_{masking}")
            if not ours or not base:
                continue
            for measure, entry in ours.items():
                b, o = base[measure]["median_s"], entry["median_s"]
                lines.append(f"{name:<7}{measure:<13}{masking:<9}{b:>9.4f}s{o:>9.4f}s{b / o:>9.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--maskings", nargs="+", default=list(MASKINGS), choices=MASKINGS)
    parser.add_argument("--img-size", type=int, default=400, help="square image side (default 400)")
    parser.add_argument("--backbone", default="resnet50", help="resnet50 | resnet101 | resnet18 | resnet34")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5], help="k of the inference episodes")
    parser.add_argument("--train-batch", type=int, default=2, help="1-shot episodes per training step")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per configuration first")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="CPU timer: wall clock, or this process's CPU time (steadier on a shared machine with --threads 1)",
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument(
        "--vat-feature-size", type=int, default=None, help="VAT's learner feature size (default: the model's)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small CPU run: 128 px, 3 repeats, training batch 1, VAT feature size 8 (unless given)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout of this repository (e.g. a git worktree of an older commit) to time alternately",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = parser.parse_args([])
        args.img_size = 128 if args.img_size == defaults.img_size else args.img_size
        args.repeats = 3 if args.repeats == defaults.repeats else args.repeats
        args.train_batch = 1 if args.train_batch == defaults.train_batch else args.train_batch
        args.vat_feature_size = args.vat_feature_size or 8
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.backbone} at {args.img_size} px, bf16 {args.bf16}, repeats {args.repeats}, clock {args.clock}"
    )
    with contextlib.ExitStack() as stack:
        baseline = stack.enter_context(baseline_builder(args.baseline)) if args.baseline else None
        results = {name: benchmark_model(name, args, device, baseline) for name in args.models}
    print(report(results))
    if args.baseline:
        print(baseline_report(results))
    environment = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return write_results(args, {"environment": environment, "results": results})


if __name__ == "__main__":
    main()
