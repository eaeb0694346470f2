"""Speed and memory of FastFCN models beside their dilated (D8) baselines and beside mmsegmentation, in one run.

For each variant and input size the benchmark records parameters, GFLOPs (`torch.utils.flop_counter`, counted on the
meta device, so free), whole-image latency (warm-up, then the median of N), peak memory and achieved FLOP/s against
the machine's own measured matrix-multiply rate, for up to four implementations of the same weights:

- ``mmseg``: mmsegmentation 1.2.2's model (when installed), random weights from `mmseg_reference.randomize_`;
- ``plain``: ours with those weights converted (`conversion.convert_state_dict`), as `from_pretrained` gives it;
- ``optimized``: `optimize_for_inference` of it (BN folded, pooled branches fused before upsampling, channels_last);
- ``compiled``: the same with `torch.compile` (opt-in: it needs a C++ compiler on CPU and compiles during warm-up).

Whole-image latency is stride-8 logits plus the bilinear resize to the input size (mmseg's `encode_decode`).
Peak memory is the allocator's peak of live tensor bytes during one forward above what was live before it:
`torch.cuda.max_memory_allocated` on GPUs, the torch profiler's allocation events on the CPU (model weights and the
input are not counted). The claims are ratios (ours / mmseg, D8 / JPU), which are meaningful on a shared machine
where absolute times are noisy.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .optimize import optimize_for_inference, reuse_freed_cpu_memory
from .variants import create_model, get_variant

# Each JPU model beside the dilated baseline with the same head.
D8_BASELINES: dict[str, str] = {
    "fastfcn_r50_jpu_aspp": "deeplabv3_r50_d8",
    "fastfcn_r50_jpu_psp": "pspnet_r50_d8",
    "fastfcn_r50_jpu_enc": "encnet_r50_d8",
    "fastfcn_r18_jpu_aspp": "deeplabv3_r18_d8",
    "fastfcn_r18_jpu_psp": "pspnet_r18_d8",
    "fastfcn_r18_jpu_enc": "encnet_r18_d8",
}
DEFAULT_VARIANTS = ("fastfcn_r50_jpu_psp", "fastfcn_r50_jpu_aspp", "fastfcn_r50_jpu_enc")
IMPLEMENTATIONS = ("mmseg", "plain", "optimized", "compiled")
DEFAULT_IMPLEMENTATIONS = ("mmseg", "plain", "optimized")  # "compiled" needs a C++ compiler and minutes to compile
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LIBRARIES = ("torch", "torchvision", "timm", "transformers", "mmsegmentation", "mmengine", "mmcv-lite", "onnxruntime")


# --------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls (oneDNN/cuDNN pick kernels then)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def measure_peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensors allocated by `fn` above what was live before it (the result counts until it is freed).

    CUDA: the caching allocator's `max_memory_allocated`. CPU: the torch profiler's allocation and free events, in
    time order (the same quantity; RSS would also count allocator caching and other threads).
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (event for event in prof.profiler.kineto_results.events() if event.name() == "[memory]"),
        key=lambda event: event.start_ns(),
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward (a multiply-add counts 2), counted on a meta-device copy: no compute, no memory."""
    meta_model = copy.deepcopy(model).to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(torch.empty(*input_shape, device="meta"))
    return int(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """The machine's own dense matrix-multiply rate in FLOP/s (best of `repeats`): the ceiling for convolutions."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = time_call(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * size**3 / min(times)


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model and cores, memory, GPU, library versions and the load average: what a reader needs to compare."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        memory_gib = round(int(meminfo[0].split()[1]) / 2**20, 1)
    versions = {}
    for library in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[library] = importlib.metadata.version(library)
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------------------------------------------
# Models: ours and mmsegmentation's, with the same weights
# --------------------------------------------------------------------------------------------------------------


def mmseg_available() -> bool:
    try:
        from .mmseg_reference import import_mmseg

        import_mmseg()
    except ImportError:
        return False
    return True


def build_models(
    variant: str, implementations: Sequence[str], seed: int = 0, device: torch.device | str = "cpu"
) -> dict[str, nn.Module]:
    """The requested implementations of `variant` on `device`, in eval mode, all with the same (random) weights.

    With mmseg available and the variant mapped to an mmseg config, mmseg's model is randomised and its state dict
    converted into ours; otherwise ours is seeded-random and there is no "mmseg" entry.
    """
    torch.manual_seed(seed)
    ours = create_model(variant).eval()
    models: dict[str, nn.Module] = {}
    mmseg_config = get_variant(variant).mmseg_config
    if mmseg_config and mmseg_available():
        from .conversion import convert_state_dict
        from .mmseg_reference import build_model, randomize_

        reference = randomize_(build_model(mmseg_config), seed=seed)
        ours.load_state_dict(convert_state_dict(reference.state_dict()), strict=True)
        if "mmseg" in implementations:
            models["mmseg"] = reference.to(device)
    ours.to(device)  # before optimising: some rewrites depend on the device
    if "plain" in implementations:
        models["plain"] = ours
    if "optimized" in implementations:
        models["optimized"] = optimize_for_inference(ours)
    if "compiled" in implementations:
        models["compiled"] = optimize_for_inference(ours, compile=True)  # compiles on the warm-up call
    return models


def whole_image_fn(implementation: str, model: nn.Module, pixel_values: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A call giving whole-image logits at the input size; the same work on both sides."""
    size = pixel_values.shape[2:]
    if implementation == "mmseg":
        metas = [{"img_shape": tuple(size), "ori_shape": tuple(size), "pad_shape": tuple(size)}] * len(pixel_values)
        return lambda: model.encode_decode(pixel_values, metas)
    if implementation in ("optimized", "compiled"):
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    align_corners = getattr(getattr(model, "config", None), "align_corners", False)
    return lambda: F.interpolate(model(pixel_values).logits, size=size, mode="bilinear", align_corners=align_corners)


# --------------------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BenchmarkSettings:
    variants: Sequence[str] = DEFAULT_VARIANTS
    sizes: Sequence[tuple[int, int]] = ((512, 1024), (1024, 2048))
    implementations: Sequence[str] = DEFAULT_IMPLEMENTATIONS
    precisions: Sequence[str] = ("fp32",)
    baselines: bool = True
    warmup: int = 1
    repeats: int = 3
    memory: bool = True
    inference: bool = True
    train: bool = False
    train_size: tuple[int, int] = (512, 1024)
    train_batch: int = 2
    train_repeats: int = 1
    profile: bool = False
    device: str = "auto"
    seed: int = 0
    reuse_freed_memory: bool = True  # `reuse_freed_cpu_memory()` first, as predict and evaluate do


@dataclass
class Row:
    variant: str
    role: str  # "jpu" or "d8"
    implementation: str
    precision: str
    height: int
    width: int
    params_m: float
    gflops: float
    latency_s: float
    latencies_s: list[float]
    achieved_gflops_per_s: float
    fraction_of_matmul_rate: float
    peak_memory_mib: float | None = None
    max_abs_diff_vs_mmseg: float | None = None
    argmax_agreement_vs_mmseg: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _log(message: str) -> None:
    print(message, flush=True)


def benchmark_inference(settings: BenchmarkSettings, device: torch.device, rates: dict[str, float]) -> list[Row]:
    """One row per (variant, baseline, implementation, precision, size); mmseg runs in fp32 only (the reference).

    A JPU variant, its D8 baseline and all their implementations are timed round-robin (one call of each in turn,
    `repeats` times, after `warmup` calls each), so that load from other processes falls on all of them alike.
    """
    rows = []
    for variant in settings.variants:
        group: list[tuple[str, str, str, nn.Module]] = []  # (name, role, implementation, model)
        names = [(variant, "jpu" if variant in D8_BASELINES else "other")]
        if settings.baselines and variant in D8_BASELINES:
            names.append((D8_BASELINES[variant], "d8"))
        flop_models = {}
        for name, role in names:
            # D8 baselines run ours only: the claim about them (speed-up per FLOP ratio) is ours against ours.
            implementations = [i for i in settings.implementations if role != "d8" or i != "mmseg"]
            for implementation, model in build_models(name, implementations, settings.seed, device).items():
                group.append((name, role, implementation, model))
            flop_models[name] = create_model(name).eval()  # FLOPs and parameters do not depend on the weights
        for height, width in settings.sizes:
            generator = torch.Generator().manual_seed(settings.seed)
            pixel_values = torch.randn(1, 3, height, width, generator=generator).to(device)
            flops = {name: count_flops(model, (1, 3, height, width)) for name, model in flop_models.items()}
            for precision in settings.precisions:
                calls = {}
                for name, role, implementation, model in group:
                    if implementation == "mmseg" and precision != "fp32":
                        continue
                    fn = whole_image_fn(implementation, model, pixel_values)

                    def call(fn: Callable[[], torch.Tensor] = fn, precision: str = precision) -> torch.Tensor:
                        with torch.inference_mode(), _autocast(device, precision):
                            return fn()

                    calls[(name, role, implementation)] = call
                _log(f"  {variant} group, {precision}, {height}x{width}: {len(calls)} models round-robin ...")
                for call in calls.values():
                    time_call(call, device, warmup=settings.warmup, repeats=0)
                times: dict[tuple[str, str, str], list[float]] = {key: [] for key in calls}
                for _ in range(settings.repeats):
                    for key, call in calls.items():
                        times[key] += time_call(call, device, warmup=0, repeats=1)
                reference = None
                for (name, role, implementation), call in calls.items():
                    latency = statistics.median(times[(name, role, implementation)])
                    params = sum(p.numel() for p in flop_models[name].parameters()) / 1e6
                    row = Row(name, role, implementation, precision, height, width, round(params, 2),
                              round(flops[name] / 1e9, 1), latency, times[(name, role, implementation)],
                              flops[name] / latency / 1e9, flops[name] / latency / rates[precision])  # fmt: skip
                    outputs: list[torch.Tensor] = []
                    if settings.memory:  # this pass also gives the logits compared below
                        row.peak_memory_mib = measure_peak_memory(lambda: outputs.append(call()), device) / 2**20
                    logits = (outputs.pop() if outputs else call()).float()
                    if implementation == "mmseg":
                        reference = logits
                    elif reference is not None and role != "d8":
                        row.max_abs_diff_vs_mmseg = (logits - reference).abs().max().item()
                        row.argmax_agreement_vs_mmseg = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
                    rows.append(row)
                    memory = f"{row.peak_memory_mib:.0f} MiB" if row.peak_memory_mib is not None else ""
                    _log(f"    {name} {implementation}: {latency:.3f} s {memory}")
        del group
    return rows


def profile_modules(
    model: nn.Module, pixel_values: torch.Tensor, device: torch.device, depth: int = 2, repeats: int = 3
) -> list[dict[str, Any]]:
    """Median seconds per call of every submodule down to `depth` levels (`backbone`, `neck.dilation_layers`, ...).

    Forward hooks time each module's whole call; nested rows overlap (a parent includes its children), and `share`
    is of the whole forward. One warm-up call first.
    """
    starts: dict[str, float] = {}
    times: dict[str, list[float]] = {}

    def before(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            synchronize(device)
            starts[name] = time.perf_counter()

        return hook

    def after(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            synchronize(device)
            times.setdefault(name, []).append(time.perf_counter() - starts[name])

        return hook

    handles = []
    for name, module in model.named_modules():
        if name and name.count(".") < depth:
            handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
    try:
        with torch.inference_mode():
            model(pixel_values)
            times.clear()
            total = time_call(lambda: model(pixel_values), device, warmup=0, repeats=repeats)
    finally:
        for handle in handles:
            handle.remove()
    forward = statistics.median(total)
    modules = dict(model.named_modules())
    rows = [{"module": "(forward)", "type": type(model).__name__, "seconds": forward, "share": 1.0}]
    for name, values in times.items():  # call order: the data path, top to bottom
        seconds = statistics.median(values) * len(values) / len(total)  # a module called twice counts twice
        row = {"module": name, "type": type(modules[name]).__name__, "seconds": seconds, "share": seconds / forward}
        rows.append(row)
    return rows


def benchmark_profiles(settings: BenchmarkSettings, device: torch.device) -> list[dict[str, Any]]:
    """`profile_modules` of each variant and its D8 baseline (ours, optimized if asked for), at the first size."""
    implementation = "optimized" if "optimized" in settings.implementations else "plain"
    height, width = settings.sizes[0]
    pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(settings.seed)).to(device)
    if implementation == "optimized":
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    profiles = []
    for variant in settings.variants:
        names = [variant] + ([D8_BASELINES[variant]] if settings.baselines and variant in D8_BASELINES else [])
        for name in names:
            model = build_models(name, (implementation,), settings.seed, device)[implementation]  # the timed weights
            _log(f"  profiling {name} ({implementation}, {height}x{width}) ...")
            modules = profile_modules(model, pixel_values, device, repeats=settings.repeats)
            profiles.append({"variant": name, "implementation": implementation, "size": f"{height}x{width}",
                             "modules": modules})  # fmt: skip
    return profiles


def benchmark_training(settings: BenchmarkSettings, device: torch.device) -> list[dict[str, Any]]:
    """Time and peak memory of one SGD step (forward, loss, backward, update) at `train_size`, batch `train_batch`."""
    import numpy as np

    results = []
    height, width = settings.train_size
    batch = settings.train_batch
    rng = np.random.default_rng(settings.seed)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(batch)]
    labels = [rng.integers(0, 19, (height, width)).astype(np.int64) for _ in range(batch)]
    for variant in settings.variants:
        models = build_models(variant, ("mmseg", "plain"), seed=settings.seed)
        for implementation, model in models.items():
            model.to(device).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            if implementation == "mmseg":
                from .mmseg_reference import training_loss

                def loss_fn(model: nn.Module = model) -> torch.Tensor:
                    return training_loss(model, images, labels)["loss"]
            else:
                mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1) * 255
                std = torch.tensor(model.config.image_std).view(1, 3, 1, 1) * 255
                pixel_values = ((torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() - mean) / std).to(
                    device
                )
                label_tensor = torch.from_numpy(np.stack(labels)).to(device)

                def loss_fn(model: nn.Module = model) -> torch.Tensor:
                    model.train()
                    return model(pixel_values, labels=label_tensor).loss

            def step(loss_fn: Callable[[], torch.Tensor] = loss_fn, optimizer: torch.optim.Optimizer = optimizer):
                optimizer.zero_grad(set_to_none=True)
                loss_fn().backward()
                optimizer.step()

            _log(f"  train step {variant} {implementation} {batch}x{height}x{width} ...")
            times = time_call(step, device, warmup=1, repeats=settings.train_repeats)
            peak = measure_peak_memory(step, device) / 2**20 if settings.memory else None
            results.append(
                {
                    "variant": variant,
                    "implementation": implementation,
                    "batch": batch,
                    "height": height,
                    "width": width,
                    "step_s": statistics.median(times),
                    "steps_s": times,
                    "peak_memory_mib": peak,
                }
            )
            _log(f"    {statistics.median(times):.2f} s  {peak or 0:.0f} MiB")
        del models
    return results


def summarize(rows: list[Row], training: list[dict[str, Any]]) -> dict[str, Any]:
    """The ratios the claims are made of: ours / mmseg (latency, memory), and JPU vs D8 speed-up per FLOP ratio."""
    by_key = {(r.variant, r.implementation, r.precision, r.height, r.width): r for r in rows}
    versus_mmseg, versus_d8 = [], []
    for r in rows:
        mmseg = by_key.get((r.variant, "mmseg", "fp32", r.height, r.width))
        if r.implementation != "mmseg" and mmseg is not None:
            entry = {
                "variant": r.variant,
                "implementation": r.implementation,
                "precision": r.precision,
                "size": f"{r.height}x{r.width}",
                "latency_ratio": r.latency_s / mmseg.latency_s,
                "throughput_ratio": mmseg.latency_s / r.latency_s,
                "argmax_agreement": r.argmax_agreement_vs_mmseg,
                "max_abs_diff": r.max_abs_diff_vs_mmseg,
            }
            if r.peak_memory_mib is not None and mmseg.peak_memory_mib:
                entry["peak_memory_ratio"] = r.peak_memory_mib / mmseg.peak_memory_mib
            versus_mmseg.append(entry)
        if r.role == "jpu" and r.variant in D8_BASELINES:
            d8 = by_key.get((D8_BASELINES[r.variant], r.implementation, r.precision, r.height, r.width))
            if d8 is not None:
                speedup, flop_ratio = d8.latency_s / r.latency_s, d8.gflops / r.gflops
                versus_d8.append(
                    {
                        "variant": r.variant,
                        "baseline": d8.variant,
                        "implementation": r.implementation,
                        "precision": r.precision,
                        "size": f"{r.height}x{r.width}",
                        "speedup": speedup,
                        "flop_ratio": flop_ratio,
                        "speedup_per_flop_ratio": speedup / flop_ratio,
                    }
                )
    train_ratios = []
    for t in training:
        mmseg = next((m for m in training if m["variant"] == t["variant"] and m["implementation"] == "mmseg"), None)
        if t["implementation"] != "mmseg" and mmseg is not None:
            entry = {"variant": t["variant"], "step_time_ratio": t["step_s"] / mmseg["step_s"]}
            if t["peak_memory_mib"] and mmseg["peak_memory_mib"]:
                entry["peak_memory_ratio"] = t["peak_memory_mib"] / mmseg["peak_memory_mib"]
            train_ratios.append(entry)
    return {"versus_mmseg": versus_mmseg, "jpu_versus_d8": versus_d8, "training_versus_mmseg": train_ratios}


def run_benchmark(settings: BenchmarkSettings) -> dict[str, Any]:
    """Run everything `settings` asks for; returns the JSON-ready result (machine, rows, training, ratios)."""
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if settings.device == "auto" else settings.device
    )
    implementations = list(settings.implementations)
    if "mmseg" in implementations and not mmseg_available():
        _log("mmsegmentation is not installed: benchmarking ours only (pip install 'fastfcn-hub[parity]').")
        implementations.remove("mmseg")
        settings = BenchmarkSettings(**{**asdict(settings), "implementations": tuple(implementations)})
    machine = machine_info(device)
    machine["malloc_keeps_freed_memory"] = settings.reuse_freed_memory and reuse_freed_cpu_memory()
    _log(
        f"Machine: {machine['cpu']} ({machine['logical_cores']} cores), {machine['gpu'] or 'no GPU'}; "
        f"load average {machine['load_average_start']}"
    )
    rates = {p: matmul_rate(device, PRECISIONS[p] or torch.float32) for p in settings.precisions}
    machine["matmul_gflops_per_s"] = {p: rate / 1e9 for p, rate in rates.items()}
    rows = benchmark_inference(settings, device, rates) if settings.inference else []
    training = benchmark_training(settings, device) if settings.train else []
    profiles = benchmark_profiles(settings, device) if settings.profile else []
    machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "settings": asdict(settings),
        "machine": machine,
        "inference": [asdict(row) for row in rows],
        "training": training,
        "profiles": profiles,
        "ratios": summarize(rows, training),
    }


def format_table(result: dict[str, Any]) -> str:
    """The result as fixed-width text tables (inference rows, then the ratios)."""
    lines = []
    header = (
        f"{'variant':<22} {'impl':<9} {'prec':<4} {'size':>9} {'Mparams':>7} {'GFLOPs':>7} {'latency s':>9} "
        f"{'GFLOP/s':>7} {'%mm':>4} {'peak MiB':>8} {'argmax=':>7}"
    )
    lines += [header, "-" * len(header)]
    for r in result["inference"]:
        agree = f"{100 * r['argmax_agreement_vs_mmseg']:.2f}" if r["argmax_agreement_vs_mmseg"] is not None else "-"
        memory = f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] is not None else "-"
        lines.append(
            f"{r['variant']:<22} {r['implementation']:<9} {r['precision']:<4} "
            f"{str(r['height']) + 'x' + str(r['width']):>9} {r['params_m']:>7.2f} {r['gflops']:>7.0f} "
            f"{r['latency_s']:>9.3f} {r['achieved_gflops_per_s']:>7.1f} "
            f"{100 * r['fraction_of_matmul_rate']:>4.0f} {memory:>8} {agree:>7}"
        )
    ratios = result["ratios"]
    if ratios["versus_mmseg"]:
        lines += ["", f"{'ours / mmseg':<22} {'impl':<9} {'prec':<4} {'size':>9} {'latency':>8} {'memory':>7}"]
        for e in ratios["versus_mmseg"]:
            memory = f"{e['peak_memory_ratio']:.3f}" if "peak_memory_ratio" in e else "-"
            lines.append(
                f"{e['variant']:<22} {e['implementation']:<9} {e['precision']:<4} {e['size']:>9} "
                f"{e['latency_ratio']:>8.3f} {memory:>7}"
            )
    if ratios["jpu_versus_d8"]:
        lines += [
            "",
            f"{'JPU vs D8':<22} {'impl':<9} {'prec':<4} {'size':>9} {'speedup':>8} {'FLOPx':>6} {'ratio':>6}",
        ]
        for e in ratios["jpu_versus_d8"]:
            lines.append(
                f"{e['variant']:<22} {e['implementation']:<9} {e['precision']:<4} {e['size']:>9} "
                f"{e['speedup']:>8.3f} {e['flop_ratio']:>6.3f} {e['speedup_per_flop_ratio']:>6.3f}"
            )
    if result["training"]:
        lines += ["", f"{'training step':<22} {'impl':<9} {'batch x size':>14} {'step s':>8} {'peak MiB':>9}"]
        for t in result["training"]:
            memory = f"{t['peak_memory_mib']:.0f}" if t["peak_memory_mib"] is not None else "-"
            lines.append(
                f"{t['variant']:<22} {t['implementation']:<9} "
                f"{str(t['batch']) + 'x' + str(t['height']) + 'x' + str(t['width']):>14} "
                f"{t['step_s']:>8.2f} {memory:>9}"
            )
    for profile in result.get("profiles", []):
        lines += ["", f"time by module: {profile['variant']} ({profile['implementation']}, {profile['size']})"]
        for m in profile["modules"]:
            indent = "  " * (m["module"].count(".") + (m["module"] != "(forward)"))
            lines.append(
                f"  {indent + m['module']:<40} {m['type']:<36} {m['seconds']:>8.3f} s {100 * m['share']:>5.1f}%"
            )
    machine = result["machine"]
    rate = ", ".join(f"{p} {v:.0f}" for p, v in machine["matmul_gflops_per_s"].items())
    lines += [
        "",
        f"machine: {machine['cpu']}, {machine['logical_cores']} cores, {machine['gpu'] or 'no GPU'}; "
        f"matmul GFLOP/s: {rate}; load average {machine['load_average_start']} -> "
        f"{machine['load_average_end']}",
    ]
    return "\n".join(lines)


def save_result(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


__all__ = [
    "BenchmarkSettings",
    "D8_BASELINES",
    "build_models",
    "count_flops",
    "format_table",
    "machine_info",
    "matmul_rate",
    "measure_peak_memory",
    "profile_modules",
    "run_benchmark",
    "save_result",
    "time_call",
]
