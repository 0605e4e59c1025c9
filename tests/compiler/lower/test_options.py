"""LowerOptions: the lowering's switches, one frozen record; names as the CLI spells them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.cli.main import main
from compiler.errors import ConfigError
from compiler.lower.options import LowerOptions
from examples import example_model


def test_every_rewrite_is_on_by_default() -> None:
    assert all(LowerOptions().to_dict().values())
    assert LowerOptions.rewrite_names() == [
        "winograd", "expand-depthwise", "blocked-depthwise", "conv-transpose", "resize-taps"]


def test_disabling_by_cli_names() -> None:
    opts = LowerOptions.disabling(["winograd", "expand_depthwise", " "])
    assert not opts.winograd and not opts.expand_depthwise and opts.resize_taps


def test_unknown_rewrite_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown rewrite 'wino'; known: winograd, "):
        LowerOptions.disabling(["wino"])


def test_fields_must_be_bools() -> None:
    with pytest.raises(ConfigError, match="winograd must be a bool"):
        LowerOptions(winograd="no")  # type: ignore[arg-type]


def test_cli_flag_reaches_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "a"
    assert main(["compile", str(example_model("digits_cnn")), "-o", str(out), "--no-verify",
                 "--bench-repeat", "0", "--disable-rewrite", "winograd,resize-taps",
                 "--disable-rewrite", "conv-transpose"]) == 0
    lowering = json.loads((out / "manifest.json").read_text())["lowering"]
    assert lowering == {"winograd": False, "expand_depthwise": True, "blocked_depthwise": True,
                        "conv_transpose": False, "resize_taps": False}
    capsys.readouterr()
    assert main(["compile", str(example_model("digits_cnn")), "-o", str(tmp_path / "b"),
                 "--disable-rewrite", "bogus"]) == 1
    assert "unknown rewrite 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
