"""Confusion matrix and scores against hand-computed values."""

import math
import warnings

import numpy as np
import pytest
import torch

from csfr.engine.metrics import confusion_matrix, scores, table


def test_confusion_matrix_and_scores_by_hand():
    label = torch.tensor([[0, 0, 1], [2, 255, 1]])
    pred = torch.tensor([[0, 1, 1], [2, 0, 0]])
    cm = confusion_matrix(pred, label, 3)
    assert cm.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]  # rows truth, columns prediction
    result = scores(cm, ("a", "b", "c"))
    assert result["per_class"]["a"]["IoU"] == pytest.approx(100 / 3, abs=1e-3)  # 1 / (2 + 2 - 1)
    assert result["per_class"]["c"]["IoU"] == pytest.approx(100.0)
    assert result["mIoU"] == pytest.approx(100 * 5 / 9, abs=1e-3)
    assert result["mAcc"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert result["aAcc"] == pytest.approx(60.0)
    assert result["pixels"] == 5


def test_class_absent_from_truth_and_prediction_is_left_out_of_the_means():
    cm = np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
    result = scores(cm, ("a", "b", "c"))
    assert result["per_class"]["c"]["IoU"] is None
    assert result["mIoU"] == pytest.approx(100 * (3 / 4 + 4 / 5) / 2, abs=1e-3)


def test_class_only_predicted_counts_as_zero_iou():
    cm = np.array([[2, 2], [0, 0]])
    result = scores(cm, ("a", "b"))
    assert result["per_class"]["b"]["IoU"] == 0.0
    assert result["per_class"]["b"]["Acc"] is None
    assert result["mIoU"] == pytest.approx(25.0)


def test_empty_matrix_gives_no_scores():
    result = scores(np.zeros((2, 2)), ("a", "b"))
    assert result["mIoU"] is None and result["aAcc"] is None
    assert "nan" in table(result)


@pytest.mark.parametrize("ignore_index", [255, -1, 0])
def test_matrix_matches_a_per_pixel_count_on_random_maps(ignore_index):
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (2, 17, 13), generator=gen)
    label[torch.rand(2, 17, 13, generator=gen) < 0.2] = ignore_index
    pred = torch.randint(0, 5, (2, 17, 13), generator=gen)
    cm = confusion_matrix(pred, label, 5, ignore_index)
    expected = np.zeros((5, 5), np.int64)
    for t, p in zip(label.flatten().tolist(), pred.flatten().tolist()):
        if t != ignore_index:
            expected[t, p] += 1
    assert (cm.numpy() == expected).all()
    assert math.isclose(scores(cm, list("abcde"))["aAcc"], 100 * np.trace(expected) / expected.sum(), abs_tol=1e-3)


@pytest.mark.parametrize("value", [3, 7, -1])
def test_label_outside_the_classes_is_named_before_counting(value):
    """A label equal to num_classes must not fall into the next row's counts or a reshape error."""
    label = torch.zeros(2, 2, dtype=torch.long)
    label[1, 0] = value
    with pytest.raises(ValueError, match=rf"label value {value} is neither in \[0, 3\) nor ignore_index 255"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), label, 3)


@pytest.mark.parametrize("value", [3, 4, -1])
def test_prediction_outside_the_classes_is_named(value):
    pred = torch.zeros(2, 2, dtype=torch.long)
    pred[0, 1] = value
    with pytest.raises(ValueError, match=rf"predicted class {value} is outside \[0, 3\)"):
        confusion_matrix(pred, torch.zeros(2, 2, dtype=torch.long), 3)


def test_prediction_at_an_ignored_pixel_is_neither_counted_nor_checked():
    label = torch.tensor([[0, 255]])
    assert confusion_matrix(torch.tensor([[1, 9]]), label, 2).tolist() == [[0, 1], [0, 0]]


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"prediction \(2, 3\) and label \(2, 2\) differ in shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), 3)


def test_table_lists_every_class_and_the_means():
    text = table(scores(np.eye(3) * 5, ("road", "sky", "car")))
    assert text.splitlines()[:2] == ["class     IoU     Acc", "-" * 21]  # as wide as "class", no wider
    assert all(name in text for name in ("road", "sky", "car", "mIoU", "mAcc", "aAcc"))
    assert "100.00" in text


def test_scores_rounded_to_four_decimals_and_table_text_exactly():
    """road: IoU 2/3, Acc 2/3; sidewalk only predicted: IoU 0, no Acc; sky absent: left out."""
    result = scores(np.array([[2, 1, 0], [0, 0, 0], [0, 0, 0]]), ("road", "sidewalk", "sky"))
    assert result == {"mIoU": 33.3333, "mAcc": 66.6667, "aAcc": 66.6667, "pixels": 3,
                      "per_class": {"road": {"IoU": 66.6667, "Acc": 66.6667}, "sidewalk": {"IoU": 0.0, "Acc": None},
                                    "sky": {"IoU": None, "Acc": None}}}
    assert table(result) == "\n".join([
        "class        IoU     Acc",
        "-" * 24,
        "road       66.67   66.67",
        "sidewalk    0.00     nan",
        "-" * 24,
        "1 of 3 classes absent from the ground truth and the predictions (not shown, not in the means)",
        "mIoU  33.33   mAcc  66.67   aAcc  66.67"])


@pytest.mark.parametrize("cm", [np.array([[2, 1, 0], [0, 0, 0], [0, 0, 0]]), np.zeros((2, 2), np.int64)],
                         ids=["absent class", "empty"])
def test_absent_classes_raise_no_numpy_warning(cm):
    """0/0 for an absent class is expected, not a warning for the user (nor a NaN mean)."""
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        scores(cm, [str(i) for i in range(len(cm))])
