"""mmsegmentation 1.2.2 as a reference implementation: build its models from its shipped configs and run them.

Used by the parity tests and the benchmarks, never by the package itself. mmsegmentation is an optional dependency
(`pip install "fastfcn-hub[parity]"`); mmcv-lite has no compiled ops, so a stand-in `mmcv._ext` is registered before
mmseg is imported (none of the FastFCN / DeepLabV3 / PSPNet / EncNet / FCN modules calls a compiled op).

The API is a few functions, all on plain tensors and numpy arrays:

    model = build_model("fastfcn_r50-d32_jpu_psp_4xb2-80k_cityscapes-512x1024")   # SyncBN -> BN, eval mode
    randomize_(model, seed=0)                                                      # every weight and BN statistic
    save_checkpoint(model, "model.pth")                                            # {'meta', 'state_dict'}
    logits = whole_image_logits(model, rgb_uint8)                                  # [C, H, W], mmseg's own path
    losses = training_loss(model, [rgb_uint8, ...], [label, ...])                  # mmseg's `model.loss`
    label = load_label_map(config_name, "annotation.png")                          # its LoadAnnotations
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

MMSEG_VERSION = "1.2.2"
_INSTALL_HINT = (
    f'mmsegmentation {MMSEG_VERSION} is needed as the reference implementation: pip install "fastfcn-hub[parity]" '
    f"(mmengine==0.10.7 mmcv-lite==2.1.0 mmsegmentation=={MMSEG_VERSION} ftfy regex)."
)


class _MissingCompiledOps(types.ModuleType):
    """Stand-in for mmcv's compiled `mmcv._ext`: every attribute exists, and calling one says why it cannot run."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"mmcv compiled op `{name}` is not available with mmcv-lite.")

        return unavailable


def import_mmseg() -> types.ModuleType:
    """Import mmseg (registering its modules) on an mmcv-lite install; ImportError with the install line if absent."""
    for package in ("mmseg", "mmengine", "mmcv"):
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"`{package}` is not installed. {_INSTALL_HINT}")
    if "mmcv._ext" not in sys.modules and importlib.util.find_spec("mmcv._ext") is None:
        sys.modules["mmcv._ext"] = _MissingCompiledOps("mmcv._ext")
    import mmseg
    from mmseg.utils import register_all_modules

    if mmseg.__version__ != MMSEG_VERSION:
        raise ImportError(
            f"mmsegmentation {mmseg.__version__} is installed; parity is defined against it. {_INSTALL_HINT}"
        )
    register_all_modules(init_default_scope=True)
    return mmseg


def config_path(config_name: str) -> Path:
    """The shipped config file of a 1.x config name (e.g. `fastfcn_r50-d32_jpu_psp_4xb2-80k_cityscapes-512x1024`)."""
    mmseg = import_mmseg()
    root = Path(mmseg.__file__).parent / ".mim" / "configs"
    matches = sorted(root.glob(f"*/{config_name.removesuffix('.py')}.py"))
    if not matches:
        raise FileNotFoundError(f"mmsegmentation {MMSEG_VERSION} ships no config named {config_name!r} (in {root}).")
    return matches[0]


def _sync_bn_to_bn(node: Any) -> Any:
    """Replace every `SyncBN` norm config by `BN`: SyncBN needs a process group; at one process they compute alike."""
    if isinstance(node, dict):
        node = {key: _sync_bn_to_bn(value) for key, value in node.items()}
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
        return node
    if isinstance(node, list | tuple):
        return type(node)(_sync_bn_to_bn(value) for value in node)
    return node


def build_model(config_name: str) -> nn.Module:
    """mmseg's `EncoderDecoder` from a shipped config: BN instead of SyncBN, no ImageNet init, no training padding.

    The returned model is on the CPU in eval mode with mmseg's default initialisation (call `randomize_` or load a
    state dict). Its data preprocessor pads training batches to a multiple of 1, i.e. not at all, so that losses are
    computed on the batch as given.
    """
    import_mmseg()
    from mmengine.config import Config, ConfigDict
    from mmseg.registry import MODELS

    cfg = Config.fromfile(str(config_path(config_name)))
    model_cfg = _sync_bn_to_bn(cfg.model.to_dict())
    model_cfg.pop("pretrained", None)  # an ImageNet download we never want here
    model_cfg["backbone"].pop("init_cfg", None)
    model_cfg["data_preprocessor"].update(size=None, size_divisor=1)
    model = MODELS.build(ConfigDict(model_cfg))
    model.eval()  # mmseg's ResNet.train() returns None: no chaining
    return model


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and every BatchNorm running statistic random values, scaled to keep activations sane.

    Weights get N(0, 1/fan_in) (so a deep random ResNet neither explodes nor vanishes), biases and running means
    N(0, 0.1^2), BN scales and running variances U(0.5, 1.5), `num_batches_tracked` a random count. Parity checked
    on such weights covers every tensor, unlike mmseg's default init (unit BN, zero means).
    """
    generator = torch.Generator().manual_seed(seed)
    for module_name, module in model.named_modules():
        if module_name.startswith("data_preprocessor"):  # mean/std buffers are mmseg's normalisation, not weights
            continue
        persistent = [
            (n, b) for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set
        ]
        for name, tensor in list(module.named_parameters(recurse=False)) + persistent:
            if tensor is None:
                continue
            if name == "num_batches_tracked":
                tensor.fill_(int(torch.randint(1, 100_000, (1,), generator=generator)))
            elif isinstance(module, nn.modules.batchnorm._NormBase) and name in ("weight", "running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name == "scale":  # Encoding smoothing factors: negative, as initialised
                tensor.copy_(-torch.rand(tensor.shape, generator=generator))
            elif tensor.ndim >= 2:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save in mmsegmentation's checkpoint format: `{'meta': {...}, 'state_dict': {...}}` (as `publish_model` does)."""
    import_mmseg()
    meta = {"mmseg_version": MMSEG_VERSION, "dataset_meta": {}, **(meta or {})}
    path = Path(path)
    torch.save({"meta": meta, "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}, path)
    return path


def load_label_map(config_name: str, path: str | Path) -> np.ndarray:
    """An annotation image as the config's training pipeline loads it (its own `LoadAnnotations` step).

    For ADE20K that step has `reduce_zero_label=True`: label 0 ("other") becomes 255 and 1..150 become 0..149.
    """
    import_mmseg()
    from mmengine.config import Config
    from mmseg.registry import TRANSFORMS

    cfg = Config.fromfile(str(config_path(config_name)))
    step = next(dict(t) for t in cfg.train_pipeline if t["type"] == "LoadAnnotations")
    loader = TRANSFORMS.build(step)
    results = {"seg_map_path": str(path), "reduce_zero_label": bool(step.get("reduce_zero_label")), "seg_fields": []}
    return loader(results)["gt_seg_map"]


def _data_sample(height: int, width: int, label: np.ndarray | None = None) -> Any:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    sample = SegDataSample()
    sample.set_metainfo({"ori_shape": (height, width), "img_shape": (height, width), "pad_shape": (height, width)})
    if label is not None:
        sample.gt_sem_seg = PixelData(data=torch.as_tensor(np.asarray(label), dtype=torch.int64)[None])
    return sample


def _packed_input(image: np.ndarray) -> torch.Tensor:
    """What mmseg's pipeline hands the data preprocessor: the image as cv2 loads it (BGR), CHW uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an HxWx3 uint8 RGB image, got {image.dtype} of shape {image.shape}.")
    return torch.from_numpy(np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)))


@torch.no_grad()
def whole_image_logits(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    """mmseg's whole-image inference of one HxWx3 uint8 RGB image: pre-softmax logits [C, H, W] at the input size.

    Runs mmseg's own data preprocessor (BGR -> RGB, mean/std) and `model.predict`, which resizes the stride-8 head
    logits bilinearly to the image size. The dataset pipeline's test-time Resize is not applied: both sides see the
    image at its own size.
    """
    was_training = model.training
    model.eval()
    height, width = np.asarray(image).shape[:2]
    data = model.data_preprocessor({"inputs": [_packed_input(image)], "data_samples": [_data_sample(height, width)]})
    result = model.predict(data["inputs"], data["data_samples"])[0]
    model.train(was_training)
    return result.seg_logits.data


def training_loss(
    model: nn.Module, images: list[np.ndarray], labels: list[np.ndarray], dropout: bool = False
) -> dict[str, torch.Tensor]:
    """mmseg's `model.loss` on a batch of uint8 RGB images and HxW label maps, in training mode.

    Returns mmseg's loss dict plus `"loss"`, the sum of its `loss*` entries (what mmengine back-propagates).
    Dropout is off unless `dropout=True`, so that the value is deterministic; BatchNorm uses batch statistics and
    updates the running statistics, so pass a copy if the model is reused (`copy.deepcopy(model)`).
    """
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} label maps.")
    samples = [_data_sample(*np.asarray(label).shape, label=label) for label in labels]
    data = model.data_preprocessor({"inputs": [_packed_input(im) for im in images], "data_samples": samples}, True)
    model.train()
    if not dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout | nn.Dropout2d):
                module.eval()
    losses = model.loss(data["inputs"], data["data_samples"])
    model.eval()
    losses = dict(losses)
    losses["loss"] = sum(value for key, value in losses.items() if "loss" in key)
    return losses


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy (for `training_loss`, which changes BN running statistics)."""
    return copy.deepcopy(model)


__all__ = [
    "MMSEG_VERSION",
    "build_model",
    "config_path",
    "copy_model",
    "import_mmseg",
    "load_label_map",
    "randomize_",
    "save_checkpoint",
    "training_loss",
    "whole_image_logits",
]
