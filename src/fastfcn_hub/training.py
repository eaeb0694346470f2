"""Training with the transformers Trainer, reproducing mmsegmentation's FastFCN Cityscapes recipe.

The recipe (`schedule_80k.py` + `cityscapes.py` + the FastFCN configs) maps onto Trainer pieces:

- SGD lr 0.01, momentum 0.9, weight decay 5e-4 on every parameter: `optim="sgd"`, `optim_args="momentum=0.9"`,
  `weight_decay=5e-4`, `decay_all_parameters=True` (transformers alone exempts biases and norms).
- PolyLR(power=0.9, eta_min=1e-4) over 80k iterations: `lr_scheduler_type="polynomial"`,
  `lr_scheduler_kwargs={"power": 0.9, "lr_end": 1e-4}`, `max_steps=80000`.
- 2 images per GPU: `per_device_train_batch_size=2`; SyncBN: BatchNorm becomes `SyncBatchNorm` when distributed.
- decode CE + 0.4 auxiliary CE (+ 0.2 SE BCE for EncNet): the model's own loss.
- CE averaged over all pixels (mmseg's `avg_non_ignore=False`): `--loss_average all`; the default, `valid`,
  averages over labelled pixels (PyTorch's convention; see "Loss reduction" in the README).
- validation and checkpoint every 8k iterations: `eval_steps=save_steps=8000`, mIoU from the streaming
  `TrainerMeanIoU` (`batch_eval_metrics=True`: logits are never accumulated).

transformers' polynomial schedule is `(lr - lr_end) * (1 - t / T) ** power + lr_end`; mmengine's PolyLR is the same
with `T = max_steps - 1` (`total_iters = end - begin - 1`), so `FastFCNTrainer` passes one step fewer
(`mmseg_poly_schedule`) and tests/test_training.py compares the result with mmengine's PolyLR itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import (
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import SchedulerType

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model to train, and the training-only model options."""

    model_name_or_path: str = field(
        default="fastfcn_r50_jpu_psp.cityscapes_4xb2",
        metadata={"help": "A variant name from `fastfcn-hub models` (random init) or a saved / converted model dir."},
    )  # fmt: skip
    backbone_pretrained: str | None = field(
        default=None,
        metadata={"help": "Start the backbone from ImageNet weights: 'timm' downloads timm's weights for the config's "
                          "backbone, a path loads a local timm weights file. Only for variant names."},
    )  # fmt: skip
    loss_average: str | None = field(
        default=None,
        metadata={"help": "How cross-entropy is averaged: 'valid' (over labelled pixels, PyTorch's convention) or "
                          "'all' (over every pixel, ignored ones count zero: mmsegmentation's). None: the config's."},
    )  # fmt: skip
    sync_batchnorm: bool = field(
        default=True, metadata={"help": "Convert BatchNorm to SyncBatchNorm when training on several processes."}
    )


@dataclass
class DataArguments:
    """Where the data comes from and mmsegmentation's pipeline sizes."""

    dataset: str = field(
        default="data/cityscapes",
        metadata={"help": "A Cityscapes root (leftImg8bit/ + gtFine/), a hub dataset id, or local parquet file(s)."},
    )
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str | None = field(default="val", metadata={"help": "Evaluation split ('none' to skip evaluation)."})
    image_column: str = field(default="image", metadata={"help": "Image column (hub / parquet data)."})
    label_column: str = field(default="label", metadata={"help": "Mask column (hub / parquet data)."})
    label_encoding: str = field(
        default="auto", metadata={"help": "Mask encoding (hub / parquet): auto, trainIds, labelIds or indices."}
    )
    scale: list[int] = field(
        default_factory=lambda: [2048, 1024], metadata={"help": "(long, short) edges images are rescaled to fit."}
    )
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0], metadata={"help": "Random scale ratios."})
    crop_size: list[int] = field(
        default_factory=lambda: [512, 1024], metadata={"help": "Random crop (height, width)."}
    )
    cat_max_ratio: float = field(default=0.75, metadata={"help": "Largest share of a crop one class may cover."})
    photometric: bool = field(default=True, metadata={"help": "Apply mmseg's PhotoMetricDistortion."})
    eval_scale: list[int] | None = field(
        default_factory=lambda: [2048, 1024],
        metadata={"help": "(long, short) edges evaluation images are resized to fit, keeping the aspect ratio."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation images."})


def _tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


@dataclass
class FastFCNTrainingArguments(TrainingArguments):
    """`TrainingArguments` whose defaults are mmsegmentation's 80k Cityscapes recipe (see the module docstring)."""

    output_dir: str | None = field(default="outputs/fastfcn", metadata={"help": "Checkpoints, logs and the model."})
    learning_rate: float = 0.01
    weight_decay: float = 5e-4
    optim: str = "sgd"
    optim_args: str | None = "momentum=0.9"
    lr_scheduler_type: str = "polynomial"
    lr_scheduler_kwargs: dict | str | None = field(default_factory=lambda: {"power": 0.9, "lr_end": 1e-4})
    max_steps: int = 80_000
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int = 1
    eval_strategy: str = "steps"
    eval_steps: float | None = 8000
    save_steps: float = 8000
    logging_steps: float = 50
    remove_unused_columns: bool = False  # the transform needs the raw `image` / `label` columns
    batch_eval_metrics: bool = True  # streaming mIoU: logits are never accumulated
    dataloader_num_workers: int = 2
    report_to: None | str | list[str] = field(
        default_factory=lambda: "tensorboard" if _tensorboard_available() else "none"
    )
    mmseg_poly_schedule: bool = field(
        default=True,
        metadata={"help": "With the polynomial schedule, reach lr_end on the last step as mmengine's PolyLR does "
                          "(False: transformers' schedule, which reaches it one step after the end)."},
    )  # fmt: skip
    decay_all_parameters: bool = field(
        default=True,
        metadata={"help": "Apply weight decay to every parameter, biases and norms included, as mmsegmentation does "
                          "(False: transformers' default, no decay on biases and norms)."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        # Under torchrun on a machine without an accelerator, accelerate only sets up CPU DDP when told `use_cpu`;
        # otherwise every process would train alone on all data. Multi-process CPU runs need no extra flag.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not torch.accelerator.is_available():
            self.use_cpu = True
        if self.use_cpu or not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; on CPU it only warns
        super().__post_init__()


# ---------------------------------------------------------------------------------------------------------------------
# SyncBatchNorm that also runs on CPU (gloo)
# ---------------------------------------------------------------------------------------------------------------------


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all processes, on CPU (gloo), where PyTorch's SyncBatchNorm
    refuses to run (and DDP refuses it on CPU modules).

    The batch statistics come from per-process sums all-reduced with `torch.distributed.nn`'s differentiable
    all_reduce, so gradients flow across processes as with PyTorch's CUDA kernels. Keys and buffers are those of
    `BatchNorm2d`; outside distributed training it is `BatchNorm2d`.
    """

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized():
            return super().forward(input)
        group = self.process_group or dist.group.WORLD
        if dist.get_world_size(group) == 1:
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        channels = input.shape[1]
        dims = [0, *range(2, input.ndim)]
        count = torch.full((1,), input.numel() // channels, dtype=input.dtype)
        stats = all_reduce(torch.cat([input.sum(dims), (input * input).sum(dims), count]), group=group)
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean * mean).clamp_min(0)  # biased, for normalisation
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * total / (total - 1).clamp_min(1), momentum)
        shape = [1, channels] + [1] * (input.ndim - 2)
        output = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output


def convert_sync_batchnorm(module: nn.Module, device_type: str = "cpu", process_group: Any = None) -> nn.Module:
    """Make every BatchNorm synchronised across processes: PyTorch's `SyncBatchNorm` for accelerators,
    `CPUSyncBatchNorm` for CPU training. Parameters and running statistics are kept."""
    if device_type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    if type(module) is nn.BatchNorm2d:
        converted = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats, process_group=process_group)  # fmt: skip
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted.to(module.weight.device if module.affine else module.running_mean.device)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device_type, process_group))
    return module


# ---------------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------------


class _EpochToDataset(TrainerCallback):
    """Tell an `AugmentedDataset` which epoch starts, so each epoch gets fresh (and reproducible) augmentations."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.dataset.set_epoch(int(state.epoch + 1e-6) if state.epoch else 0)


class FastFCNTrainer(Trainer):
    """Trainer with mmsegmentation's weight decay on every parameter (when `decay_all_parameters`) and its PolyLR end
    point (when `mmseg_poly_schedule`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(_EpochToDataset(self.train_dataset))

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        # mmengine's PolyLR decays over `end - begin - 1` steps: the last iteration already runs at eta_min.
        # transformers' polynomial schedule with one step fewer is exactly that (tests compare with mmengine).
        if self.args.lr_scheduler_type == SchedulerType.POLYNOMIAL and getattr(
            self.args, "mmseg_poly_schedule", False
        ):
            num_training_steps = max(num_training_steps - 1, 1)
        return super().create_scheduler(num_training_steps, optimizer)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        if getattr(self.args, "decay_all_parameters", False):
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)


def build_model(model_args: ModelArguments, num_labels: int | None = None) -> nn.Module:
    """A variant at random init (optionally with an ImageNet backbone), or a saved / converted model directory."""
    from .modeling_fastfcn import FastFCNForSemanticSegmentation
    from .variants import create_model

    overrides: dict[str, Any] = {}
    if model_args.loss_average is not None:
        overrides["loss_average"] = model_args.loss_average
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    source = Path(model_args.model_name_or_path).expanduser()
    if source.is_dir():
        if model_args.backbone_pretrained:
            raise ValueError("`--backbone_pretrained` only applies to variant names; a model directory has weights.")
        return FastFCNForSemanticSegmentation.from_pretrained(source, **overrides)
    backbone = model_args.backbone_pretrained
    backbone = True if backbone in ("timm", "true", "True", "1") else backbone or False
    return create_model(model_args.model_name_or_path, backbone_pretrained=backbone, **overrides)


def load_datasets(data_args: DataArguments, num_labels: int | None = None) -> tuple[Any, Any | None]:
    """The training and evaluation splits as (image, label) datasets, from a Cityscapes root or hub / parquet data."""
    from .data import load_cityscapes, load_segmentation_dataset

    root = Path(data_args.dataset).expanduser()
    eval_split = None if data_args.eval_split in (None, "", "none", "None") else data_args.eval_split

    def load(split: str) -> Any:
        if (root / "leftImg8bit").is_dir() or (root / "gtFine").is_dir():
            return load_cityscapes(root, split)
        return load_segmentation_dataset(data_args.dataset, split, data_args.image_column, data_args.label_column,
                                         data_args.label_encoding, num_labels)  # fmt: skip

    train_dataset = load(data_args.train_split)
    eval_dataset = load(eval_split) if eval_split else None
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    if eval_dataset is not None and data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    return train_dataset, eval_dataset


def build_trainer(
    model_args: ModelArguments, data_args: DataArguments, training_args: FastFCNTrainingArguments
) -> FastFCNTrainer:
    """Model, data, transforms, metric and Trainer, ready for `.train()`."""
    from .data import AugmentedDataset, CityscapesEvalTransform, CityscapesTrainTransform
    from .image_processing_fastfcn import FastFCNImageProcessor
    from .metrics import TrainerMeanIoU

    set_seed(training_args.seed)  # the model's random init too, not only the Trainer's data order
    model = build_model(model_args)
    if training_args.world_size > 1 and model_args.sync_batchnorm:
        model = convert_sync_batchnorm(model, training_args.device.type)
        logger.info("Converted BatchNorm to SyncBatchNorm over %d processes.", training_args.world_size)

    config = model.config
    train_dataset, eval_dataset = load_datasets(data_args, num_labels=config.num_labels)
    train_transform = CityscapesTrainTransform.from_config(
        config, scale=data_args.scale, ratio_range=data_args.ratio_range, crop_size=data_args.crop_size,
        cat_max_ratio=data_args.cat_max_ratio, photometric=data_args.photometric,
    )  # fmt: skip
    eval_transform = CityscapesEvalTransform.from_config(config, scale=data_args.eval_scale)
    metric = TrainerMeanIoU(config.num_labels, ignore_index=config.semantic_loss_ignore_index,
                            id2label=config.id2label, align_corners=config.align_corners)  # fmt: skip
    if eval_dataset is None:
        training_args.eval_strategy = "no"
    return FastFCNTrainer(
        model=model,
        args=training_args,
        data_collator=default_data_collator,
        train_dataset=AugmentedDataset(train_dataset, train_transform, seed=training_args.seed),
        eval_dataset=eval_dataset.with_transform(eval_transform) if eval_dataset is not None else None,
        processing_class=FastFCNImageProcessor.from_config(config),
        compute_metrics=metric,
    )


def train(
    model_args: ModelArguments, data_args: DataArguments, training_args: FastFCNTrainingArguments
) -> dict[str, float]:
    """Train (or resume), evaluate, save the model and processor to `output_dir`, optionally push; return metrics."""
    trainer = build_trainer(model_args, data_args, training_args)
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the newest checkpoint-* in output_dir
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub(tags=["image-segmentation", "fastfcn"], dataset=data_args.dataset)
    return metrics


ARGUMENT_TYPES = (ModelArguments, DataArguments, FastFCNTrainingArguments)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every field of the three argument dataclasses to `parser` (HfArgumentParser's parsing rules)."""
    hf_parser = HfArgumentParser(ARGUMENT_TYPES, add_help=False)
    parser._add_container_actions(hf_parser)  # what argparse's `parents=` does


def arguments_from_namespace(
    namespace: argparse.Namespace,
) -> tuple[ModelArguments, DataArguments, FastFCNTrainingArguments]:
    """Split a parsed namespace into the three dataclasses."""
    values = vars(namespace)
    return tuple(
        kind(**{f.name: values[f.name] for f in dataclasses.fields(kind) if f.init and f.name in values})
        for kind in ARGUMENT_TYPES
    )  # type: ignore[return-value]


__all__ = [
    "DataArguments",
    "FastFCNTrainer",
    "FastFCNTrainingArguments",
    "ModelArguments",
    "CPUSyncBatchNorm",
    "build_model",
    "build_trainer",
    "convert_sync_batchnorm",
    "load_datasets",
    "train",
]
