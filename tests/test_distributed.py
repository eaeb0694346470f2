"""Multi-process training on CPU (gloo): SyncBatchNorm equals one big batch, and a 2-process torchrun run completes
with metrics over the whole validation set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastfcn_hub.training import CPUSyncBatchNorm, convert_sync_batchnorm

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _sync_bn_worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    inputs = torch.randn(4, 3, 5, 5) * 3 + 1
    layer = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))[0]
    shard = inputs[rank * 2 : rank * 2 + 2].clone().requires_grad_(True)
    output = layer(shard)
    (output * torch.arange(shard.numel()).view_as(shard)).sum().backward()
    queue.put((rank, output.detach(), shard.grad, layer.running_mean, layer.running_var, layer.weight.grad))
    dist.destroy_process_group()


def test_cpu_sync_batchnorm_equals_batchnorm_on_the_whole_batch():
    world_size, context = 2, mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = 29500 + os.getpid() % 1000
    processes = [context.Process(target=_sync_bn_worker, args=(rank, world_size, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = sorted([queue.get() for _ in range(world_size)], key=lambda item: item[0])
    for process in processes:
        process.join(60)
        assert process.exitcode == 0

    torch.manual_seed(0)
    inputs = (torch.randn(4, 3, 5, 5) * 3 + 1).requires_grad_(True)
    reference = torch.nn.BatchNorm2d(3)
    output = reference(inputs)
    (output * torch.cat([torch.arange(2 * 75).view(2, 3, 5, 5)] * 2)).sum().backward()
    torch.testing.assert_close(torch.cat([r[1] for r in results]), output.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r[2] for r in results]), inputs.grad, atol=1e-4, rtol=1e-4)
    for _, _, _, running_mean, running_var, _ in results:
        torch.testing.assert_close(running_mean, reference.running_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(running_var, reference.running_var, atol=1e-5, rtol=1e-5)
    # each process holds its shard's share of the affine gradients; DDP sums (averages) them
    torch.testing.assert_close(sum(r[5] for r in results), reference.weight.grad, atol=1e-3, rtol=1e-4)


def test_convert_sync_batchnorm_keeps_state():
    from fastfcn_hub import create_model

    model = create_model("fastfcn_r18_jpu_psp")
    model.backbone.bn1.running_mean.fill_(0.5)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    converted = convert_sync_batchnorm(model)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    assert any(isinstance(m, CPUSyncBatchNorm) for m in converted.modules())
    on_gpu = convert_sync_batchnorm(create_model("fastfcn_r18_jpu_psp"), "cuda")  # PyTorch's, for accelerators
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in on_gpu.modules())
    after = converted.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_torchrun_two_processes_with_syncbn_reports_whole_validation_set(tmp_path):
    from fastfcn_hub import FastFCNForSemanticSegmentation
    from fastfcn_hub.data import CityscapesEvalTransform, load_cityscapes, make_synthetic_cityscapes
    from fastfcn_hub.metrics import MeanIoU

    root = make_synthetic_cityscapes(tmp_path / "data", num_train=4, num_val=5, size=(32, 64))  # 5: uneven shards
    output_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
        str(30500 + os.getpid() % 1000), str(REPO / "scripts" / "train.py"),
        "--model_name_or_path", "fastfcn_r18_jpu_psp", "--dataset", str(root), "--scale", "64", "32",
        "--crop_size", "32", "64", "--eval_scale", "64", "32", "--output_dir", str(output_dir), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--eval_strategy", "no",
        "--save_strategy", "no", "--dataloader_num_workers", "0", "--report_to", "none", "--disable_tqdm", "true",
        "--log_level", "info",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "SyncBatchNorm over 2 processes" in completed.stderr + completed.stdout
    reported = json.loads((output_dir / "eval_results.json").read_text())

    # The same model, evaluated in this single process on all 5 validation images, gives the same numbers.
    model = FastFCNForSemanticSegmentation.from_pretrained(output_dir).eval()
    transform = CityscapesEvalTransform.from_config(model.config, scale=None)
    metric = MeanIoU(19)
    for row in load_cityscapes(root, "val"):
        pixels, labels = transform.apply(row["image"], row["label"])
        with torch.no_grad():
            logits = model(pixels[None]).logits
        upsampled = torch.nn.functional.interpolate(logits, size=labels.shape, mode="bilinear", align_corners=False)
        metric.add_batch(upsampled.argmax(1), labels[None])
    expected = metric.compute()
    assert reported["eval_mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-6)
    assert reported["eval_overall_accuracy"] == pytest.approx(expected["overall_accuracy"], abs=1e-6)
