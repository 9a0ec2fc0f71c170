"""Writing a generation into the scene as a *take*, and removing or rescaling one.

A take belongs to one object and is named after its audio. It owns exactly what it created: its
shape keys (or its Mesh Cache modifier), one action placed on its own NLA track of the shape-key
datablock, and its sound strip. A record on the object (`memorytalker_takes`, JSON) lists them by
name, so regenerating replaces only them and the user's own shape keys and animation are never
touched. Everything here runs on Blender's main thread; the bulk APIs (`foreach_set`) keep a
minute of motion to a fraction of a second.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from . import compat

RECORD = "memorytalker_takes"
APPLIED_INTENSITY = "memorytalker_applied_intensity"
LINEAR = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value


def records(obj: bpy.types.Object) -> dict[str, dict[str, Any]]:
    raw = obj.get(RECORD)
    return json.loads(raw) if isinstance(raw, str) else {}


def _save_records(obj: bpy.types.Object, value: dict[str, dict[str, Any]]) -> None:
    if value:
        obj[RECORD] = json.dumps(value)
    elif RECORD in obj:
        del obj[RECORD]


def take_name_for(audio_path: str) -> str:
    return (Path(audio_path).stem or "take")[:40]


def rest_positions(obj: bpy.types.Object) -> np.ndarray:
    """The neutral shape the motion is added to: the reference shape key, or the mesh itself."""
    key = obj.data.shape_keys
    points = key.reference_key.data if key is not None else obj.data.vertices
    co = np.empty(len(points) * 3, np.float32)
    points.foreach_get("co", co)
    return co.reshape(-1, 3)


def _keyframe_curve(fcurves, data_path: str, frames: np.ndarray, values: np.ndarray) -> None:
    curve = fcurves.new(data_path)
    curve.keyframe_points.add(len(frames))
    curve.keyframe_points.foreach_set("co", np.column_stack([frames, values]).astype(np.float32).ravel())
    curve.keyframe_points.foreach_set("interpolation", np.full(len(frames), LINEAR, np.int32))
    curve.update()


class TakeWriter:
    """Creates one take; on failure removes whatever it had created, leaving the scene as it was."""

    def __init__(self, scene: bpy.types.Scene, obj: bpy.types.Object, name: str, mute_other_takes: bool = True):
        self.scene, self.obj, self.name = scene, obj, name
        self.mute_other_takes = mute_other_takes
        self.record: dict[str, Any] = {"keys": [], "action": "", "track": "", "sound_strip": "", "modifier": "",
                                       "pc2": "", "created_basis": False}

    def write(self, mode: str, start: int, job_dir: Path, result: dict[str, Any], audio_path: str,
              add_sound_strip: bool, pc2_path: Path | None) -> list[str]:
        warnings: list[str] = []
        old = records(self.obj).get(self.name)
        try:
            frames = int(result["frames"])
            if mode == "shapekeys":
                shapes = np.load(job_dir / "shapes.npy")
                weights = np.load(job_dir / "weights.npy")
                self._shape_key_take(shapes, weights, start, slider=(-1.0, 1.0))
            elif mode == "exact":
                self._exact_take(np.load(job_dir / "displacements.npy", mmap_mode="r"), start)
            else:
                self._cache_take(job_dir / "motion.pc2", pc2_path, start)
            if add_sound_strip:
                warning = self._sound_strip(audio_path, start)
                if warning:
                    warnings.append(warning)
            if old is not None:
                self.record["created_basis"] |= bool(old.get("created_basis"))
                remove_take(self.scene, self.obj, self.name, keep_files=(old.get("pc2") == self.record["pc2"]))
            self._take_canonical_names()
            all_records = records(self.obj)
            all_records[self.name] = {**self.record, "mode": mode, "audio": audio_path, "start": start,
                                      "frames": frames, "max_error": result.get("max_error", 0.0)}
            _save_records(self.obj, all_records)
        except Exception:
            self._undo()
            raise
        self.scene.frame_start = min(self.scene.frame_start, start)
        self.scene.frame_end = max(self.scene.frame_end, start + frames - 1)
        return warnings

    # -- shape keys -------------------------------------------------------------------------------
    def _ensure_basis(self) -> bpy.types.Key:
        if self.obj.data.shape_keys is None:
            self.obj.shape_key_add(name="Basis", from_mix=False)
            self.record["created_basis"] = True
        return self.obj.data.shape_keys

    def _add_keys(self, displacement_of, count: int, slider: tuple[float, float]) -> list[str]:
        self._ensure_basis()
        reference = rest_positions(self.obj)
        names = []
        for index in range(count):
            block = self.obj.shape_key_add(name=f"{self.name}.{index:03d}", from_mix=False)
            names.append(block.name)
            self.record["keys"].append(block.name)
            block.data.foreach_set("co", (reference + displacement_of(index)).ravel())
            block.slider_min, block.slider_max = slider
            block.value = 0.0
        return names

    def _new_action(self) -> tuple[bpy.types.Action, Any]:
        key = self.obj.data.shape_keys
        action = bpy.data.actions.new(f"MT {self.name}")
        self.record["action"] = action.name
        action[APPLIED_INTENSITY] = 1.0
        return action, compat.action_fcurves(action, 'KEY', key.name)

    def _place_on_nla(self, action: bpy.types.Action, start: int) -> None:
        key = self.obj.data.shape_keys
        data = key.animation_data or key.animation_data_create()
        if self.mute_other_takes:  # the new take plays alone; earlier takes stay, muted and at rest
            for name, record in records(self.obj).items():
                track = data.nla_tracks.get(record.get("track") or "")
                if name != self.name and track is not None:
                    track.mute = True
                    for block_name in record["keys"]:  # a muted track leaves its last values behind
                        if block_name in key.key_blocks:
                            key.key_blocks[block_name].value = 0.0
        track = data.nla_tracks.new()
        track.name = f"MT {self.name}"
        self.record["track"] = track.name
        # The action runs from one frame before the clip to one after it, with every weight 0 there:
        # the face is neutral outside the clip (Blender keeps the last written value of a property
        # that nothing animates, so 'no extrapolation' would leave the last pose in place).
        strip = track.strips.new(self.name, start - 1, action)
        strip.blend_type = 'REPLACE'

    def _shape_key_take(self, shapes: np.ndarray, weights: np.ndarray, start: int, slider) -> None:
        names = self._add_keys(lambda i: shapes[i], len(shapes), slider)
        action, fcurves = self._new_action()
        frames = start - 1 + np.arange(len(weights) + 2, dtype=np.float32)
        padded = np.pad(weights, ((1, 1), (0, 0)))
        for index, name in enumerate(names):
            _keyframe_curve(fcurves, f'key_blocks["{bpy.utils.escape_identifier(name)}"].value',
                            frames, padded[:, index])
        self._place_on_nla(action, start)

    def _exact_take(self, displacements: np.ndarray, start: int) -> None:
        count = len(displacements)
        names = self._add_keys(lambda i: displacements[i], count, (0.0, 1.0))
        action, fcurves = self._new_action()
        for index, name in enumerate(names):
            # 1 on its own frame, 0 on the neighbours: exact at every frame, linear in between.
            _keyframe_curve(fcurves, f'key_blocks["{bpy.utils.escape_identifier(name)}"].value',
                            np.array([index - 1, index, index + 1], np.float32) + start,
                            np.array([0.0, 1.0, 0.0], np.float32))
        self._place_on_nla(action, start)

    # -- mesh cache -------------------------------------------------------------------------------
    def _cache_take(self, written: Path, target: Path, start: int) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        final = target
        if target.exists():  # an earlier take's cache stays readable until the new take is in place
            final = target.with_name(f"{target.stem}.new{target.suffix}")
        shutil.move(str(written), final)
        self.record["pc2"] = str(final)
        ours = {r["modifier"] for r in records(self.obj).values() if r.get("modifier")}
        for modifier in self.obj.modifiers:
            if self.mute_other_takes and modifier.name in ours:
                modifier.show_viewport = modifier.show_render = False
        modifier = self.obj.modifiers.new(f"MT {self.name}", 'MESH_CACHE')
        self.record["modifier"] = modifier.name
        modifier.cache_format = 'PC2'
        modifier.filepath = bpy.path.relpath(str(final)) if bpy.data.filepath else str(final)
        modifier.frame_start = start
        # 'Integrate' carries the user's own shape keys (blinks...) along instead of replacing them;
        # it needs faces, so a bare point cloud gets the cache positions as they are.
        modifier.deform_mode = 'INTEGRATE' if self.obj.data.polygons else 'OVERWRITE'
        self.obj.modifiers.move(len(self.obj.modifiers) - 1, 0)  # before anything that changes topology

    # -- sound ----------------------------------------------------------------------------------
    def _sound_strip(self, audio_path: str, start: int) -> str | None:
        strips = compat.all_strips(self.scene)
        channel = max((s.channel for s in strips), default=0) + 1
        try:
            strip = compat.sound_strip_collection(self.scene).new_sound(
                name=self.name, filepath=audio_path, channel=min(channel, 128), frame_start=start)
        except (RuntimeError, AttributeError) as error:
            return f"no sound strip was added ({error}); the animation was written"
        self.record["sound_strip"] = strip.name
        return None

    # -- bookkeeping -------------------------------------------------------------------------------
    def _take_canonical_names(self) -> None:
        """Names taken while an earlier version of the take still existed got a numeric suffix."""
        key = self.obj.data.shape_keys
        for index, name in enumerate(self.record["keys"]):
            # Renaming through RNA also fixes the F-curve paths.
            self.record["keys"][index] = _rename(key.key_blocks, name, f"{self.name}.{index:03d}")
        tracks = key.animation_data.nla_tracks if key is not None and key.animation_data else None
        for field, collection in (("action", bpy.data.actions), ("track", tracks), ("modifier", self.obj.modifiers)):
            if self.record[field]:
                self.record[field] = _rename(collection, self.record[field], f"MT {self.name}")
        if self.record["pc2"] and ".new." in Path(self.record["pc2"]).name:
            final = Path(self.record["pc2"]).with_name(Path(self.record["pc2"]).name.replace(".new.", "."))
            os.replace(self.record["pc2"], final)
            self.record["pc2"] = str(final)
            modifier = self.obj.modifiers[self.record["modifier"]]
            modifier.filepath = bpy.path.relpath(str(final)) if bpy.data.filepath else str(final)

    def _undo(self) -> None:
        _remove_parts(self.scene, self.obj, self.record, keep_files=False)


def _rename(collection, name: str, wanted: str) -> str:
    """Renames `collection[name]` to `wanted` when that name is free; returns the name it has."""
    if name != wanted and wanted not in collection:
        collection[name].name = wanted
        return wanted
    return name


def _remove_parts(scene, obj, record: dict[str, Any], keep_files: bool) -> None:
    key = obj.data.shape_keys
    if key is not None:
        data = key.animation_data
        if data is not None and record.get("track") in data.nla_tracks:
            data.nla_tracks.remove(data.nla_tracks[record["track"]])
        for name in record.get("keys", []):
            if name in key.key_blocks:
                obj.shape_key_remove(key.key_blocks[name])
    action = bpy.data.actions.get(record.get("action") or "")
    if action is not None:
        bpy.data.actions.remove(action)
    if record.get("modifier") and record["modifier"] in obj.modifiers:
        obj.modifiers.remove(obj.modifiers[record["modifier"]])
    if record.get("pc2") and not keep_files:
        Path(record["pc2"]).unlink(missing_ok=True)
    if record.get("sound_strip"):
        for strip in compat.all_strips(scene):
            if strip.name == record["sound_strip"]:
                compat.sound_strip_collection(scene).remove(strip)
                break
    key = obj.data.shape_keys
    if record.get("created_basis") and key is not None and len(key.key_blocks) == 1:
        # The shape keys were ours alone: leave the mesh as it was before the first take.
        data = key.animation_data
        if data is None or (data.action is None and not data.nla_tracks and not data.drivers):
            obj.shape_key_clear()


def remove_take(scene: bpy.types.Scene, obj: bpy.types.Object, name: str, keep_files: bool = False) -> None:
    all_records = records(obj)
    record = all_records.pop(name, None)
    if record is None:
        return
    _remove_parts(scene, obj, record, keep_files)
    _save_records(obj, all_records)


def apply_intensity(action: bpy.types.Action) -> None:
    """Rescales the take's weight curves from the intensity last applied to the one now set, and
    widens its keys' slider ranges so the scaled weights do not clamp."""
    applied = float(action.get(APPLIED_INTENSITY, 1.0))
    wanted = float(action.memorytalker_intensity)
    if applied == wanted:
        return
    for curve in compat.action_curves(action):
        points = curve.keyframe_points
        co = np.empty(2 * len(points), np.float32)
        points.foreach_get("co", co)
        co[1::2] *= wanted / applied
        points.foreach_set("co", co)
        curve.update()
    action[APPLIED_INTENSITY] = wanted
    reach = max(1.0, wanted)
    for obj in bpy.data.objects:
        for record in records(obj).values():
            if record.get("action") == action.name and obj.data.shape_keys is not None:
                for name in record["keys"]:
                    block = obj.data.shape_keys.key_blocks.get(name)
                    if block is not None:
                        block.slider_max = reach
                        block.slider_min = -reach if block.slider_min < 0 else 0.0
