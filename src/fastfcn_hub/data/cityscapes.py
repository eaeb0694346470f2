"""Cityscapes (and other segmentation sets) as `datasets.Dataset`s with an `image` and a `label` column.

Every loader here keeps one row contract, so training, evaluation and the demo never care where data came from:
reading a row gives a PIL RGB `image` and a PIL `label` map in Cityscapes trainIds (0..18, 255 = ignore) or, for
other datasets, in class indices. Labels given as labelIds are mapped once, with cityscapesscripts' label table,
and every file is checked up front, so a broken dataset fails at load time with the file named, not hours into a run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IGNORE_INDEX = 255
NUM_CITYSCAPES_CLASSES = 19
LABEL_ENCODINGS = ("auto", "trainIds", "labelIds", "indices")
IMAGE_SUFFIX = "_leftImg8bit.png"


def labelid_to_trainid_table() -> np.ndarray:
    """[256] uint8 lookup from Cityscapes labelIds to trainIds (255 for every class not evaluated)."""
    from cityscapesscripts.helpers.labels import labels

    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < NUM_CITYSCAPES_CLASSES:
            table[label.id] = label.trainId
    return table


def _allowed_values(encoding: str, num_labels: int | None = None) -> set[int]:
    if encoding == "trainIds":
        return {*range(NUM_CITYSCAPES_CLASSES), IGNORE_INDEX}
    if encoding == "labelIds":
        from cityscapesscripts.helpers.labels import labels

        return {label.id for label in labels if label.id >= 0} | {IGNORE_INDEX}  # 255: license plate (-1) in uint8
    if encoding == "indices":
        if num_labels is None:
            raise ValueError("`label_encoding='indices'` needs `num_labels`.")
        return {*range(num_labels), IGNORE_INDEX}
    raise ValueError(f"`label_encoding={encoding!r}` is not supported; choose one of {LABEL_ENCODINGS}.")


def resolve_label_encoding(values: Iterable[int], encoding: str = "auto", num_labels: int | None = None) -> str:
    """Check the label values present against an encoding; with `"auto"`, pick the one they fit.

    `"auto"` prefers trainIds (values in 0..18 and 255) over labelIds (0..33): a labelIds map made only of ids up
    to 18 is indistinguishable from trainIds, so pass the encoding explicitly when you know it.
    """
    present = sorted({int(value) for value in values})
    candidates = ("trainIds", "labelIds") if encoding == "auto" else (encoding,)
    for candidate in candidates:
        if set(present) <= _allowed_values(candidate, num_labels):
            return candidate
    offending = sorted(set(present) - _allowed_values(candidates[-1], num_labels))
    raise ValueError(
        f"Label values {present[:40]} fit no {'known ' if encoding == 'auto' else ''}label encoding "
        f"({' / '.join(candidates)}); unexpected values: {offending[:20]}. Cityscapes labels must be trainIds (0..18, "
        "255 = ignore) or labelIds (0..33). Colour masks (*_gtFine_color.png) are not class indices. For another "
        "dataset, use `label_encoding='indices'` with `num_labels`."
    )


def _open_checked(path: str | os.PathLike, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"Cannot read {what} {path}: {error}") from error
    return image


def _label_array(label: Any, where: str) -> np.ndarray:
    """A 2-D integer array from a decoded label (PIL 'L'/'P'/'I' images or arrays); colour masks are refused."""
    array = np.asarray(label)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(
            f"The label of {where} has shape {array.shape}: labels must be single-channel class-index maps, not "
            "colour masks (RGB). Convert them to ids first."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"The label of {where} has dtype {array.dtype}; labels must hold integer class ids.")
    return array


def _cache_dir(files: list[str], tag: str) -> Path:
    """Where a mapped dataset is cached: a folder named from the files, their sizes and modification times."""
    import datasets

    digest = hashlib.sha256(tag.encode())
    for file in files:
        stat = os.stat(file)
        digest.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return Path(datasets.config.HF_DATASETS_CACHE) / "fastfcn_hub" / digest.hexdigest()[:24]


def _find_cityscapes_pairs(root: Path, split: str) -> tuple[list[str], list[str], list[bool]]:
    """(image paths, label paths, label-is-trainIds flags) of one split, with every layout problem reported."""
    if not root.is_dir():
        raise FileNotFoundError(f"Cityscapes root {root} does not exist.")
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    missing = [str(path.relative_to(root)) for path in (image_dir, label_dir) if not path.is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise FileNotFoundError(
            f"{root} is not a Cityscapes root for split {split!r}: missing {', '.join(missing)}. Expected "
            f"leftImg8bit/{split}/<city>/*{IMAGE_SUFFIX} and gtFine/{split}/<city>/*_gtFine_labelIds.png (or "
            f"*_gtFine_trainIds.png); found at the root: {found or 'nothing'}."
        )
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise FileNotFoundError(f"No images matching {image_dir}/<city>/*{IMAGE_SUFFIX}.")
    image_paths, label_paths, is_train_ids, unlabeled = [], [], [], []
    for image in images:
        stem = label_dir / image.parent.name / image.name.removesuffix(IMAGE_SUFFIX)
        train_ids, label_ids = Path(f"{stem}_gtFine_trainIds.png"), Path(f"{stem}_gtFine_labelIds.png")
        label = train_ids if train_ids.is_file() else label_ids if label_ids.is_file() else None
        if label is None:
            unlabeled.append(str(image.relative_to(root)))
            continue
        image_paths.append(str(image))
        label_paths.append(str(label))
        is_train_ids.append(label == train_ids)
    if unlabeled:
        raise FileNotFoundError(
            f"{len(unlabeled)} image(s) of split {split!r} have no *_gtFine_labelIds.png or *_gtFine_trainIds.png, "
            f"e.g. {unlabeled[:3]}."
        )
    stems = {Path(p).name.removesuffix(IMAGE_SUFFIX) for p in image_paths}
    orphans = [
        str(label.relative_to(root))
        for pattern in ("*/*_gtFine_labelIds.png", "*/*_gtFine_trainIds.png")
        for label in sorted(label_dir.glob(pattern))
        if label.name.split("_gtFine_")[0] not in stems
    ]
    if orphans:
        raise FileNotFoundError(
            f"{len(orphans)} label file(s) of split {split!r} have no leftImg8bit image, e.g. {orphans[:3]}."
        )
    return image_paths, label_paths, is_train_ids


def load_cityscapes(root: str | os.PathLike, split: str = "train"):
    """Cityscapes from its official folder layout as a `datasets.Dataset` with `image` and `label` columns.

    Reads `leftImg8bit/<split>/<city>/*_leftImg8bit.png` and, per image, `gtFine/<split>/<city>/*_gtFine_trainIds.png`
    when present, else `*_gtFine_labelIds.png`. Every file is opened and sized up front. labelIds maps are mapped to
    the 19 trainIds (everything else 255) once, with cityscapesscripts' table, and cached under
    `HF_DATASETS_CACHE/fastfcn_hub` (keyed by the files' paths, sizes and times, so edits invalidate it); trainIds
    maps are checked for values outside 0..18 / 255.

    Raises:
        FileNotFoundError: the root is not Cityscapes' layout (the message says what is missing), an image has no
            label file, or a label file has no image.
        ValueError: an unreadable file, an image and label of different sizes, or label values that fit no encoding.
    """
    import datasets

    root = Path(root).expanduser()
    image_paths, label_paths, is_train_ids = _find_cityscapes_pairs(root, split)
    for image_path, label_path in zip(image_paths, label_paths):
        image = _open_checked(image_path, "image")
        label = _open_checked(label_path, "label")
        if image.size != label.size:
            raise ValueError(f"{image_path} is {image.size} (w, h) but its label {label_path} is {label.size}.")

    features = datasets.Features({"image": datasets.Image(mode="RGB"), "label": datasets.Image()})
    if all(is_train_ids):
        for label_path in label_paths:
            resolve_label_encoding(np.unique(_label_array(Image.open(label_path), label_path)), "trainIds")
        return datasets.Dataset.from_dict({"image": image_paths, "label": label_paths}, features=features)

    table = labelid_to_trainid_table()

    def to_train_ids(path: str, train_ids: bool) -> dict[str, Any]:
        array = _label_array(Image.open(path), path)
        resolve_label_encoding(np.unique(array), "trainIds" if train_ids else "labelIds")
        mapped = array.astype(np.uint8) if train_ids else table[array]
        return Image.fromarray(mapped)

    generator_kwargs = {"image_paths": image_paths, "label_paths": label_paths, "is_train_ids": is_train_ids}

    def rows(image_paths: list[str], label_paths: list[str], is_train_ids: list[bool]):
        for image_path, label_path, train_ids in zip(image_paths, label_paths, is_train_ids):
            yield {"image": image_path, "label": to_train_ids(label_path, train_ids)}

    cache_dir = _cache_dir(label_paths, f"cityscapes|{split}|{root.resolve()}")
    try:
        # The fingerprint is the files' digest: the same files load from the cache, changed ones are mapped again.
        return datasets.Dataset.from_generator(
            rows, features=features, gen_kwargs=generator_kwargs, cache_dir=str(cache_dir),
            fingerprint=cache_dir.name,
        )  # fmt: skip
    except datasets.exceptions.DatasetGenerationError as error:  # surface our own message, not the wrapper's
        raise (error.__cause__ or error) from None


def load_segmentation_dataset(
    source: str | os.PathLike,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    label_encoding: str = "auto",
    num_labels: int | None = None,
):
    """A hub dataset id or local parquet file(s) / folder as a `datasets.Dataset` with `image` and `label` columns.

    Args:
        source: a hub dataset id (`"Chris1/cityscapes"`), a parquet file, a folder of parquet files, or a glob.
        split: the split to load (`"validation"`, `"val"`, ...; for local parquet files, files whose name contains
            the split name are used when there are several, else all).
        image_column / label_column: the columns holding the images and the masks.
        label_encoding: `"trainIds"`, `"labelIds"` (mapped to trainIds), `"indices"` (class indices 0..num_labels-1
            and 255, for other datasets) or `"auto"` (trainIds or labelIds, whichever the values fit). The values
            actually present in every mask are checked against it.
        num_labels: the number of classes, for `"indices"`.
    """
    import datasets

    dataset = _load_source(source, split)
    for role, column in (("image", image_column), ("label", label_column)):
        if column not in dataset.column_names:
            raise ValueError(
                f"{source!r} has no {role} column {column!r}; its columns are {dataset.column_names}. Pass "
                f"`{role}_column=`."
            )
    if label_encoding not in LABEL_ENCODINGS:
        raise ValueError(f"`label_encoding={label_encoding!r}` is not supported; choose one of {LABEL_ENCODINGS}.")
    dataset = dataset.select_columns([image_column, label_column])
    # Undecoded masks: no mode conversion ever (P -> L would map palette indices through the palette).
    dataset = dataset.cast_column(image_column, datasets.Image(mode="RGB")).cast_column(label_column, datasets.Image())
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    if label_column != "label":
        dataset = dataset.rename_column(label_column, "label")

    present: set[int] = set()
    for index, label in enumerate(dataset["label"]):
        present.update(np.unique(_label_array(label, f"row {index} of {source}")).tolist())
    encoding = resolve_label_encoding(present, label_encoding, num_labels)
    if encoding != "labelIds":
        return dataset
    table = labelid_to_trainid_table()

    def map_labels(batch: dict[str, list]) -> dict[str, list]:
        return {"label": [Image.fromarray(table[_label_array(label, str(source))]) for label in batch["label"]]}

    return dataset.map(map_labels, batched=True, batch_size=16, desc="labelIds -> trainIds")


def _load_source(source: str | os.PathLike, split: str):
    import datasets

    path = Path(source).expanduser()
    text = str(source)
    if path.exists() or any(char in text for char in "*?["):
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path] if path.exists() else None
        if files is not None:
            if not files:
                raise FileNotFoundError(f"No *.parquet files in {path}.")
            matching = [file for file in files if split in file.name]
            files = [str(file) for file in (matching or files)]
        try:
            return datasets.load_dataset("parquet", data_files=files or text, split="train")
        except Exception as error:
            raise ValueError(f"Cannot read parquet data from {source}: {error}") from error
    try:
        return datasets.load_dataset(text, split=split)
    except ValueError as error:  # an unknown split
        raise ValueError(f"Cannot load split {split!r} of {text!r}: {error}") from error
    except Exception as error:
        raise FileNotFoundError(
            f"{text!r} is neither a local path nor a loadable hub dataset ({type(error).__name__}: {error}). Offline, "
            "load a dataset once with network access (it is then cached), or pass local parquet files."
        ) from error


__all__ = [
    "IGNORE_INDEX",
    "LABEL_ENCODINGS",
    "labelid_to_trainid_table",
    "load_cityscapes",
    "load_segmentation_dataset",
    "resolve_label_encoding",
]
