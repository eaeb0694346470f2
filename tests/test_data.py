"""Data: Cityscapes' folder layout, hub / parquet sets, the synthetic generator, mmseg's pipeline, every error case."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from fastfcn_hub.data import (
    CityscapesEvalTransform,
    CityscapesTrainTransform,
    labelid_to_trainid_table,
    load_cityscapes,
    load_segmentation_dataset,
    make_synthetic_cityscapes,
    resolve_label_encoding,
)
from fastfcn_hub.data.transforms import RandomCropCatMax

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("cityscapes"), num_train=6, num_val=3, size=(48, 96))


def _write_pair(root: Path, split: str, stem: str, label: np.ndarray, kind: str = "labelIds") -> None:
    city = stem.split("_")[0]
    (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
    (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).integers(0, 255, (*label.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
    Image.fromarray(label.astype(np.uint8)).save(root / "gtFine" / split / city / f"{stem}_gtFine_{kind}.png")


# --- synthetic Cityscapes -----------------------------------------------------------------------------------------


def test_synthetic_layout_classes_and_determinism(synthetic_root, tmp_path):
    images = sorted((synthetic_root / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    labels = sorted((synthetic_root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))
    assert len(images) == len(labels) == 6
    assert len(list((synthetic_root / "leftImg8bit" / "val").glob("*/*.png"))) == 3
    assert {path.parent.name for path in images} == {"aachen", "bremen", "zurich"}
    present = set()
    for path in labels:
        label = np.array(Image.open(path))
        assert label.shape == (48, 96) and label.dtype == np.uint8
        present |= set(np.unique(label).tolist())
    # road, sidewalk, building, pole, vegetation, sky, car, ego vehicle (labelIds) appear in every few scenes
    assert {7, 8, 11, 17, 21, 23, 26, 1} <= present
    again = make_synthetic_cityscapes(tmp_path, num_train=6, num_val=0, size=(48, 96))
    first = sorted((again / "leftImg8bit" / "train").glob("*/*.png"))[0]
    assert first.read_bytes() == images[0].read_bytes()
    # scenes differ from one another: not one fixed picture
    assert not np.array_equal(np.array(Image.open(images[0])), np.array(Image.open(images[1])))


def test_synthetic_rejects_tiny_size(tmp_path):
    with pytest.raises(ValueError, match="at least"):
        make_synthetic_cityscapes(tmp_path, size=(8, 8))


# --- load_cityscapes --------------------------------------------------------------------------------------------


def test_load_cityscapes_maps_labelids_to_trainids(synthetic_root):
    dataset = load_cityscapes(synthetic_root, "val")
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 3
    assert dataset.column_names == ["image", "label"]
    row = dataset[0]
    assert row["image"].mode == "RGB" and row["image"].size == (96, 48)
    raw = np.array(Image.open(sorted((synthetic_root / "gtFine" / "val").glob("*/*_labelIds.png"))[0]))
    label = np.array(row["label"])
    np.testing.assert_array_equal(label, labelid_to_trainid_table()[raw])
    assert set(np.unique(label)) <= {*range(19), 255}
    assert 255 in label  # the ego vehicle
    assert (label[raw == 7] == 0).all() and (label[raw == 26] == 13).all() and (label[raw == 1] == 255).all()


def test_labelid_table_is_cityscapesscripts():
    from cityscapesscripts.helpers.labels import labels

    table = labelid_to_trainid_table()
    for label in labels:
        if 0 <= label.id < 256:
            expected = label.trainId if 0 <= label.trainId < 19 else 255
            assert table[label.id] == expected, label.name


def test_load_cityscapes_prefers_trainids_files(tmp_path):
    label = np.full((16, 32), 13, dtype=np.uint8)
    label[:, :4] = 255
    _write_pair(tmp_path, "train", "aachen_000000_000019", label, "trainIds")
    _write_pair(tmp_path, "train", "aachen_000000_000019", np.full((16, 32), 26), "labelIds")
    row = load_cityscapes(tmp_path, "train")[0]
    np.testing.assert_array_equal(np.array(row["label"]), label)


def test_error_root_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cityscapes(tmp_path / "nowhere")


def test_error_not_cityscapes_layout_says_what_is_missing(tmp_path):
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing gtFine/train") as error:
        load_cityscapes(tmp_path, "train")
    assert "images" in str(error.value)  # what was found instead


def test_error_split_without_images(tmp_path):
    (tmp_path / "leftImg8bit" / "val" / "x").mkdir(parents=True)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No images"):
        load_cityscapes(tmp_path, "val")


def test_error_image_without_label(tmp_path):
    _write_pair(tmp_path, "train", "aachen_000000_000019", np.full((8, 8), 7))
    _write_pair(tmp_path, "train", "aachen_000001_000019", np.full((8, 8), 7))
    (tmp_path / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\).*no .*labelIds.*aachen_000001"):
        load_cityscapes(tmp_path, "train")


def test_error_label_without_image(tmp_path):
    _write_pair(tmp_path, "train", "aachen_000000_000019", np.full((8, 8), 7))
    _write_pair(tmp_path, "train", "bremen_000001_000019", np.full((8, 8), 7))
    (tmp_path / "leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"label file\(s\).*no leftImg8bit.*bremen_000001"):
        load_cityscapes(tmp_path, "train")


def test_error_label_values_fit_no_encoding(tmp_path):
    _write_pair(tmp_path, "train", "aachen_000000_000019", np.full((8, 8), 100))
    with pytest.raises(ValueError, match=r"fit no .*unexpected values: \[100\]"):
        load_cityscapes(tmp_path, "train")


def test_error_trainids_file_with_labelid_values(tmp_path):
    _write_pair(tmp_path, "train", "aachen_000000_000019", np.full((8, 8), 26), "trainIds")
    with pytest.raises(ValueError, match=r"unexpected values: \[26\]"):
        load_cityscapes(tmp_path, "train")


def test_error_unreadable_file(tmp_path):
    _write_pair(tmp_path, "train", "aachen_000000_000019", np.full((8, 8), 7))
    broken = tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"Cannot read image .*aachen_000000_000019_leftImg8bit.png"):
        load_cityscapes(tmp_path, "train")


def test_error_image_and_label_sizes_differ(tmp_path):
    _write_pair(tmp_path, "train", "aachen_000000_000019", np.full((8, 8), 7))
    Image.fromarray(np.full((8, 9), 7, dtype=np.uint8)).save(
        tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    )
    with pytest.raises(ValueError, match="but its label"):
        load_cityscapes(tmp_path, "train")


# --- load_segmentation_dataset (parquet / hub) ------------------------------------------------------------------


def _parquet(tmp_path: Path, masks: list[np.ndarray], mask_column: str = "semantic_segmentation",
             palette: bool = False) -> Path:  # fmt: skip
    features = datasets.Features({"pixels": datasets.Image(), mask_column: datasets.Image()})
    images, labels = [], []
    for mask in masks:
        images.append(Image.fromarray(np.zeros((*mask.shape[:2], 3), dtype=np.uint8)))
        label = Image.fromarray(mask.astype(np.uint8))
        if palette:
            label = label.convert("P")
            label.putpalette([value for index in range(256) for value in (index, 255 - index, 7)])
        labels.append(label)
    path = tmp_path / "validation-00000.parquet"
    datasets.Dataset.from_dict({"pixels": images, mask_column: labels}, features=features).to_parquet(path)
    return path


def test_parquet_with_custom_columns_and_labelids(tmp_path):
    path = _parquet(tmp_path, [np.full((8, 8), 26), np.array([[7, 1], [33, 24]])])
    dataset = load_segmentation_dataset(path, "validation", image_column="pixels",
                                        label_column="semantic_segmentation", label_encoding="labelIds")  # fmt: skip
    assert dataset.column_names == ["image", "label"]
    assert dataset[0]["image"].mode == "RGB"
    np.testing.assert_array_equal(np.array(dataset[1]["label"]), [[0, 255], [18, 11]])
    # a folder of parquet files works the same, and "auto" sees labelIds (values above 18)
    auto = load_segmentation_dataset(tmp_path, "validation", image_column="pixels",
                                     label_column="semantic_segmentation")  # fmt: skip
    np.testing.assert_array_equal(np.array(auto[0]["label"]), np.full((8, 8), 13))


def test_parquet_trainids_and_palette_masks_keep_indices(tmp_path):
    mask = np.array([[0, 1], [18, 255]])
    path = _parquet(tmp_path, [mask], mask_column="label", palette=True)
    dataset = load_segmentation_dataset(path, "validation", image_column="pixels", label_encoding="trainIds")
    np.testing.assert_array_equal(np.array(dataset[0]["label"]), mask)  # never mapped through the palette


def test_parquet_errors(tmp_path):
    path = _parquet(tmp_path, [np.full((8, 8), 7)])
    with pytest.raises(ValueError, match=r"no label column 'mask'.*semantic_segmentation"):
        load_segmentation_dataset(path, image_column="pixels", label_column="mask")
    with pytest.raises(ValueError, match="no image column 'image'"):
        load_segmentation_dataset(path, label_column="semantic_segmentation")
    with pytest.raises(ValueError, match=r"unexpected values: \[7\]"):
        load_segmentation_dataset(path, image_column="pixels", label_column="semantic_segmentation",
                                  label_encoding="indices", num_labels=5)  # fmt: skip
    with pytest.raises(ValueError, match="not supported"):
        load_segmentation_dataset(path, image_column="pixels", label_column="semantic_segmentation",
                                  label_encoding="colours")  # fmt: skip
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="No \\*.parquet"):
        load_segmentation_dataset(tmp_path / "empty_dir")
    (tmp_path / "bad.parquet").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="Cannot read parquet"):
        load_segmentation_dataset(tmp_path / "bad.parquet")


def test_colour_masks_are_refused(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    rgb = Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8))
    path = tmp_path / "colour.parquet"
    datasets.Dataset.from_dict({"image": [rgb], "label": [rgb]}, features=features).to_parquet(path)
    with pytest.raises(ValueError, match="colour masks"):
        load_segmentation_dataset(path)


def test_unknown_hub_dataset_offline_is_clear():
    with pytest.raises(FileNotFoundError, match="neither a local path nor a loadable hub dataset"):
        load_segmentation_dataset("no-such-user/no-such-dataset", "validation")


def test_resolve_label_encoding():
    assert resolve_label_encoding([0, 5, 18, 255]) == "trainIds"
    assert resolve_label_encoding([0, 7, 26, 33]) == "labelIds"
    assert resolve_label_encoding([0, 3], "indices", num_labels=4) == "indices"
    with pytest.raises(ValueError, match="fit no"):
        resolve_label_encoding([40])


# --- transforms -------------------------------------------------------------------------------------------------


def _coded_pair(height: int = 40, width: int = 80) -> tuple[Image.Image, np.ndarray]:
    """An image whose colour encodes its label, to check image and label move together."""
    rng = np.random.default_rng(1)
    label = rng.integers(0, 19, size=(height // 4, width // 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    return Image.fromarray(np.stack([label * 10] * 3, axis=-1)), label


def test_train_transform_moves_image_and_label_together():
    image, label = _coded_pair()
    transform = CityscapesTrainTransform(scale=(80, 40), ratio_range=(1.0, 1.0), crop_size=(24, 48), photometric=False,
                                         image_mean=(0, 0, 0), image_std=(1, 1, 1), rescale_factor=1.0)  # fmt: skip
    torch.manual_seed(0)
    for _ in range(10):  # random crops and flips
        pixels, labels = transform.apply(image, label)
        assert pixels.shape == (3, 24, 48) and labels.shape == (24, 48) and labels.dtype == torch.int64
        torch.testing.assert_close(pixels[0], labels.float() * 10)


def test_train_transform_rescales_pads_and_normalises():
    image, label = _coded_pair(40, 80)
    transform = CityscapesTrainTransform(scale=(80, 40), ratio_range=(0.5, 0.5), crop_size=(32, 64))
    pixels, labels = transform.apply(image, label)  # rescaled to 20x40, padded to 32x64
    assert pixels.shape == (3, 32, 64) and labels.shape == (32, 64)
    assert (labels[20:] == 255).all() and (labels[:, 40:] == 255).all() and (labels[:20, :40] != 255).all()
    assert (pixels[:, 20:] == 0).all()  # padded after normalisation
    batch = transform({"image": [image, image], "label": [label, label]})
    assert len(batch["pixel_values"]) == 2 and batch["labels"][1].shape == (32, 64)


def test_normalisation_uses_model_config():
    from fastfcn_hub import variant_config

    config = variant_config("fastfcn_r18_jpu_psp")
    mean = np.round(np.array(config.image_mean) / config.rescale_factor).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(mean, (8, 8, 3)).copy())
    pixels, _ = CityscapesEvalTransform.from_config(config, scale=None).apply(image, np.zeros((8, 8)))
    assert pixels.abs().max() < 0.02


def test_cat_max_ratio_avoids_single_class_crops():
    mask = torch.zeros(1, 20, 200, dtype=torch.int64)
    mask[..., 170:] = 1  # class 1 only in the right 15%

    def share_of_good_crops(ratio: float) -> float:
        torch.manual_seed(0)
        crop = RandomCropCatMax((20, 40), cat_max_ratio=ratio)
        good = 0
        for _ in range(60):
            top, left, height, width = crop.make_params([tv_tensors.Mask(mask)])["box"]
            window = mask[..., left : left + width]
            good += int(0 < (window == 1).float().mean() < 0.75)
        return good / 60

    assert share_of_good_crops(0.75) > share_of_good_crops(1.0) + 0.3


def test_photometric_distortion_changes_image_not_label():
    image, label = _coded_pair()
    plain = CityscapesTrainTransform(scale=(80, 40), ratio_range=(1, 1), crop_size=(40, 80), flip_prob=0.0,
                                     photometric=False)  # fmt: skip
    distorted = CityscapesTrainTransform(scale=(80, 40), ratio_range=(1, 1), crop_size=(40, 80), flip_prob=0.0)
    changed = 0
    for seed in range(5):
        torch.manual_seed(seed)
        a_pixels, a_labels = plain.apply(image, label)
        torch.manual_seed(seed)
        b_pixels, b_labels = distorted.apply(image, label)
        torch.testing.assert_close(a_labels, b_labels)
        changed += int(not torch.allclose(a_pixels, b_pixels))
    assert changed >= 3


def test_eval_transform_keeps_label_resolution():
    image, label = _coded_pair(40, 80)
    pixels, labels = CityscapesEvalTransform(scale=(40, 20)).apply(image, label)
    assert pixels.shape == (3, 20, 40) and labels.shape == (40, 80)
    np.testing.assert_array_equal(labels.numpy(), label)


def test_transform_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="sizes differ"):
        CityscapesEvalTransform().apply(Image.new("RGB", (8, 8)), np.zeros((4, 8)))
