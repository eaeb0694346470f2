"""Training: mmseg's recipe in TrainingArguments, PolyLR, learning on synthetic data, exact resume, loss options."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from fastfcn_hub.data import make_synthetic_cityscapes
from fastfcn_hub.training import (
    DataArguments,
    FastFCNTrainingArguments,
    ModelArguments,
    build_model,
    build_trainer,
    train,
)

pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("cityscapes"), num_train=8, num_val=3, size=(32, 64))


def _arguments(root: Path, output_dir: Path, **training: object):
    model_args = ModelArguments(model_name_or_path="fastfcn_r18_jpu_psp")
    data_args = DataArguments(dataset=str(root), scale=[64, 32], crop_size=[32, 64], eval_scale=None)
    defaults = {"output_dir": str(output_dir), "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2,
                "dataloader_num_workers": 0, "report_to": "none", "disable_tqdm": True, "logging_steps": 1,
                "save_strategy": "no", "eval_strategy": "no", "seed": 7}  # fmt: skip
    return model_args, data_args, FastFCNTrainingArguments(**{**defaults, **training})


def test_recipe_defaults_are_mmsegs():
    args = FastFCNTrainingArguments(output_dir="unused", report_to="none")
    assert (args.learning_rate, args.weight_decay, args.max_steps) == (0.01, 5e-4, 80_000)
    assert args.per_device_train_batch_size == 2 and args.optim == "sgd" and args.optim_args == "momentum=0.9"
    assert args.lr_scheduler_kwargs == {"power": 0.9, "lr_end": 1e-4}
    assert args.batch_eval_metrics and not args.remove_unused_columns and args.decay_all_parameters


def test_optimizer_is_sgd_with_decay_on_every_parameter(tiny_root, tmp_path):
    trainer = build_trainer(*_arguments(tiny_root, tmp_path))
    trainer.create_optimizer()
    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 5e-4 for p in group["params"]}
    assert decayed == {id(p) for p in trainer.model.parameters()}  # biases and BN too, as in mmseg
    assert all(group["momentum"] == 0.9 and group["lr"] == 0.01 for group in optimizer.param_groups)


def test_learning_rate_equals_mmengine_polylr(tiny_root, tmp_path):
    from mmengine.optim.scheduler import PolyLR

    trainer = build_trainer(*_arguments(tiny_root, tmp_path, max_steps=80_000))
    trainer.create_optimizer_and_scheduler(num_training_steps=80_000)
    reference_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01, momentum=0.9)
    reference = PolyLR(reference_optimizer, eta_min=1e-4, power=0.9, begin=0, end=80_000, by_epoch=False)
    samples = {0, 1, 2, 10, 1000, 8000, 40_000, 72_000, 79_000, 79_998, 79_999}
    ours_at, reference_at = {}, {}
    warnings.filterwarnings("ignore", message="Detected call of")  # no optimizer steps: only the schedule
    for step in range(80_000):
        if step in samples:
            ours_at[step] = trainer.optimizer.param_groups[0]["lr"]
            reference_at[step] = reference_optimizer.param_groups[0]["lr"]
        trainer.lr_scheduler.step()
        reference.step()
    assert ours_at.keys() == samples
    for step in sorted(samples):
        assert ours_at[step] == pytest.approx(reference_at[step], rel=1e-12, abs=1e-18), step
    assert ours_at[0] == 0.01 and ours_at[79_999] == pytest.approx(1e-4, rel=1e-12)  # eta_min on the last step
    assert ours_at[40_000] == pytest.approx(1e-4 + (0.01 - 1e-4) * (1 - 40_000 / 79_999) ** 0.9, rel=1e-12)


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def test_resume_from_checkpoint_equals_uninterrupted_run(tiny_root, tmp_path):
    common = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3}
    uninterrupted = build_trainer(*_arguments(tiny_root, tmp_path / "a", **common))
    uninterrupted.train()

    interrupted = build_trainer(*_arguments(tiny_root, tmp_path / "b", **common))
    interrupted.add_callback(_StopAt(3))
    interrupted.train()
    assert interrupted.state.global_step == 3 and (tmp_path / "b" / "checkpoint-3").is_dir()
    resumed = build_trainer(*_arguments(tiny_root, tmp_path / "b", **common))
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    assert resumed.state.global_step == 6

    expected, actual = uninterrupted.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_loss_average_option_reaches_the_model(tiny_root):
    model = build_model(ModelArguments(model_name_or_path="fastfcn_r18_jpu_psp", loss_average="all"))
    assert model.config.loss_average == "all"
    logits = torch.randn(1, 19, 4, 4)
    labels = torch.full((1, 4, 4), 255)
    labels[0, 0, :2] = 3
    valid = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    assert model._cross_entropy(logits, labels) == pytest.approx(valid.item() * 2 / 16)  # mean over all 16 pixels
    with pytest.raises(ValueError, match="loss_average"):
        build_model(ModelArguments(model_name_or_path="fastfcn_r18_jpu_psp", loss_average="sum"))


def test_model_from_directory_and_bad_backbone_option(tmp_path):
    from fastfcn_hub import create_model

    create_model("fastfcn_r18_jpu_aspp").save_pretrained(tmp_path / "model")
    model = build_model(ModelArguments(model_name_or_path=str(tmp_path / "model")))
    assert model.config.decode_head == "aspp"
    with pytest.raises(ValueError, match="backbone_pretrained"):
        build_model(ModelArguments(model_name_or_path=str(tmp_path / "model"), backbone_pretrained="timm"))
    with pytest.raises(OSError, match="ImageNet weights"):  # offline in tests: a clear error, not a hang
        build_model(ModelArguments(model_name_or_path="fastfcn_r18_jpu_psp", backbone_pretrained="timm"))


@pytest.mark.slow
def test_training_learns_synthetic_cityscapes(tmp_path):
    root = make_synthetic_cityscapes(tmp_path / "data", num_train=48, num_val=8, size=(48, 96), seed=0)
    model_args = ModelArguments(model_name_or_path="fastfcn_r18_jpu_psp")
    data_args = DataArguments(dataset=str(root), scale=[96, 48], ratio_range=[0.75, 1.5], crop_size=[48, 96],
                              eval_scale=None)  # fmt: skip
    training_args = FastFCNTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=200, learning_rate=0.05, per_device_train_batch_size=4,
        per_device_eval_batch_size=4, eval_strategy="no", save_strategy="no", dataloader_num_workers=0,
        report_to="none", disable_tqdm=True, logging_steps=20, seed=0,
    )  # fmt: skip
    metrics = train(model_args, data_args, training_args)
    # Chance level: a uniform guess over 19 classes scores about 0.03 mIoU, "road everywhere" about 0.02.
    assert metrics["eval_mean_iou"] > 0.15, metrics
    assert metrics["eval_overall_accuracy"] > 0.6, metrics
    assert metrics["eval_iou_road"] > 0.5, metrics
    saved = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert saved["eval_mean_iou"] == pytest.approx(metrics["eval_mean_iou"])
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "preprocessor_config.json").is_file()
