"""Finding a model folder and reading what the extension needs from it, without importing torch."""
from __future__ import annotations

import json
from pathlib import Path

from .worker_client import model_core_root

# model_core ships the demo model inside its package (model_core/models/demo).
BUNDLED_MODEL = model_core_root() / "model_core" / "models" / "demo"
DEMO_HEAD_FILE = "demo_head.obj"  # the mesh the bundled model animates, beside its weights


class ModelFolderError(Exception):
    pass


def resolve_model_folder(source: str, folder: str) -> Path:
    if source == 'BUNDLED':
        if not (BUNDLED_MODEL / "config.json").is_file():
            raise ModelFolderError("this build of the extension has no bundled demo model; "
                                   "choose 'Model folder' and point it to a trained MemoryTalker model")
        return BUNDLED_MODEL
    if not folder:
        raise ModelFolderError("no model folder is set; choose a folder with config.json and model.safetensors")
    return Path(folder)


def model_vertex_count(folder: Path) -> int:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFolderError(f"{folder} is not a MemoryTalker model folder (no config.json); "
                               "choose the folder written by training or by import-official")
    try:
        config = json.loads(config_path.read_text())
        return int(config["config"]["num_vertices"])
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFolderError(f"{config_path} is not a valid model configuration ({error})") from error


def read_obj(path: Path) -> tuple[list[tuple[float, float, float]], list[tuple[int, ...]]]:
    """Vertices and faces of a plain OBJ file (v and f lines; indices may carry /vt/vn parts)."""
    vertices, faces = [], []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            kind, *fields = line.split() or [""]
            if kind == "v":
                vertices.append(tuple(float(x) for x in fields[:3]))
            elif kind == "f":
                faces.append(tuple(int(field.split("/")[0]) - 1 for field in fields))
    if not vertices or not faces:
        raise ValueError("no vertices or faces")
    return vertices, faces
