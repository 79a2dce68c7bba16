"""Segmentation scores from a confusion matrix: per-class IoU and accuracy, mIoU, mAcc, aAcc."""

from __future__ import annotations

import numpy as np
import torch

from csfr.ops.layout import IGNORE_INDEX


def _first_outside(values: torch.Tensor, num_classes: int) -> int | None:
    """The first value outside [0, num_classes), or None (checked before counting: a value equal to
    num_classes would otherwise land in the next row's counts or break the reshape)."""
    outside = (values < 0) | (values >= num_classes)
    return int(values[outside][0]) if bool(outside.any()) else None


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[K, K] int64 counts, rows = ground truth, columns = prediction; ignore pixels are left out."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    valid = label != ignore_index
    truth, guess = label[valid].long(), pred[valid].long()
    bad = _first_outside(truth, num_classes)
    if bad is not None:
        raise ValueError(f"label value {bad} is neither in [0, {num_classes}) nor ignore_index {ignore_index}")
    bad = _first_outside(guess, num_classes)
    if bad is not None:
        raise ValueError(f"predicted class {bad} is outside [0, {num_classes})")
    flat = torch.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def scores(cm: torch.Tensor | np.ndarray, class_names: list[str] | tuple[str, ...]) -> dict:
    """mIoU / mAcc (means over classes that occur in the ground truth or the predictions, as
    MMSegmentation and the Cityscapes scripts do: a class with an empty union is NaN and left out),
    aAcc, and the per-class IoU and accuracy, in percent."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, truth, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (truth + predicted - tp)
        acc = tp / truth
    total = cm.sum()

    def pct(value):
        return None if np.isnan(value) else round(100.0 * float(value), 4)

    return {
        "mIoU": pct(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "mAcc": pct(np.nanmean(acc)) if np.isfinite(acc).any() else None,
        "aAcc": pct(tp.sum() / total) if total else None,
        "per_class": {name: {"IoU": pct(i), "Acc": pct(a)} for name, i, a in zip(class_names, iou, acc)},
        "pixels": int(total),
    }


def table(result: dict) -> str:
    """The summary and the per-class scores of the classes present (in the ground truth or the
    predictions) as a fixed-width text table; the absent classes, which have no score and are
    left out of the means, are counted in one line instead of a row of nan each."""
    present = {name: s for name, s in result["per_class"].items() if s["IoU"] is not None or s["Acc"] is not None}
    width = max([5, *map(len, present)])

    def fmt(value):
        return "   nan" if value is None else f"{value:6.2f}"

    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    lines += [f"{name:<{width}}  {fmt(s['IoU'])}  {fmt(s['Acc'])}" for name, s in present.items()]
    lines += ["-" * (width + 16)]
    absent = len(result["per_class"]) - len(present)
    if absent:
        lines.append(f"{absent} of {len(result['per_class'])} classes absent from the ground truth and the "
                     "predictions (not shown, not in the means)")
    lines += [f"mIoU {fmt(result['mIoU'])}   mAcc {fmt(result['mAcc'])}   aAcc {fmt(result['aAcc'])}"]
    return "\n".join(lines)
