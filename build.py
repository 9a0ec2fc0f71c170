"""Builds the installable Blender extension: one self-contained zip per platform and Python version.

    python build.py                                   # every platform, Python 3.11 and 3.13, CPU PyTorch
    python build.py --platform linux-x64 --python 3.11 --torch none --wheelhouse wheels/ --out dist/

Each zip holds the add-on (`memorytalker_addon`, as the extension's root package), `model_core` as a
sub-package with the bundled demo model, the manifest (platforms, wheels and Blender versions filled
in) and the wheels of every dependency for that platform and Python, without what Blender ships.
Python 3.11 zips also carry mediapipe and what its face mesh needs, for automatic landmarks
(`--no-landmarks` leaves them out); mediapipe has no Python 3.13 build, so 3.13 zips never do.
The same inputs give the same bytes (sorted entries, fixed timestamps).
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "memorytalker_addon"
CORE = ROOT / "model_core"
MANIFEST = ROOT / "blender_manifest.toml"

# pip platform tags per Blender platform, in the order pip should try them (it takes the first
# that matches). pip does not fall back from manylinux_2_28 to older glibc tags by itself.
PLATFORMS = {
    "linux-x64": [f"manylinux_2_{n}_x86_64" for n in range(28, 16, -1)] + ["manylinux2014_x86_64"],
    "windows-x64": ["win_amd64"],
    # Oldest first here: a package with several macOS builds gets the one that runs on most Macs.
    # PyTorch has only macosx_14_0 builds, so a zip with PyTorch needs macOS 14 or later.
    "macos-arm64": [f"macosx_{n}_0_arm64" for n in range(11, 16)],
}
# Python version -> (wheel ABI, Blender versions that run it: min inclusive, max exclusive)
PYTHONS = {"3.11": ("cp311", "4.2.0", "5.1.0"), "3.13": ("cp313", "5.1.0", None)}
TORCH_VARIANTS = ("cpu", "cuda", "none")
TORCH_VERSION = "2.13.0"
# Where each torch build comes from. PyPI's Linux torch is the CUDA build (with nvidia-* wheels);
# its Windows and macOS torch are CPU builds.
TORCH_INDEX = {
    ("cpu", "linux-x64"): "https://download.pytorch.org/whl/cpu",
    ("cuda", "windows-x64"): "https://download.pytorch.org/whl/cu128",
}
# The extension's own run-time needs (the synthetic-corpus speech engine stays out).
RUNTIME_REQUIREMENTS = ["transformers", "safetensors", "soundfile", "soxr", "tqdm"]
# Blender's Python already has these; bundling them would shadow Blender's own copies for every
# add-on (numpy 2 over Blender's 1.26 breaks them).
BLENDER_SHIPS = {"numpy", "requests", "certifi", "idna", "urllib3", "charset-normalizer", "zstandard", "cython"}
# pip evaluates environment markers for the machine it runs on, not the target. So resolving from
# Linux for Windows leaves out colorama (tqdm and click need it there), and torch's Linux-only
# nvidia-* requirements are asked for on every platform. Off Linux, torch is therefore fetched
# without its requirements and these (its requirements there) are fetched with the rest.
PLATFORM_EXTRAS = {"windows-x64": ["colorama"]}
TORCH_REQUIREMENTS_OFF_LINUX = ["filelock", "typing-extensions>=4.10.0", "setuptools>=77.0.3", "sympy>=1.13.3",
                                "networkx>=2.5.1", "jinja2", "fsspec>=0.8.5"]
# Automatic landmarks (memorytalker_addon/landmarks.py: mediapipe's face mesh on a rendered picture, read
# with cv2). mediapipe 0.10.21 has wheels for Python 3.11 and 3.12 only, so only 3.11 zips carry it; in
# 3.13 zips (Blender 5.1+) landmarks are placed by hand. mediapipe's declared requirements (jax, jaxlib,
# scipy, opencv-contrib-python, sounddevice, sentencepiece, ...: 245 MB of wheels for linux-x64, numpy
# aside) serve its other solutions and tasks, not the face mesh, so mediapipe is fetched without them
# (like torch off Linux) and LANDMARK_REQUIREMENTS, what importing it and running the face mesh fail
# without, are fetched, with their own requirements, with the rest: about 100 MB a zip. Blender 4.2 ships
# numpy 1.24.3 (4.5 and 5.0: 1.26.4) and numpy is never bundled, so every pick must work with numpy 1.24.
MEDIAPIPE = "mediapipe==0.10.21"
LANDMARK_REQUIREMENTS = [
    "protobuf>=4.25.3,<5",  # graphs and results; mediapipe's native bindings fail to initialise without it
    "attrs>=19.1.0",  # `import mediapipe` imports every solution, objectron's imports attr
    # cv2: mediapipe.solutions imports it (drawing_utils), and landmarks.py reads the render with it. The
    # headless build: no GUI libraries, smaller than the declared opencv-contrib-python; 4.12 needs numpy 2.
    "opencv-python-headless<4.12",
    "matplotlib<3.11",  # drawing_utils imports matplotlib.pyplot; 3.11 needs numpy>=1.25
    "contourpy<1.3.3",  # matplotlib's (not imported on this path); 1.3.3 needs numpy>=1.25
]
EXCLUDED_PARTS = {"__pycache__", ".pytest_cache"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo"}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    platform: str
    python: str

    @property
    def abi(self) -> str:
        return PYTHONS[self.python][0]

    @property
    def zip_name(self) -> str:
        return f"{self.platform}-py{self.python.replace('.', '')}"

    @property
    def has_landmark_build(self) -> bool:
        """Whether mediapipe (automatic landmarks) exists for this Python."""
        return self.python == "3.11"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_project(path: Path) -> str:
    return canonical(path.name.split("-")[0])


def torch_requirement(variant: str, platform: str) -> list[str]:
    if variant == "none":
        return []
    if variant == "cuda" and platform.startswith("macos"):
        raise BuildError("--torch cuda: PyTorch has no CUDA build for macOS; use --torch cpu there")
    return [f"torch=={TORCH_VERSION}"]


def download_wheels(target: Target, torch: str, wheelhouse: Path | None, cache: Path,
                    landmarks: bool = True) -> list[Path]:
    """The wheels of every run-time dependency for the target, without what Blender ships; with
    `landmarks`, also mediapipe and what its face mesh needs where mediapipe exists (Python 3.11)."""
    landmarks = landmarks and target.has_landmark_build
    folder = cache / f"{target.zip_name}-torch-{torch}{'' if landmarks else '-no-landmarks'}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    torch_pin = torch_requirement(torch, target.platform)
    separate_torch = bool(torch_pin) and not target.platform.startswith("linux")
    requirements = RUNTIME_REQUIREMENTS + PLATFORM_EXTRAS.get(target.platform, [])
    requirements += TORCH_REQUIREMENTS_OFF_LINUX if separate_torch else torch_pin
    requirements += LANDMARK_REQUIREMENTS if landmarks else []
    without_requirements = (torch_pin if separate_torch else []) + ([MEDIAPIPE] if landmarks else [])
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
               "--only-binary=:all:", "--python-version", target.python, "--implementation", "cp",
               "--abi", target.abi, "--dest", str(folder)]
    command += [f"--platform={tag}" for tag in PLATFORMS[target.platform]]
    if wheelhouse is not None:
        command += ["--no-index", "--find-links", str(wheelhouse)]
    else:
        if torch == "cuda":
            # A local CPU wheel (2.13.0+cpu sorts above 2.13.0) in a configured find-links folder
            # would win over the CUDA build: ignore pip's configuration.
            command.insert(command.index("download") + 1, "--isolated")
        if (torch, target.platform) in TORCH_INDEX:
            command += ["--extra-index-url", TORCH_INDEX[torch, target.platform]]
    calls = [command + requirements]
    if without_requirements:
        calls.append(command + ["--no-deps"] + without_requirements)
    for call in calls:
        done = subprocess.run(call, capture_output=True, text=True)
        if done.returncode != 0:
            where = f"in {wheelhouse}" if wheelhouse else "on the package index"
            raise BuildError(f"could not get the wheels for {target.platform} / Python {target.python} {where}:\n"
                             + done.stderr.strip()[-2000:])
    wheels = sorted(p for p in folder.glob("*.whl") if wheel_project(p) not in BLENDER_SHIPS)
    if torch == "none":
        wheels = [w for w in wheels if not wheel_project(w).startswith(("torch", "nvidia-", "triton"))]
    return wheels


def source_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not EXCLUDED_PARTS.intersection(p.relative_to(folder).parts)
                  and p.suffix not in EXCLUDED_SUFFIXES and not p.name.startswith("."))


def manifest_text(target: Target, wheels: list[Path]) -> str:
    """The source manifest with this zip's platforms, wheels and Blender version range."""
    text = MANIFEST.read_text()
    data = tomllib.loads(text)
    for key in ("platforms", "wheels", "blender_version_max"):
        if key in data:
            raise BuildError(f"{MANIFEST.name}: leave '{key}' out; build.py fills it in per zip")
    _, blender_min, blender_max = PYTHONS[target.python]
    generated = [f'platforms = ["{target.platform}"]']
    if blender_min > data["blender_version_min"]:
        text = text.replace(f'blender_version_min = "{data["blender_version_min"]}"', f'blender_version_min = "{blender_min}"')
    if blender_max:
        generated.append(f'blender_version_max = "{blender_max}"')
    if wheels:
        generated.append("wheels = [\n" + "".join(f'  "./wheels/{w.name}",\n' for w in wheels) + "]")
    first_table = re.search(r"^\[", text, re.M)
    cut = first_table.start() if first_table else len(text)
    return text[:cut].rstrip() + "\n" + "\n".join(generated) + "\n\n" + text[cut:]


def write_zip(path: Path, entries: list[tuple[str, Path | bytes]]) -> None:
    """A reproducible zip: sorted names, fixed timestamps and permissions; wheels stored as they are."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, source in sorted(entries, key=lambda e: e[0]):
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED if name.endswith(".whl") else zipfile.ZIP_DEFLATED
            archive.writestr(info, source if isinstance(source, bytes) else source.read_bytes())


def check_zip(path: Path) -> None:
    """What Blender's install does not check but a broken extension would show at run time."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
    listed = {w.removeprefix("./") for w in manifest.get("wheels", [])}
    present = {n for n in names if n.startswith("wheels/")}
    problems = [f"missing wheel {w}" for w in sorted(listed - present)]
    problems += [f"unlisted wheel {w}" for w in sorted(present - listed)]
    problems += [f"{n} should not be shipped" for n in names
                 if EXCLUDED_PARTS.intersection(n.split("/")) or n.endswith(tuple(EXCLUDED_SUFFIXES))]
    if "__init__.py" not in names or "model_core/__init__.py" not in names:
        problems.append("the add-on or its model_core sub-package is missing")
    if problems:
        raise BuildError(f"{path.name}: " + "; ".join(problems))


def summary(path: Path) -> str:
    """Size of the zip and of its contents by package."""
    groups: dict[str, int] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            parts = info.filename.split("/")
            if parts[0] == "wheels":
                key = "wheel " + wheel_project(Path(parts[1]))
            elif parts[0] == "model_core":
                key = "model_core/models" if parts[1] == "models" else "model_core"
            else:
                key = "add-on"
            groups[key] = groups.get(key, 0) + info.compress_size
    lines = [f"{path.name}: {path.stat().st_size / 2**20:.1f} MB"]
    lines += [f"  {size / 2**20:8.2f} MB  {key}" for key, size in sorted(groups.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def build(target: Target, torch: str, wheelhouse: Path | None, out: Path, cache: Path, landmarks: bool = True) -> Path:
    version = tomllib.loads(MANIFEST.read_text())["version"]
    wheels = download_wheels(target, torch, wheelhouse, cache, landmarks)
    entries: list[tuple[str, Path | bytes]] = [(p.relative_to(ADDON).as_posix(), p) for p in source_files(ADDON)]
    entries += [(("model_core" / p.relative_to(CORE)).as_posix(), p) for p in source_files(CORE)]
    entries += [(f"wheels/{w.name}", w) for w in wheels]
    entries.append(("blender_manifest.toml", manifest_text(target, wheels).encode()))
    tags = "" if torch == "cpu" else f"-torch-{torch}"
    # Only where it makes a difference: a 3.13 zip never has automatic landmarks.
    tags += "" if landmarks or not target.has_landmark_build else "-no-landmarks"
    path = out / f"memorytalker-{version}-{target.zip_name}{tags}.zip"
    write_zip(path, entries)
    check_zip(path)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build.py", description=__doc__.split("\n\n")[0],
        epilog="The zips install with Blender's Edit > Preferences > Get Extensions > Install from Disk, "
               "or by dropping them onto Blender.")
    parser.add_argument("--platform", nargs="+", choices=sorted(PLATFORMS), default=sorted(PLATFORMS),
                        help="Blender platforms to build for (default: all)")
    parser.add_argument("--python", nargs="+", choices=sorted(PYTHONS), default=sorted(PYTHONS),
                        help="Python versions: 3.11 for Blender 4.2-5.0, 3.13 for Blender 5.1+ (default: both)")
    parser.add_argument("--torch", choices=TORCH_VARIANTS, default="cpu",
                        help="cpu: bundle a CPU PyTorch (default); cuda: bundle a CUDA build, for self-hosting "
                             "(Linux, Windows); none: no PyTorch, the extension runs its worker in an external "
                             "Python set in its preferences")
    parser.add_argument("--no-landmarks", dest="landmarks", action="store_false",
                        help="leave mediapipe and what its face mesh needs out of the Python 3.11 zips (about "
                             "100 MB a zip): landmarks are then placed by hand, as in the 3.13 zips, whose "
                             "Python mediapipe does not support")
    parser.add_argument("--wheelhouse", type=Path,
                        help="build offline from this folder of wheels instead of the package index")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    if args.wheelhouse is not None and not args.wheelhouse.is_dir():
        parser.error(f"--wheelhouse {args.wheelhouse}: no such folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    built = []
    try:
        with tempfile.TemporaryDirectory() as cache:
            for platform in args.platform:
                for python in args.python:
                    built.append(build(Target(platform, python), args.torch, args.wheelhouse, args.out, Path(cache),
                                       args.landmarks))
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in built:
        print(summary(path))
        print(f"  sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
