"""The panel's settings (per scene), the add-on preferences, and the operator's shared options."""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

MODES = [
    ('SHAPEKEYS', "Editable shape keys", "A small basis of shape keys with one keyframed weight curve each"),
    ('EXACT', "Exact per-frame shape keys", "One shape key per frame: the model output bit for bit (slow playback)"),
    ('PC2', "Mesh cache (PC2)", "A .pc2 file next to the .blend, read by a Mesh Cache modifier"),
]
MODE_TO_WORKER = {'SHAPEKEYS': "shapekeys", 'EXACT': "exact", 'PC2': "pc2"}
DEVICES = [
    ('AUTO', "Auto", "CUDA when the worker's PyTorch has it, otherwise the CPU"),
    ('CUDA', "CUDA", "An NVIDIA GPU (needs a CUDA build of PyTorch, see the preferences)"),
    ('CPU', "CPU", "The processor"),
]
AUDIO_SOURCES = [
    ('FILE', "File", "An audio file on disk (WAV, FLAC, OGG, MP3)"),
    ('STRIP', "Sound strip", "A sound strip of the Video Sequencer"),
]
MODEL_SOURCES = [
    ('BUNDLED', "Bundled demo model", "The small model that ships with the extension"),
    ('FOLDER', "Model folder", "A folder with config.json and model.safetensors"),
]
# (min, max) of the options the panel clamps; the command line refuses values outside them.
STYLE_STRENGTH_RANGE = (0.0, 1.0)
TOLERANCE_MM_RANGE = (0.001, 10.0)


class GenerateOptions:
    """Options shared by the scene settings and the generate operator (annotations only)."""

    audio_source: EnumProperty(name="Audio", items=AUDIO_SOURCES, default='FILE')
    audio_path: StringProperty(name="Audio file", subtype='FILE_PATH')
    sound_strip: StringProperty(name="Sound strip", description="Name of a sound strip of the sequencer")
    model_source: EnumProperty(name="Model", items=MODEL_SOURCES, default='BUNDLED')
    model_folder: StringProperty(name="Model folder", subtype='DIR_PATH')
    device: EnumProperty(name="Device", items=DEVICES, default='AUTO')
    style_strength: FloatProperty(name="Style strength", min=STYLE_STRENGTH_RANGE[0],
                                  max=STYLE_STRENGTH_RANGE[1], default=1.0, subtype='FACTOR',
                                  description="0: the generic motion memory; 1: the speaker's own style")
    style_audio: StringProperty(name="Style reference", subtype='FILE_PATH',
                                description="Optional: take the speaking style from this recording instead")
    mode: EnumProperty(name="Output", items=MODES, default='SHAPEKEYS')
    tolerance_mm: FloatProperty(name="Tolerance (mm)", min=TOLERANCE_MM_RANGE[0],
                                max=TOLERANCE_MM_RANGE[1], default=0.1, precision=3,
                                description="Largest allowed per-vertex error of the shape-key basis, in "
                                            "millimetres at FLAME scale (the model's units are metres)")
    start_frame: IntProperty(name="Start frame", default=1)
    add_sound_strip: BoolProperty(name="Add sound strip", default=True,
                                  description="Add the audio to the sequencer at the start frame")


class MEMORYTALKER_PG_settings(GenerateOptions, bpy.types.PropertyGroup):
    pass


class MEMORYTALKER_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    python_path: StringProperty(
        name="Python interpreter", subtype='FILE_PATH',
        description="Run the model with this Python (e.g. an environment with a CUDA build of PyTorch); "
                    "empty: Blender's own Python with the bundled libraries")

    def draw(self, context):
        self.layout.prop(self, "python_path")
        self.layout.label(text="The interpreter needs torch, transformers, safetensors, soundfile, soxr and numpy.")


def preferences(context) -> MEMORYTALKER_AP_preferences | None:
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def intensity_changed(action, context) -> None:
    from . import takes

    takes.apply_intensity(action)


CLASSES = (MEMORYTALKER_PG_settings, MEMORYTALKER_AP_preferences)


def register_properties() -> None:
    bpy.types.Scene.memorytalker = PointerProperty(type=MEMORYTALKER_PG_settings)
    bpy.types.Action.memorytalker_intensity = FloatProperty(
        name="Intensity", min=0.01, max=5.0, soft_max=2.0, default=1.0, update=intensity_changed,
        description="Scales this take's motion without running the model again (1: as generated)")
    wm = bpy.types.WindowManager
    wm.memorytalker_progress = FloatProperty(min=0.0, max=1.0, subtype='FACTOR')
    wm.memorytalker_status = StringProperty()
    wm.memorytalker_running = BoolProperty()
    wm.memorytalker_cancel = BoolProperty()


def unregister_properties() -> None:
    del bpy.types.Scene.memorytalker
    del bpy.types.Action.memorytalker_intensity
    for name in ("memorytalker_progress", "memorytalker_status", "memorytalker_running", "memorytalker_cancel"):
        delattr(bpy.types.WindowManager, name)
