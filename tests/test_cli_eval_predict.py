"""`fastfcn-hub evaluate` and `fastfcn-hub predict` end to end on synthetic data, and their errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastfcn_hub import FastFCNImageProcessor, create_model
from fastfcn_hub.cli import main
from fastfcn_hub.data import load_cityscapes, make_synthetic_cityscapes
from fastfcn_hub.inference import predict_images, segment
from fastfcn_hub.metrics import MeanIoU

SIZE = (64, 128)


@pytest.fixture(scope="module")
def model_dir_light(tmp_path_factory):
    """A saved light model with Cityscapes' 19 class names (random weights)."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    from fastfcn_hub.labels import CITYSCAPES_CLASSES, id2label_from_names

    create_model("fastfcn_r18_jpu_psp", id2label=id2label_from_names(CITYSCAPES_CLASSES)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def cityscapes_test_images(tmp_path_factory):
    root = make_synthetic_cityscapes(tmp_path_factory.mktemp("cs"), num_train=0, num_val=0, num_test=3, size=SIZE,
                                     cities={"test": ["berlin", "bonn"]})  # fmt: skip
    return root / "leftImg8bit" / "test"


def test_evaluate_on_synthetic_matches_a_direct_computation(model_dir_light, tmp_path, capsys):
    output = tmp_path / "results" / "run.json"
    code = main(["evaluate", "--model", str(model_dir_light), "--dataset", "synthetic", "--synthetic-samples", "3",
                 "--synthetic-size", *map(str, SIZE), "--seed", "1", "--batch-size", "2", "--device", "cpu",
                 "--output", str(output)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "traffic light" in printed
    report = json.loads(output.read_text())
    assert output.with_suffix(".txt").read_text().startswith(report["model_name"])
    assert report["num_images"] == 3 and report["mode"] == "whole" and len(report["per_class"]) == 19

    from fastfcn_hub import FastFCNForSemanticSegmentation

    model = FastFCNForSemanticSegmentation.from_pretrained(model_dir_light).eval()
    dataset = load_cityscapes(make_synthetic_cityscapes(tmp_path / "again", num_train=0, num_val=3, size=SIZE, seed=1),
                              "val")  # fmt: skip
    metric = MeanIoU(19)
    processor = FastFCNImageProcessor.from_config(model.config)
    for row in dataset:
        pixel_values = processor(row["image"])["pixel_values"]
        metric.add_batch(segment(model, pixel_values).argmax(1), torch.from_numpy(np.asarray(row["label"]))[None])
    assert report["mean_iou"] == pytest.approx(float(metric.compute()["mean_iou"]))


def test_evaluate_slide_ms_flip_on_a_variant(tmp_path):
    output = tmp_path / "slide.json"
    code = main(["evaluate", "--model", "fastfcn_r18_jpu_aspp", "--dataset", "synthetic", "--synthetic-samples", "1",
                 "--synthetic-size", *map(str, SIZE), "--mode", "slide", "--crop-size", "64", "64", "--scales", "0.5",
                 "1.0", "--flip", "--output", str(output)])  # fmt: skip
    assert code == 0
    report = json.loads(output.read_text())
    assert report["setting"] == "slide 64x64 + ms(2)+flip" and report["scales"] == [0.5, 1.0] and report["flip"]


def test_predict_writes_label_pngs_and_overlays(model_dir_light, cityscapes_test_images, tmp_path):
    output_dir = tmp_path / "out"
    code = main(["predict", str(cityscapes_test_images), "--model", str(model_dir_light), "--output-dir",
                 str(output_dir), "--batch-size", "2"])  # fmt: skip
    assert code == 0
    labels = sorted(p.relative_to(output_dir / "labels").as_posix() for p in (output_dir / "labels").rglob("*.png"))
    assert labels == ["berlin/berlin_000000_000019_leftImg8bit.png", "berlin/berlin_000002_000019_leftImg8bit.png",
                      "bonn/bonn_000001_000019_leftImg8bit.png"]  # fmt: skip
    assert len(list((output_dir / "overlays").rglob("*.png"))) == 3

    from fastfcn_hub import FastFCNForSemanticSegmentation

    model = FastFCNForSemanticSegmentation.from_pretrained(model_dir_light).eval()
    image = Image.open(cityscapes_test_images / "bonn" / "bonn_000001_000019_leftImg8bit.png").convert("RGB")
    expected = next(predict_images(model, FastFCNImageProcessor.from_config(model.config), [image]))
    written = np.asarray(Image.open(output_dir / "labels" / labels[2]))
    assert written.dtype == np.uint8 and written.shape == SIZE
    np.testing.assert_array_equal(written, expected)
    overlay = Image.open(output_dir / "overlays" / labels[2])
    assert overlay.height >= SIZE[0] and overlay.width > SIZE[1]  # the legend sits beside the image


def test_predict_label_ids_for_the_benchmark_server(model_dir_light, cityscapes_test_images, tmp_path):
    from cityscapesscripts.helpers.labels import trainId2label

    train_ids, label_ids = tmp_path / "train", tmp_path / "label"
    image = str(cityscapes_test_images / "berlin" / "berlin_000000_000019_leftImg8bit.png")
    for output_dir, extra in ((train_ids, []), (label_ids, ["--format", "labelIds"])):
        assert main(["predict", image, "--model", str(model_dir_light), "--output-dir", str(output_dir),
                     "--no-overlay", *extra]) == 0  # fmt: skip
    assert not (label_ids / "overlays").exists()
    name = "berlin_000000_000019_leftImg8bit.png"
    train = np.asarray(Image.open(train_ids / "labels" / name))
    label = np.asarray(Image.open(label_ids / "labels" / name))
    for train_id in np.unique(train):
        assert (label[train == train_id] == trainId2label[int(train_id)].id).all()


def test_predict_errors(model_dir_light, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--model", str(model_dir_light)]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing-*.png"), "--model", str(model_dir_light)]) == 2
    assert "matches no images" in capsys.readouterr().err
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    assert main(["predict", str(tmp_path / "ok.png"), "--model", "no_such_model_name"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "ok.png"), "--model", str(model_dir_light), "--mode", "slide"]) == 2
    assert "--crop-size" in capsys.readouterr().err


def test_predict_unreadable_image_names_the_file(model_dir_light, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    assert main(["predict", str(tmp_path / "broken.png"), "--model", str(model_dir_light), "--output-dir",
                 str(tmp_path / "out")]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert "Cannot read" in error and "broken.png" in error


def test_predict_label_ids_need_a_cityscapes_model(tmp_path, capsys):
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    five = tmp_path / "five"
    create_model("fastfcn_r18_jpu_psp", num_labels=5).save_pretrained(five)
    assert main(["predict", str(tmp_path / "ok.png"), "--model", str(five), "--format", "labelIds"]) == 2
    assert "not Cityscapes' 19" in capsys.readouterr().err


def test_evaluate_model_whose_labels_do_not_match_the_dataset(tmp_path, capsys):
    five = tmp_path / "five"
    create_model("fastfcn_r18_jpu_psp", num_labels=5).save_pretrained(five)
    code = main(["evaluate", "--model", str(five), "--dataset", "synthetic", "--synthetic-samples", "1",
                 "--synthetic-size", *map(str, SIZE), "--output", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "predicts 5 classes" in error and "has 19" in error


def _write_parquet(path, image_size, label_size, label_value=1):
    import datasets

    image = Image.new("RGB", image_size, (120, 60, 30))
    label = Image.fromarray(np.full(label_size[::-1], label_value, dtype=np.uint8))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    datasets.Dataset.from_dict({"image": [image], "label": [label]}, features=features).to_parquet(str(path))
    return path


def test_evaluate_label_and_prediction_of_different_sizes(model_dir_light, tmp_path, capsys):
    parquet = _write_parquet(tmp_path / "val.parquet", image_size=(64, 48), label_size=(32, 24))
    code = main(["evaluate", "--model", str(model_dir_light), "--dataset", str(parquet), "--label-encoding",
                 "trainIds", "--output", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "the label is 32x24" in error and "64x48" in error


def test_evaluate_label_values_outside_the_models_classes(tmp_path, capsys):
    parquet = _write_parquet(tmp_path / "val.parquet", image_size=(64, 48), label_size=(64, 48), label_value=7)
    five = tmp_path / "five"
    create_model("fastfcn_r18_jpu_psp", num_labels=5).save_pretrained(five)
    code = main(["evaluate", "--model", str(five), "--dataset", str(parquet), "--label-encoding", "indices",
                 "--output", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "unexpected values: [7]" in error  # the loader checks every mask against the model's 5 classes


def test_evaluate_missing_dataset(model_dir_light, tmp_path, capsys):
    code = main(["evaluate", "--model", str(model_dir_light), "--dataset", str(tmp_path / "nowhere.parquet"),
                 "--output", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 2
    assert "error:" in capsys.readouterr().err
