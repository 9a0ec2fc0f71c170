"""Writing a generation into the scene as a *take*, and removing or rescaling one.

A take belongs to one object and is named after its audio. It owns exactly what it created: its
shape keys (or its Mesh Cache modifier), one action placed on its own NLA track of the shape-key
datablock, and its sound strip. A record on the object (`memorytalker_takes`, JSON) lists them by
name, so regenerating replaces only them and the user's own shape keys and animation are never
touched. Everything here runs on Blender's main thread; the bulk APIs (`foreach_set`) keep a
minute of motion to a fraction of a second.

Duplicating a head (Shift+D) copies its mesh with the take's keys and track, its modifiers and its
record, but the copy's track plays the original's action, and its record names the original's sound
strip and cache. So what a take's record names is removed only where nothing else uses it any more:
an action when it has no users left, a sound strip when no other object's record names it, a cache
file when no Mesh Cache modifier reads it.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from bpy.app.handlers import persistent

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


def _same_file(first: str, second: str) -> bool:
    def canonical(path: str) -> str:
        return os.path.normcase(os.path.realpath(path))

    return bool(first and second) and canonical(first) == canonical(second)


def take_for_audio(obj: bpy.types.Object, audio_path: str) -> str:
    """The take that `audio_path` writes on `obj`: the one it wrote before, so that generating the same
    file again replaces it; for a new file its name, or 'NAME (2)', 'NAME (3)'... when a file of the same
    name from another folder already has that take."""
    recorded = records(obj)
    base = take_name_for(audio_path)
    names = [base] + [f"{base} ({index})" for index in range(2, len(recorded) + 2)]
    same = [name for name in names if name in recorded and _same_file(recorded[name].get("audio", ""), audio_path)]
    return same[0] if same else next(name for name in names if name not in recorded)


class TakeError(Exception):
    """A take cannot be written or removed on this object without being lost on save or changing
    another object's; nothing was changed."""


def _make_local_advice(obj: bpy.types.Object) -> str:
    # Make Local on the selected objects leaves an object of a linked collection in no collection of this
    # file, and Blender drops it on save.
    if obj.users_collection and all(collection.library is not None for collection in obj.users_collection):
        how = "make it local with its collection (Object > Relations > Make Local > All)"
    else:
        how = "make the object and its mesh local (Object > Relations > Make Local > Selected Objects and Data)"
    return f"{how}, or generate in the file it comes from"


def check_takes_can_be_kept(obj: bpy.types.Object) -> None:
    """Raises TakeError for an object whose takes Blender would not save, or would not be its alone.

    Blender saves no change to linked data, and an override saves neither shape keys added to its mesh
    nor custom properties added to its object (tried with Blender 5.0, also with the mesh overridden and
    the property marked overridable): the take would vanish on save and leave its action and sound strip
    orphaned. A mesh that several objects use (Alt+D) carries a take for all of them."""
    for block, what in ((obj, f"'{obj.name}'"), (obj.data, f"the mesh of '{obj.name}'")):
        if block.library is not None:
            raise TakeError(f"{what} is linked from {block.library.filepath}: Blender does not save changes to "
                            f"linked data, so the take would be lost on save; {_make_local_advice(obj)}")
        if block.override_library is not None:
            reference = block.override_library.reference
            source = reference.library.filepath if reference is not None and reference.library else "a library"
            raise TakeError(f"{what} is a library override of {source}: Blender saves neither new shape keys nor "
                            "the take's record on an override, so the take would be lost on save; "
                            f"{_make_local_advice(obj)}")
    sharing = [repr(other.name) for other in bpy.data.objects if other.data == obj.data and other != obj]
    if sharing:
        raise TakeError(f"'{obj.name}' shares its mesh with {', '.join(sharing)}: a take lives in the mesh's shape "
                        f"keys, so it would belong to all of them; give '{obj.name}' its own mesh "
                        "(Object > Relations > Make Single User > Object & Data)")


# -- where PC2 caches go ----------------------------------------------------------------------------
def temp_cache_folder() -> Path:
    """Where the caches of a file never saved wait for its first save; every Blender session uses it."""
    return Path(tempfile.gettempdir()) / "memorytalker"


def _cache_file(obj: bpy.types.Object, modifier: bpy.types.Modifier) -> Path:
    return Path(bpy.path.abspath(modifier.filepath, library=obj.library)).resolve()


def _caches_in_use(excluding: bpy.types.Modifier | None = None) -> set[Path]:
    """The files that Mesh Cache modifiers read (a duplicated head reads its original's)."""
    return {_cache_file(obj, modifier) for obj in bpy.data.objects for modifier in obj.modifiers
            if modifier.type == 'MESH_CACHE' and modifier != excluding}


def _free_cache_path(folder: Path, stem: str, own: Path | None) -> Path:
    """`STEM.pc2` in `folder`, or `STEM_2.pc2`... when a file of that name exists that is not `own`
    (another .blend of the folder may read it)."""
    for index in itertools.count(1):
        path = folder / (f"{stem}.pc2" if index == 1 else f"{stem}_{index}.pc2")
        if not path.exists() or path.resolve() == own:
            return path


def cache_path(obj: bpy.types.Object, take: str) -> Path:
    """Where a PC2 take's cache is written: beside the saved .blend, replacing only the take's own cache
    and only when no other object reads it; for a file never saved, a name of its own in the temp folder,
    where other Blender sessions write too, until a save moves it beside the .blend."""
    stem = bpy.path.clean_name(f"{obj.name}_{take}")
    if not bpy.data.filepath:
        return temp_cache_folder() / f"{stem}-{uuid.uuid4().hex[:12]}.pc2"
    modifier = obj.modifiers.get(records(obj).get(take, {}).get("modifier") or "")
    own = _cache_file(obj, modifier) if modifier is not None else None
    return _free_cache_path(Path(bpy.path.abspath("//")), stem, own if own not in _caches_in_use(modifier) else None)


def _modifier_path(path: Path) -> str:
    """The path a Mesh Cache modifier stores. Blender rewrites paths as it saves: relative ones are rebased
    to a new folder, and in a file never saved before absolute ones become relative to it."""
    return bpy.path.relpath(str(path)) if bpy.data.filepath else str(path)


@persistent
def move_temp_caches_beside_the_blend(filepath: str, *_) -> None:
    """On save (save_pre): the caches written while the file had never been saved move beside the .blend,
    so they go with it and no other Blender session can overwrite them."""
    if not filepath:  # the startup file
        return
    temp_folder = temp_cache_folder().resolve()
    moved: dict[Path, Path] = {}
    for obj in bpy.data.objects:
        for modifier in obj.modifiers if obj.library is None else ():
            if modifier.type != 'MESH_CACHE':
                continue
            cache = _cache_file(obj, modifier)
            if cache.parent != temp_folder or not (cache in moved or cache.is_file()):
                continue
            if cache not in moved:  # a duplicated head reads the same file
                moved[cache] = _free_cache_path(Path(filepath).absolute().parent, cache.stem.rsplit("-", 1)[0], None)
                shutil.move(cache, moved[cache])
            modifier.filepath = _modifier_path(moved[cache])
    for obj in bpy.data.objects if moved else ():
        all_records = records(obj)
        moved_here = [r for r in all_records.values() if r.get("pc2") and Path(r["pc2"]).resolve() in moved]
        for record in moved_here:
            record["pc2"] = str(moved[Path(record["pc2"]).resolve()])
        if moved_here:
            _save_records(obj, all_records)


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
        check_takes_can_be_kept(self.obj)
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
                remove_take(self.scene, self.obj, self.name)
            self._take_canonical_names()
            all_records = records(self.obj)
            all_records[self.name] = {**self.record, "mode": mode, "audio": audio_path, "start": start,
                                      "frames": frames, "max_error": result.get("max_error", 0.0)}
            _save_records(self.obj, all_records)
        except Exception:
            self._undo()
            raise
        if self.mute_other_takes:
            self._mute_other_takes()
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
        modifier = self.obj.modifiers.new(f"MT {self.name}", 'MESH_CACHE')
        self.record["modifier"] = modifier.name
        modifier.cache_format = 'PC2'
        modifier.filepath = _modifier_path(final)
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
    def _mute_other_takes(self) -> None:
        """The new take plays alone: the object's other takes, whatever their mode, stay, muted and at rest."""
        key = self.obj.data.shape_keys
        tracks = key.animation_data.nla_tracks if key is not None and key.animation_data else None
        for name, record in records(self.obj).items():
            if name == self.name:
                continue
            track = tracks.get(record.get("track") or "") if tracks is not None else None
            if track is not None:
                track.mute = True
                for block_name in record["keys"]:  # a muted track leaves its last values behind
                    if block_name in key.key_blocks:
                        key.key_blocks[block_name].value = 0.0
            modifier = self.obj.modifiers.get(record.get("modifier") or "")
            if modifier is not None:
                modifier.show_viewport = modifier.show_render = False

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
        written = Path(self.record["pc2"])
        final = written.with_name(written.name.replace(".new.", ".")) if ".new." in written.name else written
        # The earlier cache is gone by now, unless something still reads it (a head duplicated while the model ran).
        if final != written and not final.exists():
            os.replace(written, final)
            self.record["pc2"] = str(final)
            self.obj.modifiers[self.record["modifier"]].filepath = _modifier_path(final)

    def _undo(self) -> None:
        _remove_parts(self.scene, self.obj, self.record)
        if self.record["pc2"]:  # the cache this writer moved in, whether or not its modifier was added
            Path(self.record["pc2"]).unlink(missing_ok=True)


def _rename(collection, name: str, wanted: str) -> str:
    """Renames `collection[name]` to `wanted` when that name is free; returns the name it has."""
    if name != wanted and wanted not in collection:
        collection[name].name = wanted
        return wanted
    return name


def _remove_parts(scene, obj, record: dict[str, Any]) -> None:
    """Removes the take's parts on `obj`, and of its action, sound strip and cache what nothing else uses."""
    key = obj.data.shape_keys
    actions = [bpy.data.actions.get(record.get("action") or "")]
    if key is not None:
        data = key.animation_data
        track = data.nla_tracks.get(record.get("track") or "") if data is not None else None
        if track is not None:
            actions += [strip.action for strip in track.strips]  # a copy's track may play its original's
            data.nla_tracks.remove(track)
        for name in record.get("keys", []):
            if name in key.key_blocks:
                obj.shape_key_remove(key.key_blocks[name])
    for action in {action.name: action for action in actions if action is not None}.values():
        if action.users == 0:
            bpy.data.actions.remove(action)
    modifier = obj.modifiers.get(record.get("modifier") or "")
    if modifier is not None:
        cache = _cache_file(obj, modifier)
        if modifier.filepath and cache not in _caches_in_use(excluding=modifier):
            cache.unlink(missing_ok=True)
        obj.modifiers.remove(modifier)
    strip_name = record.get("sound_strip")
    if strip_name and not any(strip_name == other_record.get("sound_strip") for other in bpy.data.objects
                              if other != obj for other_record in records(other).values()):
        for strip in compat.all_strips(scene):
            if strip.name == strip_name:
                compat.sound_strip_collection(scene).remove(strip)
                break
    key = obj.data.shape_keys
    if record.get("created_basis") and key is not None and len(key.key_blocks) == 1:
        # The shape keys were ours alone: leave the mesh as it was before the first take.
        data = key.animation_data
        if data is None or (data.action is None and not data.nla_tracks and not data.drivers):
            obj.shape_key_clear()


def remove_take(scene: bpy.types.Scene, obj: bpy.types.Object, name: str) -> None:
    check_takes_can_be_kept(obj)
    all_records = records(obj)
    record = all_records.pop(name, None)
    if record is None:
        return
    _remove_parts(scene, obj, record)
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
