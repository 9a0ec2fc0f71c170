"""`python -m model_core animate` as a farm runs it: shards that add up to one run, --resume after a
killed run, and a JSON-lines report (issue 21's batch part)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model_core import save_model
from model_core.cli import main
from tests.conftest import tiny_model
from tests.test_cli_safety import REPO, write_speech


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model(tiny_model(), tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("lines")
    # Given out of path order, some in a sub-folder: shards follow the sorted paths, not the order given.
    names = ["e", "a", "sub/c", "g", "b", "f", "sub/d"]
    return [write_speech(folder / f"{name}.wav", seconds=0.6, seed=k) for k, name in enumerate(names)]


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(folder.glob("*.npy"))}


def test_three_shards_write_exactly_what_one_run_writes(tmp_path, model_dir, lines, capsys):
    assert main(["animate", *map(str, lines), "--model", str(model_dir), "--out", str(tmp_path / "all")]) == 0
    whole = outputs(tmp_path / "all")
    assert len(whole) == len(lines)
    sharded: dict[str, np.ndarray] = {}
    for index in (1, 2, 3):
        out = tmp_path / f"shard{index}"
        assert main(["animate", *map(str, lines), "--model", str(model_dir), "--out", str(out),
                     "--shard", f"{index}/3"]) == 0
        written = outputs(out)
        assert 2 <= len(written) <= 3 and not set(written) & set(sharded)  # each input in one shard only
        sharded.update(written)
    assert sharded.keys() == whole.keys()
    assert all(np.array_equal(sharded[name], whole[name]) for name in whole)
    # The same shard of the inputs in another order is the same share.
    out = tmp_path / "reordered"
    assert main(["animate", *map(str, reversed(lines)), "--model", str(model_dir), "--out", str(out),
                 "--shard", "2/3"]) == 0
    assert outputs(out).keys() == outputs(tmp_path / "shard2").keys()


@pytest.mark.parametrize("shard", ["0/3", "4/3", "1/0", "2", "a/b"])
def test_a_wrong_shard_is_refused_before_any_work(shard, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["animate", "x.wav", "y.wav", "--out", "out", "--shard", shard])
    assert stop.value.code == 2 and "must be I/N with 1 <= I <= N" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="stalls the run on a named pipe")
def test_resume_after_a_killed_run_finishes_the_rest_without_redoing_any(tmp_path, model_dir, lines):
    inputs = []
    for line in lines:  # the same lines in one folder; the third, a named pipe, stalls the run there
        inputs.append(tmp_path / "inputs" / line.name)
        inputs[-1].parent.mkdir(exist_ok=True)
        if len(inputs) == 3:
            os.mkfifo(inputs[-1])
        else:
            shutil.copy(line, inputs[-1])
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    command = [sys.executable, "-m", "model_core", "animate", *map(str, inputs), "--model", str(model_dir),
               "--out", str(out), "--report", str(report)]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.npy"))) < 2 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # waiting on the pipe: nothing more comes
    run.kill()
    run.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    assert sorted(done_before) == sorted(f"{p.stem}.npy" for p in inputs[:2])
    inputs[2].unlink()
    shutil.copy(lines[2], inputs[2])

    assert subprocess.run(command + ["--resume"], cwd=REPO, capture_output=True, timeout=300).returncode == 0
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    assert len(after) == len(lines)
    assert all(after[name] == mtime for name, mtime in done_before.items())  # finished lines not redone
    reference = tmp_path / "reference"
    assert main(["animate", *map(str, lines), "--model", str(model_dir), "--out", str(reference)]) == 0
    assert all(np.array_equal(np.load(out / name), array) for name, array in outputs(reference).items())

    rows = [json.loads(line) for line in report.read_text().splitlines()]
    resumed = rows[-len(lines):]  # the --resume run's rows
    assert sum("skipped" in row for row in resumed) == len(done_before)
    assert all(row["frames"] > 0 and row["seconds"] >= 0 and "error" not in row for row in resumed if "skipped" not in row)
    assert {row["output"] for row in resumed} == {str(out / f"{p.stem}.npy") for p in inputs}


def test_the_report_names_a_failed_line_and_its_error(tmp_path, model_dir, lines):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio" * 10)
    report = tmp_path / "report.jsonl"
    assert main(["animate", str(lines[0]), str(bad), "--model", str(model_dir), "--out", str(tmp_path / "out"),
                 "--report", str(report)]) == 1
    good_row, bad_row = (json.loads(line) for line in report.read_text().splitlines())
    assert good_row["input"] == str(lines[0]) and good_row["frames"] > 0 and "error" not in good_row
    assert bad_row["input"] == str(bad) and "cannot read this audio file" in bad_row["error"] and "frames" not in bad_row
