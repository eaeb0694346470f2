"""Convert mmsegmentation's released FastFCN / dilated-baseline checkpoints into transformers model directories.

Our module tree copies mmsegmentation's, so the state dict maps key for key except the ResNetV1c deep stem, which
timm names `conv1` / `bn1` (MMSEG_FASTFCN.md §5). Everything else here is about doing that safely:

- checkpoints are read with `torch.load(weights_only=True)` only; a pickle that needs code is refused;
- the variant comes from `--variant`, the mmsegmentation config name, the original file name, or the state dict;
- keys and shapes are checked against the variant's architecture before anything is written;
- the output directory appears complete or not at all (written beside it, then renamed into place).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .variants import VARIANTS, Variant, get_variant, list_models

# mmseg key prefix -> our key prefix. ResNetV1c's `stem` Sequential is (conv, bn, relu) x 3; timm keeps the first
# two triples in `conv1` and calls the last BN `bn1`.
STEM_RENAMES: tuple[tuple[str, str], ...] = (
    ("backbone.stem.7.", "backbone.bn1."),
    ("backbone.stem.", "backbone.conv1."),
)
# Weights used only by training losses: kept by default so that fine-tuning resumes from the trained state.
TRAINING_ONLY_PREFIXES: tuple[str, ...] = ("auxiliary_head.", "decode_head.se_layer.")
OUTPUT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")


class ConversionResult(NamedTuple):
    """What `convert_checkpoint` produced."""

    output_dir: Path
    variant: Variant
    hash_matches_name: bool | None  # see `LoadedCheckpoint.hash_matches_name`


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says why and what to do."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """An mmsegmentation checkpoint as read from disk: its state dict, meta, file name and sha256."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    filename: str
    sha256: str

    @property
    def hash_matches_name(self) -> bool | None:
        """Whether the sha256 starts with the hash in an mmseg-style file name (`..._<stamp>-<hash>.pth`); None
        when the name carries no hash. False means the file is not the one mmsegmentation released under that name."""
        match = re.search(r"-([0-9a-f]{8,})\.pth$", self.filename)
        return self.sha256.startswith(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------------------------


def _is_url(source: str | os.PathLike) -> bool:
    return urllib.parse.urlparse(str(source)).scheme in ("http", "https")


def fetch_checkpoint(url: str, cache_dir: str | Path | None = None) -> Path:
    """Download a checkpoint URL into torch's hub cache (once), checking mmseg's sha256 prefix in the file name."""
    filename = Path(urllib.parse.urlparse(url).path).name
    cache = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    target = cache / filename
    if target.is_file():
        return target
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ConversionError(
            f"Not downloading {url}: HF_HUB_OFFLINE is set. Download it where you have network access (e.g. "
            f"`curl -LO {url}`) and pass the local file."
        )
    match = re.search(r"-([0-9a-f]{8,})\.pth$", filename)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=match.group(1) if match else None)
    except Exception as error:  # URLError, HTTPError, hash mismatch (RuntimeError)
        raise ConversionError(
            f"Could not download {url} ({error}). Download it yourself and pass the local .pth file."
        ) from error
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(source: str | os.PathLike) -> LoadedCheckpoint:
    """Read an mmsegmentation checkpoint (local path or URL) safely and return its state dict and meta.

    Accepts `{'state_dict': ..., 'meta': ...}` (mmseg/mmcv/mmengine), `{'model': ...}` or a bare state dict; strips
    a DistributedDataParallel `module.` prefix. Never executes code from the file.
    """
    path = fetch_checkpoint(str(source)) if _is_url(source) else Path(source)
    if not path.is_file():
        raise ConversionError(f"No checkpoint file at {path}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        try:
            needed = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "unknown objects"
        except Exception:  # not even a readable archive
            needed = "unknown objects"
        raise ConversionError(
            f"Refusing to load {path.name}: it is a pickle that needs code to be executed ({needed}), and "
            "checkpoints are only read with `torch.load(weights_only=True)`. mmsegmentation's released checkpoints "
            "hold only tensors and plain values. If you trust this file, re-save its state dict as plain tensors: "
            "`torch.save({'state_dict': ckpt['state_dict']}, 'clean.pth')`."
        ) from error
    except Exception as error:  # truncated zip, wrong magic number, not a pickle at all ...
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file?): {error}"
        ) from error

    meta: dict[str, Any] = {}
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        state_dict, meta = checkpoint["state_dict"], dict(checkpoint.get("meta") or {})
    elif isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        state_dict = checkpoint["model"]
    elif (
        isinstance(checkpoint, Mapping)
        and checkpoint
        and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    ):
        state_dict = checkpoint
    else:
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ConversionError(
            f"{path.name} holds no state dict (expected a 'state_dict' entry or a dict of tensors; found {found})."
        )
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path.name}: state dict entry {key!r} is a {type(value).__name__}, not a tensor.")
        tensors[key.removeprefix("module.")] = value
    return LoadedCheckpoint(tensors, meta, path.name, _sha256(path))


# --------------------------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------------------------


def convert_state_dict(mmseg_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmsegmentation keys -> fastfcn_hub keys (only the backbone stem is renamed)."""
    converted = {}
    for key, value in mmseg_state_dict.items():
        for old, new in STEM_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        converted[key] = value
    return converted


def _num_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    weight = state_dict.get("decode_head.conv_seg.weight")
    return int(weight.shape[0]) if weight is not None else None


def _architecture_signature(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What the state dict itself says: head type, neck or not, number of classes."""
    keys = set(state_dict)
    head = next(
        (name for name, probe in (("aspp", "aspp_modules"), ("psp", "psp_modules"), ("enc", "enc_module"))
         if any(k.startswith(f"decode_head.{probe}.") for k in keys)),
        None,
    )  # fmt: skip
    return {"decode_head": head, "neck": "jpu" if any(k.startswith("neck.") for k in keys) else None,
            "num_classes": _num_classes(state_dict)}  # fmt: skip


def _checkpoint_stem(variant: Variant) -> str:
    """The 0.x config name in the released file name, e.g. `fastfcn_r50-d32_jpu_psp_512x1024_80k_cityscapes`."""
    return variant.mmseg_checkpoint.rsplit("/", 2)[-2]


def infer_variant(
    state_dict: Mapping[str, torch.Tensor],
    filename: str | None = None,
    mmseg_config: str | None = None,
    variant: str | None = None,
) -> Variant:
    """Which released variant a checkpoint is: from `variant`, the mmseg config name, the file name, the state dict.

    Raises `ConversionError` naming the candidates when the information given does not decide it.
    """
    released = [v for v in VARIANTS if v.released]
    if variant is not None:
        try:
            return get_variant(variant)
        except KeyError as error:
            raise ConversionError(str(error.args[0])) from error
    if mmseg_config is not None:
        name = Path(mmseg_config).name.removesuffix(".py")
        for candidate in released:
            if name in (candidate.mmseg_config, _checkpoint_stem(candidate)):
                return candidate
        known = "\n  ".join(v.mmseg_config for v in released)
        raise ConversionError(f"Unknown mmsegmentation config {mmseg_config!r}. Released configs:\n  {known}")
    if filename:
        base = Path(filename).name
        for candidate in released:  # exact released file name, then the 0.x or 1.x config name inside it
            if base == Path(candidate.mmseg_checkpoint).name:
                return candidate
        for candidate in released:
            stem = _checkpoint_stem(candidate)
            if re.search(rf"(^|[/_]){re.escape(stem)}([_.\-]|$)", base) or candidate.mmseg_config in base:
                return candidate

    signature = _architecture_signature(state_dict)
    matches = [
        v for v in released
        if v.config.get("decode_head") == signature["decode_head"] and v.config.get("neck") == signature["neck"]
        and len(v.config["id2label"]) == signature["num_classes"]
    ]  # fmt: skip
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConversionError(
            f"The state dict matches no released variant (decode head {signature['decode_head']}, neck "
            f"{signature['neck']}, {signature['num_classes']} classes). Pass --variant with one of: "
            f"{', '.join(list_models(released=True))}."
        )
    options = "\n  ".join(f"--variant {v.name}   (or --mmseg-config {v.mmseg_config})" for v in matches)
    raise ConversionError(
        f"The file name does not say which checkpoint this is, and the state dict fits {len(matches)} released "
        f"variants of the same architecture (they differ in training recipe and reported scores). Pass one of:\n"
        f"  {options}"
    )


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], variant: Variant) -> None:
    """Raise `ConversionError` listing missing / unexpected keys and shape mismatches against `model`."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            """Counts per module (two name levels), then a few full keys: enough to see which part differs."""
            if not keys:
                return "none"
            groups: dict[str, int] = {}
            for key in keys:
                module = ".".join(key.split(".")[:2])
                groups[module] = groups.get(module, 0) + 1
            summary = ", ".join(f"{module}.* ({count})" for module, count in groups.items())
            return f"{summary}; e.g. {', '.join(keys[:3])}"

        raise ConversionError(
            f"This checkpoint is not a {variant.name} ({variant.description}) model.\n  {len(missing)} missing "
            f"keys: {show(missing)}\n  {len(unexpected)} unexpected keys: {show(unexpected)}\nCheck --variant / "
            "--mmseg-config, or pass the checkpoint of that architecture."
        )
    wrong = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if tuple(state_dict[key].shape) != tuple(tensor.shape)
    ]
    if wrong:
        more = f"\n  ... and {len(wrong) - 8} more" if len(wrong) > 8 else ""
        raise ConversionError(
            f"{len(wrong)} tensors have the wrong shape for {variant.name}:\n  " + "\n  ".join(wrong[:8]) + more
        )


# --------------------------------------------------------------------------------------------------------------
# Converting
# --------------------------------------------------------------------------------------------------------------


def build_converted_model(
    checkpoint: LoadedCheckpoint, variant: Variant, drop_training_heads: bool = False
) -> torch.nn.Module:
    """The variant's model with the checkpoint's weights (strictly checked), in eval mode."""
    from .modeling_fastfcn import FastFCNForSemanticSegmentation
    from .variants import variant_config

    state_dict = convert_state_dict(checkpoint.state_dict)
    overrides: dict[str, Any] = {}
    if drop_training_heads:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
        overrides = {"use_auxiliary_head": False, "use_se_loss": False}
    with torch.device("meta"):  # no random initialisation of weights we are about to replace
        model = FastFCNForSemanticSegmentation(variant_config(variant.name, **overrides))
    check_state_dict(model, state_dict, variant)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def _prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"{output_dir} exists and is not a directory.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"{output_dir} exists and is not empty; pass --overwrite to replace it.")


def _move_into_place(staging: Path, output_dir: Path) -> None:
    """Rename the finished staging directory onto `output_dir` (replacing an old one only at the last moment)."""
    old = None
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        output_dir.rename(old)
    try:
        staging.rename(output_dir)
    except BaseException:
        if old is not None:
            old.rename(output_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_converted(
    model: torch.nn.Module,
    variant: Variant,
    output_dir: str | Path,
    checkpoint: LoadedCheckpoint | None = None,
    overwrite: bool = False,
) -> Path:
    """Write config, safetensors weights, processor config and model card to `output_dir`, all or nothing."""
    from .image_processing_fastfcn import FastFCNImageProcessor
    from .model_cards import model_card

    output_dir = Path(output_dir).absolute()
    _prepare_output_dir(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would otherwise become the output directory's mode
    try:
        FastFCNImageProcessor.from_config(model.config, **variant.processor).save_pretrained(staging)
        model.save_pretrained(staging)
        provenance = None
        if checkpoint is not None:
            provenance = {"filename": checkpoint.filename, "sha256": checkpoint.sha256}
        model_card(variant, converted_from=provenance, config=model.config).save(staging / "README.md")
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | Path,
    mmseg_config: str | None = None,
    variant: str | None = None,
    drop_training_heads: bool = False,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert one mmsegmentation checkpoint into a directory that `from_pretrained` and `pipeline` load.

    Returns the output directory, the variant it was converted as and whether the file is the released one.
    Raises `ConversionError` with an actionable message for bad input; nothing is left at `output_dir` then.
    """
    _prepare_output_dir(Path(output_dir), overwrite)  # fail before the slow part
    checkpoint = load_checkpoint(source)
    chosen = infer_variant(checkpoint.state_dict, checkpoint.filename, mmseg_config, variant)
    if not chosen.released:
        raise ConversionError(
            f"{chosen.name!r} has no mmsegmentation checkpoint; released variants: "
            f"{', '.join(list_models(released=True))}."
        )
    model = build_converted_model(checkpoint, chosen, drop_training_heads)
    output_dir = save_converted(model, chosen, output_dir, checkpoint, overwrite)
    return ConversionResult(output_dir, chosen, checkpoint.hash_matches_name)


__all__ = [
    "OUTPUT_FILES",
    "STEM_RENAMES",
    "TRAINING_ONLY_PREFIXES",
    "ConversionError",
    "ConversionResult",
    "LoadedCheckpoint",
    "build_converted_model",
    "check_state_dict",
    "convert_checkpoint",
    "convert_state_dict",
    "fetch_checkpoint",
    "infer_variant",
    "load_checkpoint",
    "save_converted",
]
