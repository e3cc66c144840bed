"""Output options: their directory is made before a command starts (as pytest's --junitxml does), and one that
cannot be made is bad input then, not a failure at the end of a long run."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.console import check_outputs
from lab.errors import LabError


def test_a_missing_directory_is_made(tmp_path: Path) -> None:
    check_outputs(json_path=tmp_path / "results" / "deep" / "out.json", junit=None)
    assert (tmp_path / "results" / "deep").is_dir()


def test_a_directory_that_cannot_be_made_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(LabError, match=r"--junit .*cannot make its directory"):
        check_outputs(junit=tmp_path / "file" / "sub" / "r.xml")
