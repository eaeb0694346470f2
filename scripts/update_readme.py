"""Regenerate the README sections that come from code and data. `--check` fails if any is stale.

Each generated section sits between `<!-- NAME:start -->` and `<!-- NAME:end -->`:

- `variants`: the variant table (`fastfcn_hub.variants.variant_table_markdown`);
- `pretrained`: the released checkpoints with their hub repos (`fastfcn_hub.model_cards.pretrained_table_markdown`);
- `benchmark:FILE`: the tables of `benchmarks/results/FILE.json` as written by `scripts/benchmark.py --output`
  (inference rows, ours/mmseg and JPU/D8 ratios, training steps, the machine);
- `backbones`: the non-ResNet backbone table, from `benchmarks/results/backbones.json` and the variant table.

After re-running a benchmark into its JSON file, `python scripts/update_readme.py` rewrites the matching tables; the
prose around them (the targets, where the time goes) is written by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastfcn_hub.model_cards import pretrained_table_markdown
from fastfcn_hub.variants import get_variant, variant_config, variant_table_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {"cityscapes": "Cityscapes", "ade20k": "ADE20K"}
SECTION = re.compile(r"(<!-- ([\w.:-]+):start -->\n).*?(<!-- \2:end -->)", re.S)


Column = tuple[str, bool, Callable[[Any], str]]  # header, right-aligned, cell of one entry


def _table(columns: Sequence[Column], entries: Sequence[Any]) -> str:
    lines = ["| " + " | ".join(header for header, _, _ in columns) + " |"]
    lines.append("|" + "|".join("---:" if right else "---" for _, right, _ in columns) + "|")
    lines += ["| " + " | ".join(cell(entry) for _, _, cell in columns) + " |" for entry in entries]
    return "\n".join(lines)


def _optional(value: float | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if value is None else f"{scale * value:{spec}}{suffix}"


def _machine_line(machine: dict[str, Any]) -> str:
    versions = machine.get("versions", {})
    software = ", ".join(
        f"{name} {versions[name]}" for name in ("torch", "timm", "mmsegmentation") if name in versions
    )
    rates = ", ".join(f"{p} {v:.0f}" for p, v in machine.get("matmul_gflops_per_s", {}).items())
    start, end = (machine.get(f"load_average_{when}") for when in ("start", "end"))
    malloc = {True: "; malloc keeps freed memory", False: "; default malloc"}.get(
        machine.get("malloc_keeps_freed_memory"), ""
    )  # older results did not record it
    return (
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, {machine['memory_gib']} GiB, "
        f"{machine.get('gpu') or 'no GPU'}; {software}{malloc}; matmul {rates} GFLOP/s; load average "
        f"{tuple(round(x, 2) for x in start or ())} at start, {tuple(round(x, 2) for x in end or ())} at end."
    )


def benchmark_markdown(result: dict[str, Any]) -> str:
    """The Markdown tables of one `scripts/benchmark.py` JSON result."""
    inference, ratios, training = result.get("inference", []), result.get("ratios", {}), result.get("training", [])
    # A precision column only when the run measured more than fp32 (e.g. `--precisions fp32,bf16` on a GPU).
    entries = [*inference, *ratios.get("versus_mmseg", []), *ratios.get("jpu_versus_d8", [])]
    precision: list[Column] = []
    if any(e.get("precision", "fp32") != "fp32" for e in entries):
        precision = [("precision", False, lambda e: e.get("precision", "fp32"))]
    parts = []
    if inference:
        columns: list[Column] = [
            ("model", False, lambda r: r["variant"]),
            ("implementation", False, lambda r: r["implementation"]),
            *precision,
            ("size", False, lambda r: f"{r['height']}x{r['width']}"),
            ("GFLOPs", True, lambda r: f"{r['gflops']:.0f}"),
            ("latency (s)", True, lambda r: f"{r['latency_s']:.2f}"),
            (
                "achieved GFLOP/s (% of matmul)",
                True,
                lambda r: f"{r['achieved_gflops_per_s']:.1f} ({100 * r['fraction_of_matmul_rate']:.0f}%)",
            ),
            ("peak MiB", True, lambda r: _optional(r.get("peak_memory_mib"), ".0f")),
            ("argmax = mmseg", True, lambda r: _optional(r.get("argmax_agreement_vs_mmseg"), ".2f", 100, "%")),
        ]
        parts.append(_table(columns, inference))
    if ratios.get("versus_mmseg"):
        columns = [
            ("model", False, lambda e: e["variant"]),
            ("ours", False, lambda e: e["implementation"]),
            *precision,
            ("size", False, lambda e: e["size"]),
            ("latency ours/mmseg", True, lambda e: f"{e['latency_ratio']:.3f}"),
            ("peak memory ours/mmseg", True, lambda e: _optional(e.get("peak_memory_ratio"), ".3f")),
            ("max abs logit diff", True, lambda e: _optional(e.get("max_abs_diff"), ".1e")),
        ]
        parts.append(_table(columns, ratios["versus_mmseg"]))
    if ratios.get("jpu_versus_d8"):
        columns = [
            ("JPU model", False, lambda e: e["variant"]),
            ("D8 baseline", False, lambda e: e["baseline"]),
            ("ours", False, lambda e: e["implementation"]),
            *precision,
            ("size", False, lambda e: e["size"]),
            ("speed-up (D8 / JPU latency)", True, lambda e: f"{e['speedup']:.3f}"),
            ("FLOP ratio (D8 / JPU)", True, lambda e: f"{e['flop_ratio']:.3f}"),
            ("speed-up / FLOP ratio", True, lambda e: f"{e['speedup_per_flop_ratio']:.3f}"),
        ]
        parts.append(_table(columns, ratios["jpu_versus_d8"]))
    if training:
        columns = [
            ("model", False, lambda t: t["variant"]),
            ("implementation", False, lambda t: t["implementation"]),
            ("batch x size", False, lambda t: f"{t['batch']}x{t['height']}x{t['width']}"),
            ("step time (s)", True, lambda t: f"{t['step_s']:.1f}"),
            ("peak MiB", True, lambda t: _optional(t.get("peak_memory_mib"), ".0f")),
        ]
        parts.append(_table(columns, training))
    for e in ratios.get("training_versus_mmseg", []):
        parts.append(
            f"Training step ours/mmseg ({e['variant']}): time {e['step_time_ratio']:.3f}, "
            f"peak memory {_optional(e.get('peak_memory_ratio'), '.3f')}."
        )
    if result.get("profiles"):
        parts.append(profiles_markdown(result["profiles"]))
    parts.append(_machine_line(result["machine"]))
    return "\n\n".join(parts)


def profiles_markdown(profiles: Sequence[dict[str, Any]]) -> str:
    """Seconds per forward of the top-level modules (and the heads' fusion conv), one column per profiled model."""
    wanted = ["backbone", "neck", "decode_head", "decode_head.bottleneck", "(forward)"]

    def cells(profile: dict[str, Any]) -> Callable[[str], str]:
        by_module = {m["module"]: m for m in profile["modules"]}
        return lambda module: (
            f"{by_module[module]['seconds']:.2f} s ({100 * by_module[module]['share']:.0f}%)"
            if module in by_module
            else "-"
        )

    columns = [("module", False, lambda module: f"`{module}`")]
    columns += [(f"{p['variant']} ({p['implementation']})", True, cells(p)) for p in profiles]
    title = f"Time by module at {profiles[0]['size']} (`--profile`; seconds per forward, share of the forward):"
    return title + "\n\n" + _table(columns, wanted)


def backbones_markdown(result: dict[str, Any]) -> str:
    """The backbone comparison: each variant's backbone, width, trained weights (if any), size and cost."""
    size = "x".join(str(s) for s in result["settings"]["sizes"][0])

    def weights(r: dict[str, Any]) -> str:
        variant = get_variant(r["variant"])
        return f"{DATASETS[variant.dataset]} (converted)" if variant.released else "none: ImageNet backbone only"

    columns: list[Column] = [
        ("variant", False, lambda r: f"`{r['variant']}`"),
        ("backbone (timm)", False, lambda r: f"`{variant_config(r['variant']).backbone}`"),
        ("JPU / head width", True, lambda r: str(variant_config(r["variant"]).jpu_channels)),
        ("segmentation weights", False, weights),
        ("Mparams", True, lambda r: f"{r['params_m']:.2f}"),
        (f"GFLOPs ({size})", True, lambda r: f"{r['gflops']:.0f}"),
        (f"CPU latency s ({size})", True, lambda r: f"{r['latency_s']:.2f}"),
    ]
    return _table(columns, result["inference"])


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def generate(name: str) -> str:
    """The content of the README section `name` (see the module docstring)."""
    generators: dict[str, Callable[[], str]] = {
        "variants": variant_table_markdown,
        "pretrained": pretrained_table_markdown,
        "backbones": lambda: backbones_markdown(_load("backbones")),
    }
    if name.startswith("benchmark:"):
        return benchmark_markdown(_load(name.split(":", 1)[1]))
    if name not in generators:
        raise KeyError(f"README.md has a generated section {name!r} that update_readme.py does not know")
    return generators[name]()


def render(text: str) -> str:
    return SECTION.sub(lambda m: m.group(1) + generate(m.group(2)) + "\n" + m.group(3), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is not up to date")
    args = parser.parse_args()
    text = README.read_text()
    updated = render(text)
    if args.check:
        if updated != text:
            print("README.md is stale: run `python scripts/update_readme.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
