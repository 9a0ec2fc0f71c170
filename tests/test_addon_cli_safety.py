"""The add-on's command line refuses bad arguments before it changes anything, and the worker reports
only its own failures, in real Blender (the bpy module)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

from tests.blender_fixtures import addon, model_dir, speech  # noqa: E402,F401,F811 (fixtures)
from tests.blender_fixtures import add_head, new_file  # noqa: E402


@pytest.fixture
def scene(addon):
    scene = new_file()
    add_head(scene.collection)
    return scene


@pytest.fixture
def shot(scene, tmp_path) -> Path:
    """A saved shot with the head, a camera and two meshes of the wrong size."""
    scene.collection.objects.link(bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera")))
    cube = bpy.data.meshes.new("Cube")
    cube.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    scene.collection.objects.link(bpy.data.objects.new("Cube", cube))
    dot = bpy.data.meshes.new("Dot")
    dot.from_pydata([(0, 0, 0)], [], [])
    scene.collection.objects.link(bpy.data.objects.new("Dot", dot))
    path = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


@pytest.fixture
def no_generation(monkeypatch):
    """Refused arguments must be refused before the model runs."""
    from memorytalker_addon import cli

    def generate(*args, **kwargs):
        raise AssertionError("the command line started generating before refusing its arguments")

    monkeypatch.setattr(cli, "_generate", generate)


def refused(argv: list[str], capsys) -> str:
    """Runs the command line, checks it exits 2, and returns what it printed as errors."""
    from memorytalker_addon import cli

    capsys.readouterr()
    assert cli.run(argv) == 2
    return capsys.readouterr().err


def nothing_written(shot: Path, original: bytes, out: Path) -> bool:
    return shot.read_bytes() == original and not out.exists() and not shot.with_suffix(".blend1").exists()


@pytest.mark.parametrize("fps", ["200", "-24", "0.4", "0", "nan"])
def test_an_invalid_frame_rate_is_refused_before_anything_is_saved(shot, model_dir, speech, tmp_path, capsys,
                                                                   no_generation, fps):
    original, out = shot.read_bytes(), tmp_path / "out.blend"
    for target in (out, shot):  # --out may be --blend: the user's shot must stay as it was
        error = refused(["generate", "--audio", str(speech), "--object", "Head", "--blend", str(shot),
                         "--out", str(target), "--model", str(model_dir), "--fps", fps], capsys)
        assert "--fps" in error and "23.976" in error and "120" in error
    assert nothing_written(shot, original, out)


@pytest.mark.parametrize("option,value,allowed", [
    ("--style-strength", "2", "from 0 to 1"), ("--style-strength", "-0.1", "from 0 to 1"),
    ("--tolerance-mm", "0", "from 0.001 to 10"), ("--tolerance-mm", "20", "from 0.001 to 10"),
])
def test_out_of_range_options_are_refused_not_clamped(shot, model_dir, speech, tmp_path, capsys, no_generation,
                                                      option, value, allowed):
    original, out = shot.read_bytes(), tmp_path / "out.blend"
    error = refused(["generate", "--audio", str(speech), "--object", "Head", "--blend", str(shot), "--out", str(out),
                     "--model", str(model_dir), option, value], capsys)
    assert option in error and allowed in error
    assert nothing_written(shot, original, out)


def test_the_ranges_are_the_panels(addon):
    from memorytalker_addon import settings

    properties = settings.MEMORYTALKER_PG_settings.bl_rna.properties
    for name, (low, high) in (("style_strength", settings.STYLE_STRENGTH_RANGE),
                              ("tolerance_mm", settings.TOLERANCE_MM_RANGE)):
        assert (properties[name].hard_min, properties[name].hard_max) == pytest.approx((low, high))


def test_a_negative_gap_is_refused(shot, model_dir, speech, tmp_path, capsys, no_generation):
    original, out = shot.read_bytes(), tmp_path / "out.blend"
    error = refused(["batch", "--folder", str(speech.parent), "--object", "Head", "--gap", "-5", "--blend", str(shot),
                     "--out", str(out), "--model", str(model_dir)], capsys)
    assert "--gap" in error and "0 or more" in error
    assert nothing_written(shot, original, out)


BAD_ARGUMENTS = {
    # name: (what replaces the good arguments, words the error must hold)
    "blend is not a .blend": ({"--blend": "{tmp}/notes.txt"}, ["notes.txt", ".blend"]),
    "blend is missing": ({"--blend": "{tmp}/missing.blend"}, ["missing.blend", "does not exist"]),
    "out in a missing folder": ({"--out": "{tmp}/renders/out.blend"}, ["renders", "does not exist"]),
    "out is a folder": ({"--out": "{tmp}/lines"}, ["is a folder", ".blend"]),
    "out is not a .blend": ({"--out": "{tmp}/out.txt"}, ["out.txt", ".blend"]),
    "object is a camera": ({"--object": "Camera"}, ["'Camera'", "camera", "not a mesh"]),
    "object is missing": ({"--object": "Nobody"}, ["'Nobody'", "Head"]),
    "object has the wrong vertex count": ({"--object": "Cube"}, ["'Cube' has 3 vertices", "5023"]),
    "object has one vertex": ({"--object": "Dot"}, ["'Dot' has 1 vertex but"]),
    "audio is a folder": ({"--audio": "{tmp}/lines"}, ["is a folder", "audio file"]),
    "audio is missing": ({"--audio": "{tmp}/missing.wav"}, ["missing.wav", "does not exist"]),
    "style audio is a folder": ({"--style-audio": "{tmp}/lines"}, ["--style-audio", "is a folder", "audio file"]),
    "style audio is missing": ({"--style-audio": "{tmp}/missing.wav"}, ["missing.wav", "does not exist"]),
    "model is not a model folder": ({"--model": "{tmp}/lines"}, ["not a MemoryTalker model folder"]),
    "model is missing": ({"--model": "{tmp}/nomodel"}, ["nomodel", "does not exist"]),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_are_refused_before_generating(shot, model_dir, speech, tmp_path, capsys, no_generation, case):
    (tmp_path / "lines").mkdir()
    (tmp_path / "notes.txt").write_text("not a blend file")
    original, out = shot.read_bytes(), tmp_path / "out.blend"
    replaced, words = BAD_ARGUMENTS[case]
    options = {"--audio": str(speech), "--object": "Head", "--blend": str(shot), "--out": str(out),
               "--model": str(model_dir)}
    options.update({key: value.format(tmp=tmp_path) for key, value in replaced.items()})
    error = refused(["generate", *[part for pair in options.items() for part in pair]], capsys)
    assert error.startswith("error: ") and all(word in error for word in words), error
    assert nothing_written(shot, original, out)


def test_bad_batch_folders_are_refused(shot, model_dir, speech, tmp_path, capsys, no_generation):
    original, out = shot.read_bytes(), tmp_path / "out.blend"
    common = ["--object", "Head", "--blend", str(shot), "--out", str(out), "--model", str(model_dir)]
    assert "does not exist" in refused(["batch", "--folder", str(tmp_path / "missing"), *common], capsys)
    assert "not a folder" in refused(["batch", "--folder", str(speech), *common], capsys)
    (tmp_path / "empty").mkdir()
    assert "holds no audio files" in refused(["batch", "--folder", str(tmp_path / "empty"), *common], capsys)
    assert "no sound strips" in refused(["batch", "--strips", *common], capsys)
    assert nothing_written(shot, original, out)


def test_the_operator_says_a_folder_is_not_an_audio_file(scene, model_dir, speech, tmp_path):
    options = dict(model_source='FOLDER', model_folder=str(model_dir), device='CPU')
    with pytest.raises(RuntimeError, match=f"the audio file {tmp_path} is a folder; choose an audio file"):
        bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(tmp_path), **options)
    with pytest.raises(RuntimeError, match="the style reference audio .* is a folder; choose an audio file"):
        bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(speech), style_audio=str(tmp_path), **options)
    assert bpy.data.objects["Head"].data.shape_keys is None


def test_a_failed_generation_names_its_audio_once(shot, model_dir, tmp_path, capsys):
    from memorytalker_addon import cli

    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    out = tmp_path / "out.blend"
    capsys.readouterr()
    assert cli.run(["generate", "--audio", str(broken), "--object", "Head", "--blend", str(shot), "--out", str(out),
                    "--model", str(model_dir), "--device", "cpu"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}: cannot read this audio file"), errors


# The worker --------------------------------------------------------------------------------------

def fake_python(folder: Path, name: str, script: str) -> str:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


def worker_logs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"memorytalker-worker-{os.getpid()}*"))


REQUEST = {"op": "generate"}


@pytest.mark.skipif(sys.platform == "win32", reason="fake interpreters are shell scripts")
def test_a_crash_report_shows_only_that_workers_log(tmp_path):
    from memorytalker_addon.worker_client import Worker, WorkerError

    before = worker_logs()
    noisy = Worker(fake_python(tmp_path, "noisy", 'echo "failure in $$" >&2; exit 3'))
    with pytest.raises(WorkerError, match="failure in") as first:
        noisy.run(REQUEST)
    first_log = noisy.log_path
    with pytest.raises(WorkerError) as second:
        noisy.run(REQUEST)  # a fresh start: its report holds its own line only
    assert str(second.value).count("failure in") == 1 and str(first.value) != str(second.value)
    assert not first_log.exists()  # at most the latest log is kept
    quiet = Worker(fake_python(tmp_path, "quiet", "exit 4"))
    with pytest.raises(WorkerError, match="exit code 4") as third:
        quiet.run(REQUEST)
    assert "failure in" not in str(third.value)
    noisy.stop()
    quiet.stop()
    assert worker_logs() == before  # a stopped worker leaves no log behind


@pytest.mark.skipif(sys.platform == "win32", reason="fake interpreters are shell scripts")
def test_the_worker_log_is_removed_when_blender_exits(tmp_path):
    python = fake_python(tmp_path, "idle", "echo waiting >&2; exec sleep 60")
    code = ("import sys; from memorytalker_addon import worker_client as w; worker = w.shared_worker(sys.argv[1]); "
            "worker.start(); print(worker.log_path, worker.process.pid, flush=True)")
    out = subprocess.run([sys.executable, "-c", code, python], capture_output=True, text=True, check=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    log, pid = Path(out[-2]), int(out[-1])
    assert log.name.startswith("memorytalker-worker-") and not log.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # and the worker ended with it


def test_the_interpreter_preference_is_named_when_the_worker_cannot_start(tmp_path):
    from memorytalker_addon.worker_client import Worker, WorkerError

    with pytest.raises(WorkerError, match="is a folder; name the Python executable"):
        Worker(str(tmp_path)).run(REQUEST)
    not_executable = tmp_path / "python"
    not_executable.write_text("")
    with pytest.raises(WorkerError, match="Python interpreter.*preferences") as error:
        Worker(str(not_executable)).run(REQUEST)
    assert str(error.value).count(str(not_executable)) == 1, error.value
    with pytest.raises(WorkerError, match="stopped \\(exit code 1\\) before the worker started.*"
                                         "Python interpreter.*preferences"):
        Worker("/bin/false").run(REQUEST)


def test_a_file_named_like_an_earlier_take_gets_its_own_take_and_the_same_file_replaces_its_own(
        shot, model_dir, speech, tmp_path, capsys):
    from memorytalker_addon import cli, takes

    first, second = tmp_path / "day1" / "line.wav", tmp_path / "day2" / "line.wav"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(speech.read_bytes())
    common = ["--object", "Head", "--blend", str(shot), "--out", str(shot), "--model", str(model_dir), "--no-sound"]
    for path in (first, second, first):
        assert cli.run(["generate", "--audio", str(path), *common]) == 0
    assert "the take of " + str(second.resolve()) + " is named 'line (2)'" in capsys.readouterr().out
    bpy.ops.wm.open_mainfile(filepath=str(shot))
    recorded = takes.records(bpy.data.objects["Head"])
    assert sorted(recorded) == ["line", "line (2)"]
    assert recorded["line"]["audio"] == str(first.resolve()) and recorded["line (2)"]["audio"] == str(second.resolve())


def test_an_object_that_is_not_a_mesh_is_named_with_its_type(scene, model_dir, speech):
    scene.collection.objects.link(bpy.data.objects.new("Empty", None))
    with pytest.raises(RuntimeError, match=r"'Empty' is not a mesh \(its type is empty\)"):
        bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(speech), object_name="Empty",
                                      model_source='FOLDER', model_folder=str(model_dir), device='CPU')
