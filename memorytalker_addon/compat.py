"""Every difference between the Blender versions we support (4.2 LTS, 4.5 LTS, 5.x), in one place.

- Actions: 4.4 introduced slotted, layered actions and 5.0 removed `Action.fcurves`; from 4.4 on,
  F-curves live in a channel bag of the action's first keyframe strip, for a slot of the ID type.
- Sequencer: 4.4 renamed `sequences`/`sequences_all` to `strips`/`strips_all`; 5.0 dropped the
  old names.
- Drawing points: later versions have `POINT_UNIFORM_COLOR`, since `UNIFORM_COLOR` draws points wrongly on
  Metal and Vulkan; earlier ones have only `UNIFORM_COLOR`.
"""
from __future__ import annotations

import bpy

LAYERED_ACTIONS = bpy.app.version >= (4, 4, 0)
SEQUENCER_STRIPS = bpy.app.version >= (4, 4, 0)


def action_fcurves(action: bpy.types.Action, id_type: str, slot_name: str):
    """The F-curve collection of `action` for an ID of `id_type` ('KEY', 'OBJECT', ...)."""
    if not LAYERED_ACTIONS:
        action.id_root = id_type
        return action.fcurves
    slot = action.slots.new(id_type=id_type, name=slot_name)
    layer = action.layers[0] if action.layers else action.layers.new("Layer")
    strip = layer.strips[0] if layer.strips else layer.strips.new(type='KEYFRAME')
    return strip.channelbag(slot, ensure=True).fcurves


ALL_STRIPS_PROPERTY = "strips_all" if SEQUENCER_STRIPS else "sequences_all"


def sound_strip_collection(scene: bpy.types.Scene):
    """The collection on which `new_sound(...)` adds a top-level sound strip."""
    editor = scene.sequence_editor or scene.sequence_editor_create()
    return editor.strips if SEQUENCER_STRIPS else editor.sequences


def all_strips(scene: bpy.types.Scene) -> list:
    editor = scene.sequence_editor
    if editor is None:
        return []
    return list(getattr(editor, ALL_STRIPS_PROPERTY))


def action_curves(action: bpy.types.Action) -> list:
    """Every F-curve of `action`, whatever its slots and layers."""
    if not LAYERED_ACTIONS:
        return list(action.fcurves)
    return [curve for layer in action.layers for strip in layer.strips
            for bag in strip.channelbags for curve in bag.fcurves]


def draw_points(positions, color, size: float) -> None:
    """Draws `positions` (world space) as dots in the 3D Viewport (from a POST_VIEW draw handler)."""
    import gpu
    from gpu_extras.batch import batch_for_shader

    try:
        shader = gpu.shader.from_builtin('POINT_UNIFORM_COLOR')
        shader.uniform_float("size", size)
    except ValueError:  # a version without point shaders: the size is the state's
        shader = gpu.shader.from_builtin('UNIFORM_COLOR')
        gpu.state.point_size_set(size)
    shader.uniform_float("color", color)
    batch_for_shader(shader, 'POINTS', {"pos": positions}).draw(shader)
    gpu.state.point_size_set(1.0)  # what Blender's own drawing expects
