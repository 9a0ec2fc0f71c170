"""build.py: the extension zip is reproducible, passes Blender's checks, and installs, runs and
uninstalls in real Blender (bpy 5.0.1) from a temporary user folder, offline; Python 3.11 zips carry
mediapipe for automatic landmarks (without its declared requirements), Python 3.13 zips do not."""
from __future__ import annotations

import email.parser
import importlib.util
import json
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import build  # noqa: E402

bpy_spec = importlib.util.find_spec("bpy")
needs_bpy = pytest.mark.skipif(bpy_spec is None, reason="needs the bpy module")


def repack_installed(project: str, folder: Path) -> Path:
    """A wheel of an installed distribution, from the files its RECORD lists (no network needed)."""
    dist = distribution(project)
    tags = email.parser.Parser().parsestr(dist.read_text("WHEEL")).get_all("Tag")
    columns = zip(*(tag.split("-") for tag in tags))
    tag = "-".join(".".join(dict.fromkeys(column)) for column in columns)
    name = f"{build.canonical(dist.metadata['Name']).replace('-', '_')}-{dist.version}-{tag}.whl"
    base = Path(dist.locate_file(""))
    with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_STORED) as wheel:
        for file in dist.files:
            if file.parts[0] != ".." and "__pycache__" not in file.parts and (base / file).is_file():
                wheel.write(base / file, file.as_posix())
    return folder / name


def fake_wheel(folder: Path, project: str, version: str, requires: Iterable[str] = ()) -> Path:
    """A wheel with metadata only (any Python, any platform): enough for pip to resolve and download."""
    info = f"{build.canonical(project).replace('-', '_')}-{version}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    path = folder / f"{info.removesuffix('.dist-info')}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(zipfile.ZipInfo(name, build.FIXED_TIME), text)
    return path


# What the package index offers for the automatic landmark path, as fake wheels: mediapipe with its
# declared requirements (jax and the others build.py leaves out are not offered, so asking for them
# fails), and, for the packages pinned because Blender 4.2 ships numpy 1.24 (and opencv 4.12 needs
# numpy 2), newer releases that the pins must pass over.
LANDMARK_INDEX = [
    ("mediapipe", "0.10.21", ["absl-py", "attrs>=19.1.0", "flatbuffers>=2.0", "jax", "jaxlib", "matplotlib",
                              "numpy<2", "opencv-contrib-python", "protobuf<5,>=4.25.3", "sounddevice>=0.4.4",
                              "sentencepiece"]),
    ("protobuf", "4.25.9", []), ("protobuf", "5.29.5", []),
    ("attrs", "26.1.0", []),
    ("opencv-python-headless", "4.11.0.86", ["numpy>=1.23.5"]),
    ("opencv-python-headless", "4.12.0.88", ["numpy<2.3.0,>=2"]),
    *[("matplotlib", version, ["contourpy>=1.0.1", "cycler>=0.10", "fonttools>=4.28.2", "kiwisolver>=1.3.1",
                               f"numpy>={numpy}", "packaging>=20.0", "pillow>=9", "pyparsing>=3",
                               "python-dateutil>=2.7"]) for version, numpy in (("3.10.9", "1.23"), ("3.11.2", "1.25"))],
    ("contourpy", "1.3.2", ["numpy>=1.23"]), ("contourpy", "1.3.3", ["numpy>=1.25"]),
    ("cycler", "0.12.1", []), ("fonttools", "4.68.0", []), ("kiwisolver", "1.5.1", []), ("pillow", "13.0.0", []),
    ("pyparsing", "3.3.3", []), ("python-dateutil", "4.0.0", ["tzdata"]), ("tzdata", "2026.6", []),
    ("numpy", "2.2.6", []),
]
# What the landmark path adds to a 3.11 zip (packaging is shared with transformers).
LANDMARK_PROJECTS = {"mediapipe", "protobuf", "attrs", "opencv-python-headless", "matplotlib", "contourpy", "cycler",
                     "fonttools", "kiwisolver", "pillow", "pyparsing", "python-dateutil", "tzdata"}
MEDIAPIPE_LEFT_OUT = {"absl-py", "flatbuffers", "jax", "jaxlib", "opencv-contrib-python", "sounddevice",
                      "sentencepiece"}


def add_landmark_index(folder: Path) -> None:
    """LANDMARK_INDEX's fake wheels, but for releases the folder already has a (real) wheel of."""
    present = {p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in folder.glob("*.whl")}
    for project, version, requires in LANDMARK_INDEX:
        if f"{build.canonical(project).replace('-', '_')}-{version}" not in present:
            fake_wheel(folder, project, version, requires)


def installed_closure(requirements: list[str]) -> set[str]:
    """The installed distributions that `requirements` need on this machine."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = build.canonical(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in distribution(name).requires or []]
        except PackageNotFoundError:
            raise AssertionError(f"{name} is not installed in the test environment") from None
    return seen


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    for project in sorted(installed_closure(build.RUNTIME_REQUIREMENTS)):
        repack_installed(project, folder)
    add_landmark_index(folder)
    return folder


@pytest.fixture(scope="module")
def any_python_wheelhouse(tmp_path_factory) -> Path:
    """Fake wheels (for every Python) of the installed run-time dependencies, with their requirements, and
    the landmark path's index: enough to build a Python 3.13 zip offline here."""
    folder = tmp_path_factory.mktemp("any_python_wheelhouse")
    for project in sorted(installed_closure(build.RUNTIME_REQUIREMENTS)):
        dist = distribution(project)
        fake_wheel(folder, dist.metadata["Name"], dist.version, dist.requires or [])
    add_landmark_index(folder)
    return folder


def zip_wheels(path: Path) -> tuple[set[str], list[str]]:
    """The wheel files in a zip and the ones its manifest lists."""
    with zipfile.ZipFile(path) as archive:
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
        return ({n.removeprefix("wheels/") for n in archive.namelist() if n.startswith("wheels/")},
                [w.removeprefix("./wheels/") for w in manifest.get("wheels", [])])


@pytest.fixture(scope="module")
def built_per_python(any_python_wheelhouse, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist_per_python")
    common = ["--platform", "linux-x64", "--torch", "none", "--wheelhouse", str(any_python_wheelhouse),
              "--out", str(out)]
    assert build.main(["--python", "3.11", "3.13", *common]) == 0
    assert build.main(["--python", "3.11", "3.13", "--no-landmarks", *common]) == 0
    return {p.name.removeprefix("memorytalker-0.1.0-linux-x64-").removesuffix(".zip"): p for p in out.glob("*.zip")}


@pytest.fixture(scope="module")
def built(wheelhouse, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, str(ROOT / "build.py"), "--platform", "linux-x64", "--python", "3.11",
                           "--torch", "none", "--wheelhouse", str(wheelhouse), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("*.zip")
    return path, done.stdout


def test_the_zip_holds_the_addon_model_core_the_bundled_model_and_its_wheels(built):
    path, printed = built
    assert path.name == "memorytalker-0.1.0-linux-x64-py311-torch-none.zip"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
    assert names == sorted(names) and {"__init__.py", "operators.py", "model_core/__init__.py",
                                       "model_core/models/demo/model.safetensors",
                                       "model_core/models/demo/demo_head.obj"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    wheels = [n.removeprefix("wheels/") for n in names if n.startswith("wheels/")]
    projects = {build.wheel_project(Path(w)) for w in wheels}
    assert {"transformers", "safetensors", "soundfile", "soxr", "tqdm", "tokenizers"} <= projects
    assert not projects & build.BLENDER_SHIPS and not any(p.startswith("torch") for p in projects)
    assert manifest["wheels"] == [f"./wheels/{w}" for w in wheels]
    assert manifest["platforms"] == ["linux-x64"] and manifest["blender_version_max"] == "5.1.0"
    assert manifest["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert path.name in printed and "wheel transformers" in printed and "model_core/models" in printed


def test_the_same_inputs_give_the_same_zip(built, wheelhouse, tmp_path):
    path, _ = built
    assert build.main(["--platform", "linux-x64", "--python", "3.11", "--torch", "none",
                       "--wheelhouse", str(wheelhouse), "--out", str(tmp_path)]) == 0
    assert (tmp_path / path.name).read_bytes() == path.read_bytes()


@needs_bpy
def test_blender_validates_the_manifest_and_the_zip(built):
    path, _ = built
    scripts = Path(bpy_spec.submodule_search_locations[0]) / "5.0" / "scripts"
    spec = importlib.util.spec_from_file_location("blender_ext", scripts / "addons_core/bl_pkg/cli/blender_ext.py")
    blender_ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blender_ext)
    assert blender_ext.pkg_manifest_from_toml_and_validate_all_errors(str(ROOT / "blender_manifest.toml"), strict=True) \
        .__class__.__name__ == "PkgManifest"
    messages: list = []
    logger = blender_ext.MessageLogger(lambda kind, text: messages.append((kind, text)) or False)
    tags = str(scripts / "modules/_bpy_internal/extensions/tags.py")
    assert blender_ext.subcmd_author.validate(logger, source_path=str(path), valid_tags_filepath=tags), messages


INSTALL_SCRIPT = r'''
import json, os, sys, tempfile
user = sys.argv[2]
os.environ["BLENDER_USER_RESOURCES"] = user  # before bpy: nothing may touch the real user folder
import bpy
import addon_utils

module = "bl_ext.user_default.memorytalker"
repo = os.path.join(user, "extensions", "user_default")
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
report = {"installed": os.path.isfile(os.path.join(repo, "memorytalker", "blender_manifest.toml")),
          "enabled": addon_utils.check(module) == (True, True)}
package = sys.modules[module]
report["bundled_model"] = str(package.models.BUNDLED_MODEL)
site = os.path.join(user, "extensions", ".local", "lib", "python3.11", "site-packages")
report["wheels_unpacked"] = sorted(os.listdir(site)) if os.path.isdir(site) else []
bpy.ops.memorytalker.add_demo_head()
head = bpy.context.view_layer.objects.active
result = bpy.ops.memorytalker.generate("EXEC_DEFAULT", audio_path=sys.argv[3], device="CPU")
report["generate"] = sorted(result)
report["shape_keys"] = [k.name for k in head.data.shape_keys.key_blocks] if head.data.shape_keys else []
bpy.ops.preferences.addon_disable(module=module)
report["disabled"] = module not in bpy.context.preferences.addons
bpy.ops.extensions.package_uninstall(repo_directory=repo, pkg_id="memorytalker")
report["removed"] = not os.path.exists(os.path.join(repo, "memorytalker"))
report["wheels_left"] = os.listdir(site) if os.path.isdir(site) else []
print("REPORT " + json.dumps(report))
'''


@needs_bpy
def test_it_installs_enables_generates_and_uninstalls_in_blender(built, tmp_path):
    import soundfile as sf

    from tests.conftest import speech_like

    path, _ = built
    audio = tmp_path / "line.wav"
    sf.write(audio, speech_like(1.0, 16000, seed=2)[0], 16000)
    script = tmp_path / "install.py"
    script.write_text(INSTALL_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "user"), str(audio)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    line = next((x for x in done.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert line is not None, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(line.removeprefix("REPORT "))
    assert report["installed"] and report["enabled"]
    # Blender unpacked the bundled wheels on enabling (the test's own environment has the same
    # packages and comes first on sys.path here, so this is what shows the zip is complete).
    assert {"transformers", "safetensors", "soundfile.py", "soxr", "tqdm", "huggingface_hub"} <= set(report["wheels_unpacked"])
    assert report["bundled_model"].startswith(str(tmp_path / "user" / "extensions" / "user_default" / "memorytalker"))
    assert report["generate"] == ["FINISHED"] and report["shape_keys"][0] == "Basis" and len(report["shape_keys"]) > 1
    assert report["disabled"] and report["removed"] and report["wheels_left"] == []


def test_a_python_311_zip_carries_mediapipe_without_its_declared_requirements(built_per_python):
    wheels, listed = zip_wheels(built_per_python["py311-torch-none"])
    projects = {build.wheel_project(Path(w)) for w in wheels}
    assert LANDMARK_PROJECTS <= projects and sorted(wheels) == listed
    # mediapipe's other requirements are not on the index here: asking for them would have failed.
    assert not projects & MEDIAPIPE_LEFT_OUT and "numpy" not in projects
    # The releases that work with Blender 4.2's numpy 1.24, not the newest.
    assert {"opencv_python_headless-4.11.0.86-py3-none-any.whl", "matplotlib-3.10.9-py3-none-any.whl",
            "contourpy-1.3.2-py3-none-any.whl", "protobuf-4.25.9-py3-none-any.whl"} <= wheels


def test_a_python_313_zip_has_no_automatic_landmarks(built_per_python):
    assert set(built_per_python) == {"py311-torch-none", "py311-torch-none-no-landmarks", "py313-torch-none"}
    with_landmarks, _ = zip_wheels(built_per_python["py311-torch-none"])
    wheels, listed = zip_wheels(built_per_python["py313-torch-none"])
    assert not {build.wheel_project(Path(w)) for w in wheels} & LANDMARK_PROJECTS and sorted(wheels) == listed
    assert {build.wheel_project(Path(w)) for w in with_landmarks - wheels} == LANDMARK_PROJECTS
    assert wheels <= with_landmarks  # the same run-time wheels otherwise


def test_no_landmarks_leaves_them_out_of_a_python_311_zip(built_per_python):
    wheels, listed = zip_wheels(built_per_python["py311-torch-none-no-landmarks"])
    assert wheels == zip_wheels(built_per_python["py313-torch-none"])[0] and sorted(wheels) == listed


def test_bad_options_get_clear_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build.parse_args(["--platform", "amiga"])
    assert exit_info.value.code == 2 and "invalid choice: 'amiga'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.parse_args(["--wheelhouse", "/no/such/folder"])
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(build.BuildError, match="no CUDA build for macOS"):
        build.torch_requirement("cuda", "macos-arm64")


def test_help_explains_every_option():
    done = subprocess.run([sys.executable, str(ROOT / "build.py"), "--help"], capture_output=True, text=True)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    for option in ("--platform", "--python", "--torch", "--no-landmarks", "--wheelhouse", "--out", "Install from Disk",
                   "external Python", "placed by hand"):
        assert option in text
