"""What every converter shares: atomic writes, resuming after an interruption, the CLI and its errors."""

import numpy as np
import pytest
from PIL import Image

from csfr.data.prepare import CONVERTERS, main, parser


@pytest.fixture
def coco(tmp_path):
    """Three raw COCO-Stuff 164k annotation PNGs (values 0 and 255 only)."""
    folder = tmp_path / "annotations" / "val2017"
    folder.mkdir(parents=True)
    for n in range(3):
        Image.fromarray(np.full((4, 5), 255 * (n % 2), np.uint8)).save(folder / f"{n:012d}.png")
    return tmp_path


def outputs(root):
    return sorted(p.name for p in root.rglob("*_labelTrainIds.png"))


def test_a_failed_write_leaves_no_partial_file_and_a_rerun_finishes(coco, monkeypatch, capsys):
    real_save = Image.Image.save
    calls = []

    def failing_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:  # the second file: some bytes reach the disk, then the write fails
            with open(fp, "wb") as f:
                f.write(b"\x89PNG\r\n\x1a\n half")
            raise OSError("disk full")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        main(["coco_stuff164k", "--root", str(coco), "--workers", "1"])
    assert outputs(coco) == ["000000000000_labelTrainIds.png"]
    assert not [p for p in coco.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(Image.Image, "save", real_save)
    main(["coco_stuff164k", "--root", str(coco), "--workers", "1"])
    assert "wrote 2 files, skipped 1" in capsys.readouterr().out
    assert len(outputs(coco)) == 3
    for n in range(3):
        label = np.asarray(Image.open(coco / "annotations" / "val2017" / f"{n:012d}_labelTrainIds.png"))
        assert (label == 255 * (n % 2)).all()  # raw 0 (person) -> 0, 255 -> 255


def test_a_temp_file_left_by_a_killed_run_is_ignored(coco, capsys):
    stale = coco / "annotations" / "val2017" / ".000000000001_labelTrainIds.png.999.tmp"
    stale.write_bytes(b"half")
    main(["coco_stuff164k", "--root", str(coco), "--workers", "2"])
    assert "wrote 3 files, skipped 0" in capsys.readouterr().out


@pytest.mark.parametrize("dataset", sorted(CONVERTERS))
def test_missing_source_folder_is_named(tmp_path, dataset):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        main([dataset, "--root", str(tmp_path), "--workers", "1"])


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for word in [*CONVERTERS, "--root", "--workers", "--json", "idempotent", "atomic"]:
        assert word.lower() in text.lower(), word
    for dataset in CONVERTERS:
        with pytest.raises(SystemExit):
            parser().parse_args([dataset, "--help"])
        text = capsys.readouterr().out
        assert "--root PATH" in text and "--workers N" in text
        assert ("--json PATH" in text) == (dataset == "pascal_context")


def test_workers_must_be_positive(coco, capsys):
    with pytest.raises(SystemExit):
        main(["coco_stuff164k", "--root", str(coco), "--workers", "0"])
    assert "must be >= 1" in capsys.readouterr().err
