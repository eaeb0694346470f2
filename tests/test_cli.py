"""The `fastfcn-hub` console script: help, the variant listing, the foundation demo's error handling."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastfcn_hub.cli import COMMANDS, main
from fastfcn_hub.variants import list_models


def test_console_script_help_lists_every_command():
    # The script installed beside this interpreter: CI runs the tests without activating the venv, so not via PATH.
    script = Path(sys.executable).parent / "fastfcn-hub"
    assert script.exists(), f"console script not installed at {script}"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_models_lists_every_variant(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert f"{len(list_models())} variants" in out


def test_models_filters_and_prints_json(capsys):
    assert main(["models", "*jpu_psp*", "--released", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list_models("*jpu_psp*", released=True)
    assert all(row["hub_repo_id"] and row["miou"] for row in rows)


def test_unknown_command_fails_with_usage():
    result = subprocess.run([sys.executable, "-m", "fastfcn_hub.cli", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_bad_input_is_reported_without_traceback(tmp_path, capsys, monkeypatch):
    """Commands raise ValueError/OSError for bad input; the CLI prints the message and exits 2."""
    monkeypatch.delenv("FASTFCN_HUB_TRACEBACK", raising=False)
    not_a_checkpoint = tmp_path / "model.pth"
    not_a_checkpoint.write_bytes(b"this is not a checkpoint")
    assert main(["convert", str(not_a_checkpoint), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing half-written
    monkeypatch.setenv("FASTFCN_HUB_TRACEBACK", "1")
    with pytest.raises(ValueError):
        main(["convert", str(not_a_checkpoint), str(tmp_path / "out")])
