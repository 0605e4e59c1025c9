"""Tile tuning for the embedded target: records written per layer, reused, never slower than
the default, kept when interrupted, refused when corrupted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compiler import api
from compiler.cli.main import main as cli_main
from compiler.embedded import tune as embedded_tune
from compiler.errors import TuningError
from compiler.pipeline import CompressionOptions
from targets import parse_target

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MODEL = EXAMPLES / "digits_cnn.onnx"
TARGET = "embedded -mac=8x8 -spad=64 -acc=16 -dma=8"


def _compile(tmp: Path, name: str, tuning_log: object) -> object:
    calib = dict(np.load(EXAMPLES / "digits_calib.npz"))
    return api.compile(MODEL, TARGET, output_dir=tmp / name, verify=False,
                       compression=CompressionOptions(quantize="int8", calibration=calib),
                       tuning_log=tuning_log)


def test_tuned_tiles_are_recorded_reused_and_never_slower(tmp_path: Path) -> None:
    report = api.tune_embedded(MODEL, TARGET, trials=40, log_dir=tmp_path / "logs")
    acc = parse_target(TARGET).accelerator
    folder = tmp_path / "logs" / "embedded" / acc.name
    records = json.loads((folder / "tiles.json").read_text())
    assert len(records) == len(report["workloads"]) >= 4
    for row in report["workloads"]:
        assert row["cycles"] <= row["default_cycles"]
    default = _compile(tmp_path, "default", False)
    tuned = _compile(tmp_path, "tuned", folder)
    assert tuned.manifest["embedded"]["tuned_layers"] == len(
        [r for r in tuned.manifest["embedded"]["layers"] if r["unit"] == "mac_array"])
    d, t = default.simulate(), tuned.simulate()
    assert t["cycles"] <= d["cycles"]
    assert report["after_cycles"] < report["before_cycles"]  # the search found something
    # same function, whatever the tiles
    q = default.quantize_input(np.load(EXAMPLES / "digits_data.npz")["input"][0])
    assert np.array_equal(default.run_int8(q), tuned.run_int8(q))
    # a second run measures nothing new
    again = api.tune_embedded(MODEL, TARGET, trials=40, log_dir=tmp_path / "logs")
    assert all(r.get("skipped") == "already tuned" for r in again["workloads"])


def test_interrupted_tuning_keeps_the_layers_measured(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = embedded_tune.TileRecords.update

    def update_then_interrupt(self, key, record):  # Ctrl-C right after the second layer
        real(self, key, record)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(embedded_tune.TileRecords, "update", update_then_interrupt)
    report = api.tune_embedded(MODEL, TARGET, trials=10, log_dir=tmp_path / "logs")
    assert report["stopped"] == "interrupted"
    acc = parse_target(TARGET).accelerator
    saved = json.loads((tmp_path / "logs" / "embedded" / acc.name / "tiles.json").read_text())
    assert len(saved) == 2 and len(report["workloads"]) == 2
    monkeypatch.setattr(embedded_tune.TileRecords, "update", real)
    resumed = api.tune_embedded(MODEL, TARGET, trials=10, log_dir=tmp_path / "logs")
    assert sum(r.get("skipped") == "already tuned" for r in resumed["workloads"]) == 2
    assert resumed["stopped"] is None


def test_corrupted_records_are_one_clear_error(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    acc = parse_target(TARGET).accelerator
    folder = tmp_path / "logs" / "embedded" / acc.name
    folder.mkdir(parents=True)
    (folder / "tiles.json").write_text('{"conv_1": {"tile": {"tile_h": 1}')
    with pytest.raises(TuningError, match="corrupted tile records"):
        _compile(tmp_path, "a", folder)
    rc = cli_main(["tune", str(MODEL), "-t", TARGET, "--log-dir", str(tmp_path / "logs"),
                   "--trials", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("hwcc: error:")
    assert "tiles.json" in err[0]
