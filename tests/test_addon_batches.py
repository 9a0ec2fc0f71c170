"""Render-farm batches of the add-on's command line (`blender -c memorytalker batch --shard/--resume/--report`),
each run in its own process as a farm runs it, in real Blender (the bpy module)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

bpy = pytest.importorskip("bpy")

from memorytalker_addon import compat  # noqa: E402
from tests.blender_fixtures import addon, model_dir  # noqa: E402,F401,F811 (fixtures)
from tests.blender_fixtures import add_head, new_file  # noqa: E402
from tests.conftest import speech_like  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# `blender -c memorytalker ...` in a process of its own: the extension's command, on the bpy module.
# It ends as Blender ends a command, without the interpreter's teardown, which crashes the bpy 4.2
# and 4.5 modules (the worker is stopped first, as unregistering does when Blender quits).
COMMAND = ("import os, sys, bpy, memorytalker_addon; memorytalker_addon.register(); "
           "from memorytalker_addon import cli; code = cli.run(sys.argv[1:]); memorytalker_addon.unregister(); "
           "sys.stdout.flush(); sys.stderr.flush(); os._exit(code)")
LINE_SECONDS = (0.9, 0.5, 1.2, 0.7, 0.6)
# The same bytes from every run need the same thread count: the worker would otherwise choose its own
# from the load, and sums taken in another order round differently.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MEMORYTALKER_THREADS": "1"}


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> Path:
    """Five lines of dialogue of different lengths, in a folder."""
    folder = tmp_path_factory.mktemp("lines")
    for index, seconds in enumerate(LINE_SECONDS):
        sf.write(folder / f"line{index}.wav", speech_like(seconds, 16000, seed=index)[0], 16000)
    return folder


@pytest.fixture(scope="module")
def shot(addon, tmp_path_factory) -> Path:
    new_file()
    add_head(bpy.context.scene.collection)
    path = tmp_path_factory.mktemp("shot") / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


@pytest.fixture(scope="module")
def whole(shot, lines, model_dir, tmp_path_factory) -> Path:
    """The file one unsharded run writes."""
    out = tmp_path_factory.mktemp("whole") / "whole.blend"
    run(batch(shot, lines, model_dir, out))
    return out


def batch(shot: Path, lines: Path, model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", COMMAND, "batch", "--folder", str(lines), "--object", "Head", "--blend", str(shot),
            "--out", str(out), "--model", str(model_dir), "--device", "cpu", "--gap", "5", *extra]


def run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]


def takes_in(path: Path) -> dict[str, dict]:
    """Each take of the head in a saved file: where it starts, how long it is, and its keys and keyframes."""
    bpy.ops.wm.open_mainfile(filepath=str(path))
    head = bpy.data.objects["Head"]
    found = {}
    for name, record in json.loads(head["memorytalker_takes"]).items():
        blocks = [head.data.shape_keys.key_blocks[key] for key in record["keys"]]
        shapes = []
        for block in blocks:
            co = np.empty(len(block.data) * 3, np.float32)
            block.data.foreach_get("co", co)
            shapes.append(co)
        keyframes = {}
        for curve in compat.action_curves(bpy.data.actions[record["action"]]):
            points = np.empty(len(curve.keyframe_points) * 2, np.float32)
            curve.keyframe_points.foreach_get("co", points)
            keyframes[curve.data_path] = points
        found[name] = {"start": record["start"], "frames": record["frames"], "audio": Path(record["audio"]).name,
                       "shapes": np.stack(shapes), "keyframes": keyframes}
    return found


def same_takes(a: dict, b: dict) -> bool:
    return (a.keys() == b.keys() and all(
        a[n]["start"] == b[n]["start"] and a[n]["frames"] == b[n]["frames"] and a[n]["audio"] == b[n]["audio"]
        and np.array_equal(a[n]["shapes"], b[n]["shapes"])
        and a[n]["keyframes"].keys() == b[n]["keyframes"].keys()
        and all(np.array_equal(a[n]["keyframes"][k], b[n]["keyframes"][k]) for k in a[n]["keyframes"]) for n in a))


def report_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_three_shards_run_as_separate_processes_make_the_takes_of_one_run(shot, lines, model_dir, whole, tmp_path):
    shards = [subprocess.Popen(batch(shot, lines, model_dir, tmp_path / f"part{i}.blend", "--shard", f"{i}/3",
                                     "--report", str(tmp_path / f"part{i}.jsonl")),
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=ENV) for i in (1, 2, 3)]
    for shard in shards:
        assert shard.wait(timeout=300) == 0, shard.stderr.read()[-2000:]

    whole = takes_in(whole)
    assert sorted(whole) == [f"line{i}" for i in range(len(LINE_SECONDS))]
    # One after another, 5 frames apart, in one run as in the shards.
    starts = [whole[f"line{i}"]["start"] for i in range(len(LINE_SECONDS))]
    frames = [whole[f"line{i}"]["frames"] for i in range(len(LINE_SECONDS))]
    assert starts == [1 + sum(f + 5 for f in frames[:i]) for i in range(len(LINE_SECONDS))]
    parts = [takes_in(tmp_path / f"part{i}.blend") for i in (1, 2, 3)]
    assert sorted(name for part in parts for name in part) == sorted(whole)  # each line in exactly one shard
    assert same_takes({name: take for part in parts for name, take in part.items()}, whole)
    rows = [row for i in (1, 2, 3) for row in report_rows(tmp_path / f"part{i}.jsonl")]
    assert sorted(row["take"] for row in rows) == sorted(whole)
    assert all(row["frames"] == whole[row["take"]]["frames"] and row["start"] == whole[row["take"]]["start"]
               and row["seconds"] > 0 and "error" not in row for row in rows)


def test_a_killed_batch_resumes_without_making_its_finished_takes_again(shot, lines, model_dir, whole, tmp_path):
    out, stalled_report = tmp_path / "resumed.blend", tmp_path / "stalled.jsonl"
    # The run's report is a pipe: once the test has read the first line and closed the pipe, the run
    # stops at its next report line, with one or two takes saved, and is killed there.
    os.mkfifo(stalled_report)
    killed = subprocess.Popen(batch(shot, lines, model_dir, out, "--resume", "--report", str(stalled_report)),
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env=ENV)
    try:
        with open(stalled_report) as pipe:
            first = json.loads(pipe.readline())
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
    saved = takes_in(out)
    assert first["take"] in saved and 1 <= len(saved) <= 2

    report = tmp_path / "resumed.jsonl"
    run(batch(shot, lines, model_dir, out, "--resume", "--report", str(report)))
    rows = report_rows(report)
    assert sorted(row["take"] for row in rows if row.get("skipped")) == sorted(saved)
    assert sorted(row["take"] for row in rows if "skipped" not in row) == sorted(set(takes_in(out)) - set(saved))
    assert same_takes(takes_in(out), takes_in(whole))


def test_the_add_on_splits_lines_into_shards_as_model_core_does():
    from memorytalker_addon.cli import shard_positions
    from model_core.batches import shard_of

    names = [f"/lines/{name}.wav" for name in ("c", "a", "e", "b", "d", "g", "f")]
    for count in (1, 2, 3, 7, 9):
        for index in range(1, count + 1):
            assert shard_positions(names, (index, count)) == shard_of([Path(n) for n in names], (index, count))
