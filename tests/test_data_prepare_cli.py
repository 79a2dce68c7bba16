"""python -m csfr.data.prepare for the names a user types: datasets that need no conversion say so,
the PASCAL Context presets' names run the one pascal_context converter, bad input is one line."""

import subprocess
import sys

import pytest

from csfr.data.prepare import main


@pytest.mark.parametrize("name, says", [("ade20k", "ADE20K needs no conversion"),
                                        ("synthetic", "need no conversion")])
def test_datasets_without_conversion_say_so(name, says, capsys, tmp_path):
    main([name, "--root", str(tmp_path)])
    assert says in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["pascal_context59", "pascal_context60"])
def test_pascal_context_preset_names_run_its_converter(name, tmp_path):
    with pytest.raises(FileNotFoundError, match="pascal_context: none of .*JPEGImages"):
        main([name, "--root", str(tmp_path)])


def test_missing_folder_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "csfr.data.prepare", "cityscapes", "--root", "/nonexistent/x"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("csfr.data.prepare: error: ")
    assert "Traceback" not in proc.stderr and "/nonexistent/x" in proc.stderr
