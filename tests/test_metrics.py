"""The streaming mean IoU against a straightforward per-image implementation of evaluate's `mean_iou` semantics."""

from __future__ import annotations

import json
import subprocess
import sys

import evaluate
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import EvalPrediction

from fastfcn_hub.metrics import EVALUATE_MODULE_PATH, MeanIoU, TrainerMeanIoU, flatten_results, mean_iou

KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")


def reference_mean_iou(predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None,
                       reduce_labels=False):  # fmt: skip
    """evaluate's algorithm, one image at a time: remap, reduce, mask, per-class histograms, sums, ratios."""
    total = {name: np.zeros(num_labels) for name in ("intersect", "prediction", "label")}
    for prediction, label in zip(predictions, references):
        prediction, label = np.array(prediction, dtype=np.int64), np.array(label, dtype=np.int64)
        if label_map is not None:
            original = label.copy()
            for old_id, new_id in label_map.items():
                label[original == old_id] = new_id
        if reduce_labels:
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        keep = label != ignore_index
        prediction, label = prediction[keep], label[keep]
        for name, values in (("intersect", prediction[prediction == label]), ("prediction", prediction),
                             ("label", label)):  # fmt: skip
            values = values[(values >= 0) & (values < num_labels)]
            total[name] += np.bincount(values, minlength=num_labels)
    union = total["prediction"] + total["label"] - total["intersect"]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, accuracy = total["intersect"] / union, total["intersect"] / total["label"]
        overall = total["intersect"].sum() / total["label"].sum()
    with np.testing.suppress_warnings() as suppressed:
        suppressed.filter(RuntimeWarning)
        results = dict(zip(KEYS, (np.nanmean(iou), np.nanmean(accuracy), overall, iou, accuracy)))
    if nan_to_num is not None:
        results = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in results.items()}
    return results


def assert_same(actual, expected):
    assert set(actual) == set(KEYS)
    for key in KEYS:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-12, atol=0, equal_nan=True, err_msg=key)


def random_maps(rng, count=6, num_labels=7, low=-2, high=None):
    """Maps of different sizes with out-of-range predictions, ignored pixels and out-of-range references."""
    high = num_labels + 3 if high is None else high
    predictions, references = [], []
    for _ in range(count):
        shape = tuple(rng.integers(1, 40, size=2))
        predictions.append(rng.integers(low, high, size=shape))
        reference = rng.integers(0, num_labels + 2, size=shape)
        reference[rng.random(shape) < 0.2] = 255
        references.append(reference)
    return predictions, references


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "options",
    [{}, {"nan_to_num": 0}, {"nan_to_num": -1.0}, {"label_map": {1: 3, 3: 1, 8: 255}}, {"reduce_labels": True},
     {"label_map": {0: 2, 9: 0}, "reduce_labels": True}, {"ignore_index": 0}],
)  # fmt: skip
def test_equals_reference_on_random_maps(seed, options):
    rng = np.random.default_rng(seed)
    predictions, references = random_maps(rng)
    ignore_index = options.pop("ignore_index", 255)
    expected = reference_mean_iou(predictions, references, 7, ignore_index, **options)
    metric = MeanIoU(7, ignore_index=ignore_index, **options)
    metric.add_batch(predictions=predictions[:2], references=references[:2])  # streamed in uneven batches
    metric.add_batch(predictions=predictions[2:], references=references[2:])
    assert_same(metric.compute(), expected)
    assert_same(mean_iou(predictions, references, 7, ignore_index, **options), expected)


@pytest.mark.parametrize("ignore_index", [None, -100, -1, 0, 6, 7, 8, 300, 70_000])
def test_any_ignore_index_and_far_out_of_range_values(ignore_index):
    rng = np.random.default_rng(5)
    values = np.array([-100_000, -100, -1, 0, 1, 5, 6, 7, 8, 255, 300, 70_000, 10**9])
    predictions = [rng.choice(values, size=(9, 11)) for _ in range(3)]
    references = [rng.choice(values, size=(9, 11)) for _ in range(3)]
    expected = reference_mean_iou(predictions, references, 7, ignore_index)
    assert_same(mean_iou(predictions, references, 7, ignore_index), expected)


def test_evaluate_docstring_example():
    """The numbers printed in evaluate's own `mean_iou` documentation."""
    predictions = [np.array([[1, 2], [3, 4], [5, 255]]), np.array([[2, 7], [9, 2], [3, 6]]),
                   np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]])]  # fmt: skip
    references = [np.array([[0, 3], [5, 4], [6, 255]]), np.array([[1, 7], [9, 2], [3, 6]]),
                  np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]])]  # fmt: skip
    results = mean_iou(predictions, references, num_labels=10, ignore_index=255)
    assert results["mean_iou"] == pytest.approx(0.4775)
    assert results["mean_accuracy"] == pytest.approx(0.5916666666666666)
    assert results["overall_accuracy"] == pytest.approx(0.5263157894736842)
    np.testing.assert_allclose(results["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1])


def test_everything_ignored_is_nan():
    results = mean_iou([np.array([[1, 2], [0, 0]])], [np.full((2, 2), 255)], num_labels=3, ignore_index=255)
    assert np.isnan(results["mean_iou"]) and np.isnan(results["mean_accuracy"])
    assert np.isnan(results["overall_accuracy"])
    assert np.isnan(results["per_category_iou"]).all() and np.isnan(results["per_category_accuracy"]).all()
    with_zero = mean_iou([np.array([[1]])], [np.array([[255]])], num_labels=3, ignore_index=255, nan_to_num=0)
    assert with_zero["mean_iou"] == 0 and (with_zero["per_category_iou"] == 0).all()


def test_empty_metric_computes_nan():
    assert np.isnan(MeanIoU(4).compute()["mean_iou"])


def test_absent_classes_are_left_out_of_the_means():
    # class 0: IoU 1; class 1 predicted but absent from the references: IoU 0, accuracy NaN; class 2 absent: NaN
    results = mean_iou([np.array([[0, 0, 1]])], [np.array([[0, 0, 255]])], num_labels=3, ignore_index=255)
    np.testing.assert_array_equal(results["per_category_iou"], [1.0, np.nan, np.nan])  # the 1 sits on an ignored pixel
    results = mean_iou([np.array([[0, 1, 1]])], [np.array([[0, 0, 0]])], num_labels=3, ignore_index=255)
    np.testing.assert_allclose(results["per_category_iou"], [1 / 3, 0.0, np.nan])
    np.testing.assert_allclose(results["per_category_accuracy"], [1 / 3, np.nan, np.nan])
    assert results["mean_iou"] == pytest.approx(1 / 6)
    assert results["mean_accuracy"] == pytest.approx(1 / 3)
    # nan_to_num replaces NaNs after the means, exactly as evaluate does: the means do not change
    zeroed = mean_iou([np.array([[0, 1, 1]])], [np.array([[0, 0, 0]])], num_labels=3, ignore_index=255, nan_to_num=0)
    assert zeroed["mean_iou"] == pytest.approx(1 / 6)
    np.testing.assert_allclose(zeroed["per_category_iou"], [1 / 3, 0.0, 0.0])


def test_predictions_outside_the_label_range_only_enlarge_the_union():
    predictions = [np.array([[-1, 3, 255, 0]])]
    references = [np.array([[0, 0, 1, 0]])]
    results = mean_iou(predictions, references, num_labels=2, ignore_index=255)
    np.testing.assert_allclose(results["per_category_iou"], [1 / 3, 0.0])
    assert_same(results, reference_mean_iou(predictions, references, 2, 255))


def test_one_pixel_maps_and_different_sizes_in_one_batch():
    predictions = [np.array([[1]]), np.array([[0, 1, 2]]), np.zeros((5, 2), dtype=np.int64), np.array([[2]])]
    references = [np.array([[1]]), np.array([[0, 2, 2]]), np.ones((5, 2), dtype=np.int64), np.array([[255]])]
    metric = MeanIoU(3)
    metric.add_batch(predictions, references)
    assert_same(metric.compute(), reference_mean_iou(predictions, references, 3, 255))


def test_single_label_metric():
    results = mean_iou([np.array([[0, 0, 1]])], [np.array([[0, 255, 0]])], num_labels=1, ignore_index=255)
    assert results["mean_iou"] == pytest.approx(0.5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.uint16])
def test_numpy_torch_and_stacked_inputs_agree(dtype):
    rng = np.random.default_rng(1)
    predictions = rng.integers(0, 6, size=(3, 8, 9)).astype(dtype)
    references = rng.integers(0, 6, size=(3, 8, 9)).astype(dtype)
    references[:, 0] = 255
    expected = reference_mean_iou(list(predictions), list(references), 5, 255)
    for predictions_, references_ in (
        (predictions, references),  # one stacked [B, H, W] array
        (list(predictions), list(references)),
        (torch.from_numpy(predictions.astype(np.int64)), torch.from_numpy(references.astype(np.int64))),
        ([torch.from_numpy(p.astype(np.int64)) for p in predictions], list(references)),  # mixed
    ):
        metric = MeanIoU(5)
        metric.add_batch(predictions_, references_)
        assert_same(metric.compute(), expected)
    single = MeanIoU(5)
    for prediction, reference in zip(predictions, references):
        single.add_batch(prediction, reference)  # one [H, W] map at a time
    assert_same(single.compute(), expected)


def test_label_map_leaves_the_callers_references_untouched():
    reference = torch.tensor([[1, 2], [3, 255]])
    before = reference.clone()
    metric = MeanIoU(4, label_map={1: 2, 2: 1})
    metric.add_batch([torch.tensor([[2, 1], [3, 0]])], [reference])
    assert torch.equal(reference, before)
    assert metric.compute()["mean_iou"] == pytest.approx(1.0)


def test_bad_input_is_explained():
    metric = MeanIoU(3)
    with pytest.raises(ValueError, match="does not match its reference"):
        metric.add_batch([np.zeros((2, 3), dtype=np.int64)], [np.zeros((3, 2), dtype=np.int64)])
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        metric.add_batch([np.zeros((2, 2), dtype=np.int64)] * 2, [np.zeros((2, 2), dtype=np.int64)])
    with pytest.raises(TypeError, match="argmax"):
        metric.add_batch([np.zeros((2, 2), dtype=np.float32)], [np.zeros((2, 2), dtype=np.int64)])
    with pytest.raises(ValueError, match="num_labels"):
        MeanIoU(0)
    with pytest.raises(ValueError, match="shape"):
        metric.add_confusion(np.zeros((3, 3)))


def test_confusion_matrices_add_up():
    rng = np.random.default_rng(2)
    predictions, references = random_maps(rng, num_labels=4)
    first, second, whole = MeanIoU(4), MeanIoU(4), MeanIoU(4)
    first.add_batch(predictions[:3], references[:3])
    second.add_batch(predictions[3:], references[3:])
    whole.add_batch(predictions, references)
    first.add_confusion(second.confusion)
    assert torch.equal(first.confusion, whole.confusion)
    assert_same(first.compute(), reference_mean_iou(predictions, references, 4, 255))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_tensors_stay_on_the_gpu():
    metric = MeanIoU(5)
    metric.add_batch(torch.randint(0, 5, (2, 16, 16), device="cuda"), torch.randint(0, 5, (2, 16, 16), device="cuda"))
    assert metric.confusion.is_cuda


def test_in_package_evaluate_module_loads_offline_and_matches():
    rng = np.random.default_rng(3)
    predictions, references = random_maps(rng, low=0)
    predictions = [p.astype(np.uint8) for p in predictions]  # evaluate's Image() features store PNGs
    references = [r.astype(np.uint8) for r in references]
    module = evaluate.load(EVALUATE_MODULE_PATH, keep_in_memory=True)
    module.add_batch(predictions=predictions[:3], references=references[:3])
    results = module.compute(predictions=predictions[3:], references=references[3:], num_labels=7, ignore_index=255,
                             label_map={2: 4}, reduce_labels=True)  # fmt: skip
    assert_same(results, reference_mean_iou(predictions, references, 7, 255, label_map={2: 4}, reduce_labels=True))


# --- Trainer --------------------------------------------------------------------------------------------------------


def test_trainer_metric_streams_batches_and_resets():
    id2label = {0: "road", 1: "traffic light", 2: "sky"}
    metric = TrainerMeanIoU(3, id2label=id2label)
    logits = [torch.randn(2, 3, 4, 6), torch.randn(1, 3, 4, 6)]
    labels = [torch.randint(0, 3, (2, 32, 48)), torch.randint(0, 3, (1, 32, 48))]
    labels[0][0, :4] = 255
    labels[1][0, -3:] = -100  # Trainer's padding across processes
    assert metric(EvalPrediction(predictions=logits[0], label_ids=labels[0]), compute_result=False) == {}
    results = metric(
        EvalPrediction(predictions=(logits[1].numpy(),), label_ids=labels[1].numpy()), compute_result=True
    )

    upsampled = [F.interpolate(lg, size=(32, 48), mode="bilinear", align_corners=False).argmax(1) for lg in logits]
    references = torch.cat(labels).numpy()
    references[references == -100] = 255
    expected = flatten_results(reference_mean_iou(list(torch.cat(upsampled).numpy()), list(references), 3, 255),
                               id2label)  # fmt: skip
    assert list(results) == ["mean_iou", "mean_accuracy", "overall_accuracy", "iou_road", "iou_traffic light",
                             "iou_sky", "accuracy_road", "accuracy_traffic light", "accuracy_sky"]  # fmt: skip
    assert all(type(value) is float for value in results.values())
    assert results == pytest.approx(expected)
    assert metric.metric.confusion is None  # reset for the next evaluation


def test_trainer_metric_checks_shapes():
    metric = TrainerMeanIoU(3)
    with pytest.raises(ValueError, match="classes"):
        metric(
            EvalPrediction(predictions=torch.randn(1, 4, 2, 2), label_ids=torch.zeros(1, 8, 8)), compute_result=True
        )
    with pytest.raises(ValueError, match="one batch size"):
        metric(
            EvalPrediction(predictions=torch.randn(2, 3, 2, 2), label_ids=torch.zeros(1, 8, 8)), compute_result=True
        )


def test_with_trainer_batch_eval_metrics(tmp_path):
    """Trainer.evaluate with `batch_eval_metrics=True` gives the same mIoU as scoring the upsampled logits by hand."""
    from transformers import Trainer, TrainingArguments

    from fastfcn_hub import create_model

    model = create_model("fastfcn_r18_jpu_psp", num_labels=4, use_auxiliary_head=False).eval()
    samples = [{"pixel_values": torch.randn(3, 32, 48), "labels": torch.randint(0, 4, (32, 48))} for _ in range(5)]
    samples[0]["labels"][:8] = 255
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, batch_eval_metrics=True,
                             use_cpu=True, report_to=[], remove_unused_columns=False)  # fmt: skip
    trainer = Trainer(model=model, args=args, eval_dataset=samples, compute_metrics=TrainerMeanIoU(4))
    results = trainer.evaluate()
    with torch.no_grad():
        logits = model(pixel_values=torch.stack([s["pixel_values"] for s in samples])).logits
    predictions = F.interpolate(logits, size=(32, 48), mode="bilinear", align_corners=False).argmax(1)
    expected = reference_mean_iou(list(predictions.numpy()), [s["labels"].numpy() for s in samples], 4, 255)
    assert results["eval_mean_iou"] == pytest.approx(float(expected["mean_iou"]))
    assert results["eval_iou_0"] == pytest.approx(float(expected["per_category_iou"][0]), nan_ok=True)


# --- torch.distributed ----------------------------------------------------------------------------------------------

_RANK_SCRIPT = """
import json, sys
import numpy as np
import torch.distributed as dist
from fastfcn_hub.metrics import MeanIoU

rank, store, maps = int(sys.argv[1]), sys.argv[2], np.load(sys.argv[3])
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
metric = MeanIoU(7)
if rank == 0:  # rank 1 sees no data at all: it must still take part and contribute zeros
    metric.add_batch(maps["predictions"], maps["references"])
metric.all_reduce()
print(json.dumps({"mean_iou": float(metric.compute()["mean_iou"]), "pixels": int(metric.confusion.sum())}))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_all_reduce_sums_confusion_across_ranks(tmp_path):
    rng = np.random.default_rng(4)
    predictions = rng.integers(-1, 9, size=(3, 20, 30))
    references = rng.integers(0, 8, size=(3, 20, 30))
    references[:, :3] = 255
    np.savez(tmp_path / "maps.npz", predictions=predictions, references=references)
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK_SCRIPT, str(rank), str(tmp_path / "store"), str(tmp_path / "maps.npz")],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in range(2)
    ]
    outputs = [json.loads(process.communicate(timeout=300)[0]) for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0]
    expected = reference_mean_iou(list(predictions), list(references), 7, 255)["mean_iou"]
    assert outputs[0]["mean_iou"] == pytest.approx(expected) and outputs[1]["mean_iou"] == pytest.approx(expected)
    assert outputs[0]["pixels"] == outputs[1]["pixels"] == int((references != 255).sum())


def test_all_reduce_is_a_no_op_without_a_process_group():
    metric = MeanIoU(3)
    metric.all_reduce()
    assert metric.confusion is None
