"""The printed table shows the classes present and counts the absent ones instead of rows of nan."""

import numpy as np

from csfr.engine.metrics import scores, table


def test_table_shows_present_classes_and_counts_the_absent():
    names = [f"class{i}" for i in range(150)]
    cm = np.zeros((150, 150))
    cm[0, 0], cm[3, 0], cm[7, 7], cm[0, 9] = 5, 2, 4, 1  # class 9 only predicted: IoU 0, no accuracy
    rows = table(scores(cm, names)).splitlines()
    shown = [line.split()[0] for line in rows[2:] if line.startswith("class")]
    assert shown == ["class0", "class3", "class7", "class9"]
    assert rows[shown.index("class9") + 2].split()[1:] == ["0.00", "nan"]
    assert "146 of 150 classes absent from the ground truth and the predictions" in rows[-2]
    assert rows[-1].startswith("mIoU ") and sum("nan" in line for line in rows) == 1


def test_table_without_absent_classes_has_no_count_line():
    text = table(scores(np.eye(3) * 5, ("road", "sky", "car")))
    assert "absent" not in text and len(text.splitlines()) == 3 + 4
