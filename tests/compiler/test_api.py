"""``compiler.compile`` as a user calls it: one read of the model, one parse of the target,
compression options and lowering options recorded in the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler import api
from compiler.frontend import importer
from compiler.lower.options import LowerOptions
from compiler.pipeline import CompressionOptions
from examples import EXAMPLES_DIR, example_model

DIGITS = example_model("digits_cnn")


def test_compile_reads_the_model_once_and_parses_the_target_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    parses: list[str] = []
    real_read, real_parse = importer.read_model, api.parse_target

    def counting_read(model):
        reads.append(str(model))
        return real_read(model)

    def counting_parse(target):
        parses.append(str(target))
        return real_parse(target)

    monkeypatch.setattr(importer, "read_model", counting_read)
    monkeypatch.setattr(api, "parse_target", counting_parse)
    calib = dict(np.load(EXAMPLES_DIR / "digits_calib.npz"))
    calib = {k: v[:8] for k, v in calib.items()}
    art = compiler.compile(DIGITS, "host", output_dir=tmp_path / "a",
                           compression=CompressionOptions(prune=0.25, calibration=calib,
                                                          prune_always=True))
    assert len(reads) == 1 and len(parses) == 1, (reads, parses)
    assert [p["name"] for p in art.manifest["passes"]] == [
        "canonicalize", "prune_channels", "recover"]
    # verified on the first calibration sample, not on random inputs
    assert art.manifest["verification"]["inputs"] == "given"


def test_manifest_records_the_lowering_options(tmp_path: Path) -> None:
    options = LowerOptions(winograd=False, resize_taps=False)
    art = compiler.compile(DIGITS, "host", output_dir=tmp_path / "a", lower_options=options,
                           verify=False)
    assert art.manifest["lowering"] == options.to_dict()
    assert LowerOptions.from_dict(art.manifest["lowering"]) == options
    default = compiler.compile(DIGITS, "host", output_dir=tmp_path / "b", verify=False)
    assert all(default.manifest["lowering"].values())
