"""The operators: generate a take (modal in the interface, synchronous in background mode), cancel,
remove a take, add the demo head the bundled model animates, and place a head's landmarks."""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import compat, landmarks, models, settings, takes
from .worker_client import WorkerError, shared_worker

MIN_FPS, MAX_FPS = 23.976, 120.0


class GenerationError(Exception):
    """A problem with the request that the user can fix; nothing in the scene was changed."""


@dataclass
class Job:
    scene_name: str
    object_name: str
    take: str
    mode: str
    start: int
    audio_path: str
    add_sound_strip: bool
    pc2_target: Path | None
    vertex_count: int
    job_dir: Path
    request: dict[str, Any]
    take_note: str  # why the take is not named after the audio file, or ""

    def cleanup(self) -> None:
        shutil.rmtree(self.job_dir, ignore_errors=True)


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _option(operator, scene_settings, name: str):
    return getattr(operator, name) if operator.properties.is_property_set(name) else getattr(scene_settings, name)


def _existing_file(path: str, what: str) -> str:
    absolute = bpy.path.abspath(path) if path else ""
    if not absolute:
        raise GenerationError(f"no {what} is set; choose a file in the MemoryTalker panel")
    if Path(absolute).is_dir():
        raise GenerationError(f"the {what} {absolute} is a folder; choose an audio file (WAV, FLAC, OGG or MP3)")
    if not Path(absolute).is_file():
        raise GenerationError(f"the {what} {absolute} does not exist")
    return absolute


def _source_head(folder: Path, expected: int) -> tuple[Path, Path]:
    """The model's own head and its landmarks: an OBJ beside the weights with a JSON of the same name (the
    demo model's demo_head.obj and demo_head.json)."""
    for mesh in sorted(folder.glob("*.obj")):
        if mesh.with_suffix(".json").is_file():
            return mesh, mesh.with_suffix(".json")
    raise GenerationError(f"the model in {folder} animates only meshes of {expected} vertices: it has no head mesh "
                          "with landmarks to carry its motion onto another mesh (an OBJ of its head beside the "
                          "weights, with a JSON of the same name holding the head's \"landmarks\")")


def retargeting(obj, folder: Path, expected: int, bundled: bool) -> dict[str, Any]:
    """How the worker carries the model's motion onto `obj`, a mesh of another vertex count: by the landmarks
    of both heads. Raises GenerationError saying what to do when that cannot be done. (The command line checks
    its targets with this too.)"""
    count = f"{len(obj.data.vertices)} {'vertex' if len(obj.data.vertices) == 1 else 'vertices'}"
    trained_on = 'FLAME topology' if expected == 5023 else 'its training mesh'
    model = (f"the bundled demo model animates the demo head ({expected}); click 'Add demo head', or" if bundled
             else f"the model animates {expected} ({trained_on}); select a head mesh with the model's topology, or")
    try:
        placed = landmarks.stored(obj)
    except landmarks.LandmarkError as error:
        raise GenerationError(f"'{obj.name}' has {count} but {model} place its landmarks again: "
                              f"{error}") from None
    missing = [name for name in landmarks.REQUIRED_NAMES if name not in placed]
    if missing:
        raise GenerationError(f"'{obj.name}' has {count} but {model} place the head's landmarks so that the "
                              "motion can be carried onto it (MemoryTalker > Landmarks: Detect automatically, or "
                              f"Assign; missing: {', '.join(missing)})")
    mesh, marks = _source_head(folder, expected)
    return {"landmarks": placed, "source_mesh": str(mesh), "source_landmarks": str(marks),
            "binding_cache": str(takes.temp_cache_folder() / "bindings")}


def prepare_job(context, operator) -> Job:
    """Checks everything that can be checked before running the model."""
    scene = context.scene
    options = scene.memorytalker
    opt = lambda name: _option(operator, options, name)  # noqa: E731
    obj = bpy.data.objects.get(operator.object_name) if operator.object_name else context.active_object
    if obj is None:
        raise GenerationError(f"there is no object named {operator.object_name!r}" if operator.object_name
                              else "no target: select the head mesh to animate")
    if obj.type != 'MESH':
        raise GenerationError(f"'{obj.name}' is not a mesh (its type is {obj.type.lower()}); "
                              "select the head mesh to animate")
    if obj.mode != 'OBJECT':
        raise GenerationError(f"'{obj.name}' is in {obj.mode.replace('_', ' ').lower()} mode; switch to Object Mode first")
    try:
        takes.check_takes_can_be_kept(obj)
    except takes.TakeError as error:
        raise GenerationError(str(error)) from None
    try:
        folder = models.resolve_model_folder(opt("model_source"), bpy.path.abspath(opt("model_folder")))
        expected = models.model_vertex_count(folder)
    except models.ModelFolderError as error:
        raise GenerationError(str(error)) from None
    count = len(obj.data.vertices)
    retarget = retargeting(obj, folder, expected, opt("model_source") == 'BUNDLED') if count != expected else None
    start = opt("start_frame")
    add_sound = opt("add_sound_strip")
    if opt("audio_source") == 'STRIP':
        strip_name = opt("sound_strip")
        strip = next((s for s in compat.all_strips(scene) if s.name == strip_name), None)
        if strip is None or strip.type != 'SOUND':
            raise GenerationError(f"the sequencer has no sound strip named {strip_name!r}")
        audio = _existing_file(bpy.path.abspath(strip.sound.filepath, library=strip.sound.library),
                               f"audio of the strip '{strip_name}',")
        start = int(strip.frame_start)
        add_sound = False  # the sound is already in the sequencer, at the frame the motion starts
    else:
        audio = _existing_file(opt("audio_path"), "audio file")
    style_audio = opt("style_audio")
    style_audio = _existing_file(style_audio, "style reference audio") if style_audio else None
    fps = scene.render.fps / scene.render.fps_base
    if not MIN_FPS - 1e-3 <= fps <= MAX_FPS:
        raise GenerationError(f"the scene runs at {fps:g} fps; MemoryTalker writes {MIN_FPS}-{MAX_FPS:g} fps")
    mode = settings.MODE_TO_WORKER[opt("mode")]
    take = operator.take or takes.take_for_audio(obj, audio)
    named_after = takes.take_name_for(audio)
    take_note = "" if operator.take or take == named_after else (
        f"'{named_after}' is already the take of {takes.records(obj)[named_after]['audio']}, "
        f"so this take of {audio} is named '{take}'")
    pc2_target = takes.cache_path(obj, take) if mode == "pc2" else None
    job_dir = Path(tempfile.mkdtemp(prefix="memorytalker-"))
    np.save(job_dir / "mesh.npy", takes.rest_positions(obj))
    request = {"op": "generate", "job_dir": str(job_dir), "model": str(folder), "device": opt("device").lower(),
               "audio": audio, "style_audio": style_audio, "style_strength": opt("style_strength"),
               "fps": fps, "mode": mode, "tolerance": opt("tolerance_mm") * 1e-3,
               "pc2_path": str(job_dir / "motion.pc2")}
    if retarget is not None:
        obj.data.calc_loop_triangles()  # a cache Blender keeps beside the mesh; the mesh is unchanged
        triangles = np.empty(len(obj.data.loop_triangles) * 3, np.int64)
        obj.data.loop_triangles.foreach_get("vertices", triangles)
        np.save(job_dir / "faces.npy", triangles.reshape(-1, 3))
        request["retarget"] = retarget
    return Job(scene.name, obj.name, take, mode, start, audio, add_sound, pc2_target, count, job_dir, request,
               take_note)


def write_job(job: Job, result: dict[str, Any], mute_other_takes: bool = True) -> tuple[str, list[str]]:
    """Writes the worker's result as a take; returns (summary, warnings)."""
    scene = bpy.data.scenes.get(job.scene_name)
    obj = bpy.data.objects.get(job.object_name)
    if scene is None or obj is None or obj.type != 'MESH' or len(obj.data.vertices) != job.vertex_count:
        raise GenerationError(f"'{job.object_name}' changed or was removed while the model ran; nothing was written")
    try:
        warnings = takes.TakeWriter(scene, obj, job.take, mute_other_takes).write(
            job.mode, job.start, job.job_dir, result, job.audio_path, job.add_sound_strip, job.pc2_target)
    except takes.TakeError as error:  # the object was linked, or its mesh shared, while the model ran
        raise GenerationError(str(error)) from None
    if job.take_note:
        warnings.insert(0, job.take_note)
    if result.get("silent"):
        warnings.append("the audio is silent: the take holds a neutral face")
    detail = {"shapekeys": f"{counted(result['keys'], 'shape key')}, largest error {result['max_error'] * 1000:.3f} mm",
              "exact": counted(result['keys'], 'per-frame shape key'), "pc2": f"mesh cache {job.pc2_target}"}[job.mode]
    return f"Take '{job.take}' on '{obj.name}': {counted(result['frames'], 'frame')} from frame {job.start}, {detail}", \
        warnings


def worker_for(context):
    prefs = settings.preferences(context)
    return shared_worker(bpy.path.abspath(prefs.python_path) if prefs and prefs.python_path else None)


def warm_up(context) -> None:
    """Starts the worker and has it load the panel's model before the first click: importing torch
    and loading a model take seconds, the panel is on screen long before the click. Not during a
    generation, and only once for the same interpreter, model and device."""
    if context.window_manager.memorytalker_running:
        return
    options = context.scene.memorytalker
    try:
        folder = models.resolve_model_folder(options.model_source, bpy.path.abspath(options.model_folder))
    except models.ModelFolderError:
        return
    if not (folder / "config.json").is_file():
        return
    try:
        worker = worker_for(context)
        wanted = (str(folder), options.device.lower())
        if not (worker.alive and worker.warmed == wanted):
            worker.warm(*wanted)
    except WorkerError:
        pass  # a wrong interpreter setting: the click reports it


class MEMORYTALKER_OT_generate(settings.GenerateOptions, bpy.types.Operator):
    """Animate the head from the audio: runs the model and writes the result as a new take"""

    bl_idname = "memorytalker.generate"
    bl_label = "Generate lip-sync"
    bl_options = {'REGISTER', 'UNDO'}

    object_name: StringProperty(name="Object", description="Target mesh (default: the active object)")
    take: StringProperty(name="Take", description="Take name (default: the audio file's name)")
    mute_other_takes: BoolProperty(name="Mute other takes", default=True,
                                   description="Mute the object's earlier takes so the new one plays alone")

    _timer = None
    _job: Job | None = None

    # The operator writes the caches, so it also installs what keeps them: a save moves the caches of a
    # file never saved beside the .blend.
    @classmethod
    def register(cls) -> None:
        bpy.app.handlers.save_pre.append(takes.move_temp_caches_beside_the_blend)

    @classmethod
    def unregister(cls) -> None:
        bpy.app.handlers.save_pre.remove(takes.move_temp_caches_beside_the_blend)

    def execute(self, context):
        try:
            job = prepare_job(context, self)
        except GenerationError as error:
            self.report({'ERROR'}, str(error))
            return {'CANCELLED'}
        try:
            result = worker_for(context).run(job.request, self._print_progress if bpy.app.background else None)
            return self._finish(job, result)
        except (WorkerError, GenerationError) as error:
            self.report({'ERROR'}, str(error))
            return {'CANCELLED'}
        finally:
            job.cleanup()

    @staticmethod
    def _print_progress(event) -> None:
        print(f"MemoryTalker: {event.get('status', '')} ({100 * event.get('fraction', 0):.0f}%)", flush=True)

    def _finish(self, job: Job, result) -> set[str]:
        summary, warnings = write_job(job, result, self.mute_other_takes)
        for warning in warnings:
            self.report({'WARNING'}, warning)
        self.report({'INFO'}, summary)
        return {'FINISHED'}

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        wm = context.window_manager
        if wm.memorytalker_running:
            self.report({'WARNING'}, "a generation is already running; wait for it or press Esc")
            return {'CANCELLED'}
        try:
            self._job = prepare_job(context, self)
            worker_for(context).submit(self._job.request)
        except (GenerationError, WorkerError) as error:
            if self._job is not None:
                self._job.cleanup()
            self.report({'ERROR'}, str(error))
            return {'CANCELLED'}
        wm.memorytalker_running, wm.memorytalker_cancel = True, False
        wm.memorytalker_progress, wm.memorytalker_status = 0.0, "Starting the worker"
        self._started = time.monotonic()
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        wm = context.window_manager
        if event.type == 'ESC' or wm.memorytalker_cancel:
            worker_for(context).stop()
            self._end(context)
            self._job.cleanup()
            self.report({'WARNING'}, "Generation cancelled; the scene was not changed")
            return {'CANCELLED'}
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        for message in worker_for(context).poll():
            kind = message.get("event")
            if kind == "progress":
                wm.memorytalker_progress = message.get("fraction", 0.0)
                wm.memorytalker_status = message.get("status", "")
                wm.progress_update(int(100 * wm.memorytalker_progress))
            elif kind in ("done", "error"):
                job = self._job
                self._end(context)
                try:
                    if kind == "error":
                        raise WorkerError(message["message"])
                    return self._finish(job, message)
                except (WorkerError, GenerationError) as error:
                    self.report({'ERROR'}, str(error))
                    return {'CANCELLED'}
                finally:
                    job.cleanup()
        for area in context.screen.areas if context.screen else []:
            if area.type == 'VIEW_3D':
                area.tag_redraw()
        return {'PASS_THROUGH'}

    def _end(self, context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        wm.memorytalker_running, wm.memorytalker_cancel = False, False
        wm.memorytalker_status = ""


class MEMORYTALKER_OT_cancel(bpy.types.Operator):
    """Stop the running generation (the scene stays as it was)"""

    bl_idname = "memorytalker.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        context.window_manager.memorytalker_cancel = True
        return {'FINISHED'}


class MEMORYTALKER_OT_remove_take(bpy.types.Operator):
    """Remove this take: its shape keys, action, NLA track, sound strip and cache"""

    bl_idname = "memorytalker.remove_take"
    bl_label = "Remove take"
    bl_options = {'REGISTER', 'UNDO'}

    object_name: StringProperty()
    take: StringProperty()

    def execute(self, context):
        obj = bpy.data.objects.get(self.object_name)
        if obj is None or self.take not in takes.records(obj):
            self.report({'ERROR'}, f"no take named {self.take!r} on {self.object_name!r}")
            return {'CANCELLED'}
        try:
            takes.remove_take(context.scene, obj, self.take)
        except takes.TakeError as error:
            self.report({'ERROR'}, str(error))
            return {'CANCELLED'}
        return {'FINISHED'}


class MEMORYTALKER_OT_add_demo_head(bpy.types.Operator):
    """Add the demo head that the bundled model animates, at the 3D cursor, and select it"""

    bl_idname = "memorytalker.add_demo_head"
    bl_label = "Add demo head"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        path = models.BUNDLED_MODEL / models.DEMO_HEAD_FILE
        try:
            vertices, faces = models.read_obj(path)
        except (OSError, ValueError) as error:
            self.report({'ERROR'}, f"cannot read the demo head {path}: {error}")
            return {'CANCELLED'}
        mesh = bpy.data.meshes.new("DemoHead")
        mesh.from_pydata(vertices, [], faces)
        mesh.shade_smooth()
        obj = bpy.data.objects.new("DemoHead", mesh)
        obj.location = context.scene.cursor.location
        obj.rotation_euler = (math.pi / 2, 0.0, 0.0)  # the head is y-up (like FLAME); Blender is z-up
        context.collection.objects.link(obj)
        for other in context.selected_objects:
            other.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
        return {'FINISHED'}


def _landmark_target(context, object_name: str):
    return bpy.data.objects.get(object_name) if object_name else context.active_object


class MEMORYTALKER_OT_assign_landmark(bpy.types.Operator):
    """Make the one vertex selected in Edit Mode this landmark"""

    bl_idname = "memorytalker.assign_landmark"
    bl_label = "Assign landmark"
    bl_options = {'REGISTER', 'UNDO'}

    name: StringProperty(name="Landmark", description="One of the landmark names, e.g. nose_tip")

    def execute(self, context):
        obj = context.edit_object
        try:
            index = landmarks.assign_selected_vertex(obj, self.name)
        except landmarks.LandmarkError as error:
            self.report({'ERROR'}, str(error))
            return {'CANCELLED'}
        self.report({'INFO'}, f"'{obj.name}': {landmarks.label(self.name)} is vertex {index}")
        return {'FINISHED'}


class MEMORYTALKER_OT_clear_landmarks(bpy.types.Operator):
    """Remove this landmark, or all of the head's landmarks"""

    bl_idname = "memorytalker.clear_landmarks"
    bl_label = "Clear landmarks"
    bl_options = {'REGISTER', 'UNDO'}

    name: StringProperty(name="Landmark", description="The landmark to remove (empty: all of them)")
    object_name: StringProperty(name="Object", description="The head (default: the active object)")

    def execute(self, context):
        obj = _landmark_target(context, self.object_name)
        if obj is None or obj.type != 'MESH':
            self.report({'ERROR'}, "select the head mesh whose landmarks to clear")
            return {'CANCELLED'}
        try:
            landmarks.clear(obj, self.name)
        except landmarks.LandmarkError as error:
            self.report({'ERROR'}, str(error))
            return {'CANCELLED'}
        return {'FINISHED'}


class MEMORYTALKER_OT_detect_landmarks(bpy.types.Operator):
    """Find the head's landmarks automatically: renders its front and looks for a face (needs mediapipe)"""

    bl_idname = "memorytalker.detect_landmarks"
    bl_label = "Detect automatically"
    bl_options = {'REGISTER', 'UNDO'}

    object_name: StringProperty(name="Object", description="The head (default: the active object)")
    facing: EnumProperty(name="Face direction", items=landmarks.FACING_ITEMS, default='AUTO',
                         description="Which way the face looks in world space")

    def execute(self, context):
        obj = _landmark_target(context, self.object_name)
        try:
            found = landmarks.detect(obj, self.facing)
        except landmarks.LandmarkError as error:
            self.report({'ERROR'}, str(error))
            return {'CANCELLED'}
        landmarks.store_detected(obj, found)
        if found.not_found:
            self.report({'WARNING'}, f"not found: {', '.join(found.not_found)}; {landmarks.MANUAL_HINT}")
        self.report({'INFO'}, f"Found {counted(len(found.points), 'landmark')} on '{obj.name}' "
                              f"(face towards {found.view}) in {found.seconds:.1f} s; check them in the viewport "
                              "and correct any with Assign. The jaw corners are not detected: assign them by hand "
                              "where the head's jaw differs from the model's")
        return {'FINISHED'}


CLASSES = (MEMORYTALKER_OT_generate, MEMORYTALKER_OT_cancel, MEMORYTALKER_OT_remove_take, MEMORYTALKER_OT_add_demo_head,
           MEMORYTALKER_OT_assign_landmark, MEMORYTALKER_OT_clear_landmarks, MEMORYTALKER_OT_detect_landmarks)
