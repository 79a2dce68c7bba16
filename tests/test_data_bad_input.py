"""Bad data on disk raises a clear error naming the path, when the dataset is built or the item read."""

import warnings

import numpy as np
import pytest
from PIL import Image

from csfr.data import DATASETS, DatasetCountWarning, build_dataset

FILE_DATASETS = sorted(set(DATASETS) - {"synthetic"})


def ade(tmp_path, n=2, size=(8, 9), label_values=None):
    """A tiny ADEChallengeData2016 training split; returns (root, image paths, label paths)."""
    base = tmp_path / "ADEChallengeData2016"
    images, labels = [], []
    for folder in ("training", "validation"):
        (base / "images" / folder).mkdir(parents=True)
        (base / "annotations" / folder).mkdir(parents=True)
    for i in range(n):
        image = base / "images" / "training" / f"ADE_train_{i:08d}.jpg"
        label = base / "annotations" / "training" / f"ADE_train_{i:08d}.png"
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(image)
        values = np.ones(size, np.uint8) if label_values is None else label_values
        Image.fromarray(values).save(label)
        images.append(image)
        labels.append(label)
    return tmp_path, images, labels


def build(root, split="train", name="ade20k"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetCountWarning)
        return build_dataset(name, root, split)


def test_missing_root_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*expected layout:\n.*ADEChallengeData2016"):
        build(tmp_path / "nowhere")


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_every_dataset_names_a_missing_or_empty_root_and_its_layout(tmp_path, name):
    layout = DATASETS[name].layout
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(FileNotFoundError) as err:
            build(root, DATASETS[name].splits[0], name)
        assert str(root) in str(err.value) and str(err.value).endswith(f"expected layout:\n{layout}")


def test_missing_split_folder_is_named(tmp_path):
    root, _, _ = ade(tmp_path)
    (root / "ADEChallengeData2016" / "annotations" / "validation").rmdir()
    with pytest.raises(FileNotFoundError, match=r"annotations/validation not found; expected layout"):
        build(root, "val")


def test_image_without_label_and_label_without_image_name_both_files(tmp_path):
    root, images, labels = ade(tmp_path, n=3)
    labels[0].unlink()
    images[1].unlink()
    with pytest.raises(ValueError) as err:
        build(root)
    text = str(err.value)
    assert f"image {images[0]} has no label" in text and "ADE_train_00000000.png" in text
    assert f"label {labels[1]} has no image" in text and "ADE_train_00000001.jpg" in text


def context(tmp_path, names=("2008_000002", "2008_000003")):
    """A tiny converted PASCAL Context train split; returns (root, image paths, label paths)."""
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets/SegmentationContext/train.txt").write_text("".join(f"{n}\n" for n in names))
    images = [voc / "JPEGImages" / f"{n}.jpg" for n in names]
    labels = [voc / "SegmentationClassContext" / f"{n}.png" for n in names]
    for image, label in zip(images, labels):
        Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(image)
        Image.fromarray(np.ones((6, 7), np.uint8)).save(label)
    return tmp_path, images, labels


def test_listed_image_without_label_and_label_without_image_name_both_files(tmp_path):
    root, images, labels = context(tmp_path)
    labels[0].unlink()
    images[1].unlink()
    with pytest.raises(ValueError) as err:
        build(root, name="pascal_context59")
    text = str(err.value)
    assert f"image {images[0]} has no label (expected {labels[0]}; listed in" in text
    assert f"label {labels[1]} has no image (expected {images[1]}; listed in" in text


def test_missing_split_list_is_named(tmp_path):
    root, _, _ = context(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"SegmentationContext/val.txt not found; expected layout"):
        build(root, "val", "pascal_context60")


def test_size_mismatch_names_both_files(tmp_path):
    root, images, labels = ade(tmp_path)
    Image.fromarray(np.ones((5, 5), np.uint8)).save(labels[1])
    ds = build(root)
    ds[0]
    with pytest.raises(ValueError, match=rf"size mismatch: image {images[1]} is 9x8 but label {labels[1]} is 5x5"):
        ds[1]


@pytest.mark.parametrize("what, index, keep", [("image", 1, 3), ("label", 0, 2)])
def test_truncated_file_is_named(tmp_path, what, index, keep):
    root, images, labels = ade(tmp_path)
    path = (images if what == "image" else labels)[index]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // keep])
    ds = build(root)
    with pytest.raises(ValueError, match=rf"cannot read {what} file {path} \(unreadable or truncated\)"):
        ds[index]


def test_a_file_that_is_no_image_is_named(tmp_path):
    root, images, _ = ade(tmp_path)
    images[0].write_text("not a JPEG")
    with pytest.raises(ValueError, match=rf"cannot read image file {images[0]}"):
        build(root)[0]


def test_unknown_raw_label_value_is_named_with_the_file(tmp_path):
    values = np.ones((8, 9), np.uint8)
    values[3, 4] = 200  # ADE20K raw ids stop at 150
    root, _, labels = ade(tmp_path, label_values=values)
    with pytest.raises(ValueError, match=rf"label file {labels[0]}: value 200 is not a known label id"):
        build(root)[0]


def test_rgb_label_file_is_refused(tmp_path):
    root, _, labels = ade(tmp_path)
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(labels[0])
    with pytest.raises(ValueError, match=rf"label file {labels[0]} has mode RGB"):
        build(root)[0]


def test_count_mismatch_is_a_warning_naming_both_numbers(tmp_path):
    root, _, _ = ade(tmp_path)
    with pytest.warns(DatasetCountWarning, match="found 2 images, the standard split has 20210"):
        build_dataset("ade20k", root, "train")


def test_unknown_dataset_and_split_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid names: ade20k, cityscapes"):
        build_dataset("ade21k", tmp_path, "train")
    root, _, _ = ade(tmp_path)
    with pytest.raises(ValueError, match="valid splits: train, val"):
        build_dataset("ade20k", root, "training")
