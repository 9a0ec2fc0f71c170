"""`python -m model_core` where a pipeline gets hurt: killed writes, clashing output names, truncated
audio, out-of-range options, and several inputs of which some are bad."""
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model_core import MemoryTalkerError, save_model, write_motion
from model_core.cli import main
from model_core.motion_io import FORMATS, MotionWriter
from tests.conftest import NUM_VERTICES, speech_like, tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model(tiny_model(), tmp_path_factory.mktemp("model") / "model")


def write_speech(path: Path, seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, speech_like(seconds, rate, seed)[0], rate)
    return path


def run_module(*args) -> subprocess.CompletedProcess:
    """`python -m model_core ARGS` in a process of its own, as a pipeline runs it."""
    return subprocess.run([sys.executable, "-m", "model_core", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def earlier_take(path: Path) -> bytes:
    """A complete motion file already at `path` (last week's take), as bytes."""
    write_motion(path, np.full((3, NUM_VERTICES, 3), 0.5, np.float32), 30.0, np.zeros((NUM_VERTICES, 3)))
    return path.read_bytes()


# -- item: output is written atomically ----------------------------------------------------------

# Streams half the frames to argv[1], says so and waits to be killed. A .npz packs its archive when
# the writer closes, so there the wait is inside the packing, after the displacements went in.
KILLED_WRITER = """
import sys, time
import numpy as np
from model_core.motion_io import MotionWriter

def wait_to_be_killed(*_, **__):
    print("writing", flush=True)
    time.sleep(600)

path = sys.argv[1]
vertices = 2000  # a block of 4 frames is 96 kB, past any write buffer: the bytes reach the disk
if path.endswith(".npz"):
    np.lib.format.write_array = wait_to_be_killed
with MotionWriter(path, 8, vertices, 30.0, np.zeros((vertices, 3))) as writer:
    writer.write(np.ones((4, vertices, 3)))
    if not path.endswith(".npz"):
        wait_to_be_killed()
    writer.write(np.ones((4, vertices, 3)))
"""


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_writer_killed_mid_write_leaves_the_earlier_file_intact(tmp_path, suffix):
    out = tmp_path / f"take{suffix}"
    earlier = earlier_take(out)
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    watchdog = threading.Timer(240, writer.kill)
    watchdog.start()
    try:
        said = writer.stdout.readline()
        writer.kill()  # SIGKILL: no handler, no finally runs
        writer.wait()
    finally:
        watchdog.cancel()
    assert said == "writing\n", writer.stderr.read()
    assert out.read_bytes() == earlier
    # Only the hidden partial file of the killed write may remain beside it.
    assert all(p.name.startswith(f".{out.name}.") and p.name.endswith(".partial")
               for p in tmp_path.iterdir() if p != out)


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_failed_write_keeps_the_earlier_file_and_leaves_nothing_behind(tmp_path, suffix):
    out = tmp_path / f"take{suffix}"
    earlier = earlier_take(out)
    with pytest.raises(RuntimeError, match="the model failed"):
        with MotionWriter(out, 6, NUM_VERTICES, 30.0, np.zeros((NUM_VERTICES, 3))) as writer:
            writer.write(np.ones((3, NUM_VERTICES, 3)))
            raise RuntimeError("the model failed")
    assert out.read_bytes() == earlier
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_finished_write_replaces_the_earlier_file_like_a_plain_write(tmp_path, suffix):
    out = tmp_path / f"take{suffix}"
    earlier = earlier_take(out)
    write_motion(out, np.ones((5, NUM_VERTICES, 3), np.float32), 30.0, np.zeros((NUM_VERTICES, 3)))
    assert out.read_bytes() != earlier
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a temporary file


def test_an_unwritable_output_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "take.npy"  # a folder that is a file
    with pytest.raises(MemoryTalkerError, match=re.escape(f"{out}: cannot write the motion file")):
        MotionWriter(out, 1, NUM_VERTICES, 30.0, np.zeros((NUM_VERTICES, 3)))


# -- item: inputs with the same name ---------------------------------------------------------------

def test_inputs_with_the_same_file_name_are_refused_before_any_work(tmp_path, capsys):
    first, second = write_speech(tmp_path / "a" / "line.wav"), write_speech(tmp_path / "b" / "line.wav")
    # The model folder does not exist: refusing the names must come before loading anything.
    code = main(["animate", str(first), str(second), "--model", str(tmp_path / "no-model"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and str(first) in err and str(second) in err
    assert "separate runs" in err and "no such model folder" not in err
    assert not (tmp_path / "out").exists()


def test_the_animate_help_says_that_clashing_names_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["animate", "--help"])
    assert "same file name are refused" in " ".join(capsys.readouterr().out.split())


# -- item: truncated WAV files ---------------------------------------------------------------------

def truncated_wav(path: Path, keep_audio_bytes: int | None = None) -> Path:
    """A 2.0 s 16-bit WAV cut after `keep_audio_bytes` bytes of audio (default: half, 1.0 s)."""
    write_speech(path, seconds=2.0)
    data = path.read_bytes()
    header = len(data) - 2 * 32000
    path.write_bytes(data[:header + (32000 if keep_audio_bytes is None else keep_audio_bytes)])
    return path


def test_the_cli_warns_about_a_truncated_wav_and_animates_what_is_there(tmp_path, model_dir):
    done = run_module("animate", truncated_wav(tmp_path / "cut.wav"), "--model", model_dir, "--out", tmp_path / "cut.npy")
    assert done.returncode == 0, done.stderr
    assert "truncated" in done.stderr and "2.00 s" in done.stderr and "1.00 s" in done.stderr
    assert np.load(tmp_path / "cut.npy").shape[0] == 30


def test_the_cli_refuses_a_wav_that_holds_nearly_nothing(tmp_path, model_dir, capsys):
    cut = truncated_wav(tmp_path / "cut.wav", keep_audio_bytes=6)
    code = main(["animate", str(cut), "--model", str(model_dir), "--out", str(tmp_path / "cut.npy")])
    err = capsys.readouterr().err
    assert code == 1 and f"error: {cut}: " in err and "6 bytes" in err and "re-export" in err
    assert "silent" not in err and not (tmp_path / "cut.npy").exists()


# -- item: out-of-range options ----------------------------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    (["animate", "x.wav", "--out", "x.npy", "--style-strength", "2"], "--style-strength: must be from 0 to 1, got 2"),
    (["animate", "x.wav", "--out", "x.npy", "--style-strength", "-0.5"], "must be from 0 to 1, got -0.5"),
    (["animate", "x.wav", "--out", "x.npy", "--style-strength", "nan"], "must be from 0 to 1, got nan"),
    (["animate", "x.wav", "--out", "x.npy", "--fps", "200"], "--fps: must be from 23.976 to 120, got 200"),
    (["animate", "x.wav", "--out", "x.npy", "--fps", "10"], "--fps: must be from 23.976 to 120, got 10"),
    (["evaluate", "--model", "m", "--data", "d", "--style-strength", "1.5"], "must be from 0 to 1, got 1.5"),
    (["train", "--stage", "1", "--data", "d", "--out", "o", "--augment", "--augment-prob", "1.5"],
     "--augment-prob: must be from 0 to 1, got 1.5"),
    (["train", "--stage", "1", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["train", "--stage", "1", "--data", "d", "--out", "o", "--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["train", "--stage", "1", "--data", "d", "--out", "o", "--num-workers", "-1"], "must be at least 0, got -1"),
])
def test_out_of_range_options_are_refused_before_any_work(argv, expected, capsys):
    # None of the paths exist: any work would have failed with another message.
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


def test_in_range_edges_are_accepted(tmp_path, model_dir, capsys):
    audio = write_speech(tmp_path / "line.wav")
    for fps, strength in (("23.976", "0"), ("120", "1")):
        assert main(["animate", str(audio), "--model", str(model_dir), "--out", str(tmp_path / "x.npy"),
                     "--fps", fps, "--style-strength", strength]) == 0


# -- item: messages and several inputs -------------------------------------------------------------

def test_one_frame_is_reported_in_the_singular(tmp_path, model_dir, capsys):
    audio = write_speech(tmp_path / "blip.wav", seconds=0.03)
    assert main(["animate", str(audio), "--model", str(model_dir), "--out", str(tmp_path / "blip.npy")]) == 0
    assert "(1 frame at 30 fps)" in capsys.readouterr().out


def test_several_inputs_go_on_past_a_bad_one_and_summarise(tmp_path, model_dir, capsys):
    good = write_speech(tmp_path / "good.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 8)
    later = write_speech(tmp_path / "later.wav", seed=1)
    code = main(["animate", str(good), str(bad), str(later), "--model", str(model_dir), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.npy", "later.npy"]
    error_line, summary = captured.err.strip().splitlines()[-2:]
    assert error_line.startswith(f"error: {bad}: cannot read this audio file") and error_line.count(str(bad)) == 1
    assert summary == f"1 of 3 inputs failed: {bad}"
    assert main(["animate", str(good), str(later), "--model", str(model_dir), "--out", str(tmp_path / "out")]) == 0
