"""The sidebar panel (View3D > Sidebar > MemoryTalker)."""
from __future__ import annotations

import bpy

from . import compat, landmarks, operators, takes


def _warm_up_now():
    operators.warm_up(bpy.context)
    return None  # run once


def schedule_warm_up() -> None:
    """The worker starts when the panel is drawn, outside the drawing (a timer), and only if no warm-up
    is queued already; operators.warm_up returns at once when the worker is warm. Never in
    background mode, where a batch pays only for what it uses."""
    if not bpy.app.background and not bpy.app.timers.is_registered(_warm_up_now):
        bpy.app.timers.register(_warm_up_now, first_interval=0.0)


def cancel_warm_up() -> None:
    if bpy.app.timers.is_registered(_warm_up_now):
        bpy.app.timers.unregister(_warm_up_now)


class MEMORYTALKER_PT_panel(bpy.types.Panel):
    bl_label = "MemoryTalker"
    bl_idname = "MEMORYTALKER_PT_panel"
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "MemoryTalker"

    def draw(self, context):
        layout = self.layout
        options = context.scene.memorytalker
        wm = context.window_manager
        schedule_warm_up()

        box = layout.box()
        box.prop(options, "audio_source", expand=True)
        if options.audio_source == 'FILE':
            box.prop(options, "audio_path", text="")
        elif context.scene.sequence_editor is not None:
            box.prop_search(options, "sound_strip", context.scene.sequence_editor, compat.ALL_STRIPS_PROPERTY, text="")
        else:
            box.label(text="The sequencer has no strips", icon='INFO')

        obj = context.active_object
        box = layout.box()
        box.label(text=f"Target: {obj.name}" if obj else "Target: select the head mesh",
                  icon='OUTLINER_OB_MESH' if obj is not None and obj.type == 'MESH' else 'ERROR')
        box.prop(options, "model_source", text="")
        if options.model_source == 'FOLDER':
            box.prop(options, "model_folder", text="")
        else:
            box.operator("memorytalker.add_demo_head", icon='MESH_MONKEY')
        box.prop(options, "device")

        box = layout.box()
        box.prop(options, "style_strength")
        box.prop(options, "style_audio")

        box = layout.box()
        box.prop(options, "mode", text="")
        if options.mode == 'SHAPEKEYS':
            box.prop(options, "tolerance_mm")
        row = box.row()
        row.enabled = options.audio_source == 'FILE'
        row.prop(options, "start_frame")
        row.prop(options, "add_sound_strip", text="Sound")

        if wm.memorytalker_running:
            layout.progress(factor=wm.memorytalker_progress, type='BAR', text=wm.memorytalker_status or "Working")
            layout.operator("memorytalker.cancel", icon='CANCEL', text="Cancel (Esc)")
        else:
            layout.operator("memorytalker.generate", icon='PLAY_SOUND')

        if obj is not None:
            self.draw_takes(layout, obj)

    @staticmethod
    def draw_takes(layout, obj) -> None:
        obj_takes = takes.records(obj)
        if not obj_takes:
            return
        box = layout.box()
        box.label(text="Takes")
        key = obj.data.shape_keys if obj.type == 'MESH' else None
        tracks = key.animation_data.nla_tracks if key is not None and key.animation_data else None
        for name, record in obj_takes.items():
            row = box.row(align=True)
            track = tracks.get(record.get("track", "")) if tracks is not None else None
            modifier = obj.modifiers.get(record.get("modifier", ""))
            if track is not None:
                row.prop(track, "mute", text="", icon='HIDE_ON' if track.mute else 'HIDE_OFF', emboss=False)
            elif modifier is not None:
                row.prop(modifier, "show_viewport", text="", emboss=False)
            row.label(text=name)
            action = bpy.data.actions.get(record.get("action", ""))
            if action is not None:
                row.prop(action, "memorytalker_intensity", text="")
            elif modifier is not None:
                row.prop(modifier, "factor", text="")
            remove = row.operator("memorytalker.remove_take", text="", icon='X')
            remove.object_name, remove.take = obj.name, name


class MEMORYTALKER_PT_landmarks(bpy.types.Panel):
    """Landmarks let the model animate a head whose vertex count differs from the model's."""

    bl_label = "Landmarks"
    bl_idname = "MEMORYTALKER_PT_landmarks"
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "MemoryTalker"
    bl_parent_id = "MEMORYTALKER_PT_panel"
    bl_options = {'DEFAULT_CLOSED'}

    @classmethod
    def poll(cls, context):
        return context.active_object is not None and context.active_object.type == 'MESH'

    def draw(self, context):
        layout = self.layout
        obj = context.active_object
        if landmarks.out_of_date(obj):
            layout.label(text="Out of date: the vertex count changed", icon='ERROR')
            layout.operator("memorytalker.clear_landmarks", text="Clear all", icon='X')
            return
        points = landmarks.stored(obj)
        editing = obj.mode == 'EDIT'
        column = layout.column(align=True)
        for name in landmarks.LANDMARK_NAMES:
            row = column.row(align=True)
            row.label(text=landmarks.label(name), icon='CHECKMARK' if name in points else 'DOT')
            assign = row.row(align=True)
            assign.enabled = editing
            assign.operator("memorytalker.assign_landmark", text="Assign").name = name
            if name in points:
                row.operator("memorytalker.clear_landmarks", text="", icon='X').name = name
        if not editing:
            column.label(text="Assign: in Edit Mode, select one vertex", icon='INFO')
        row = layout.row(align=True)
        row.enabled = obj.mode == 'OBJECT'
        row.operator("memorytalker.detect_landmarks", icon='VIEWZOOM')
        row.operator_menu_enum("memorytalker.detect_landmarks", "facing", text="", icon='DOWNARROW_HLT')
        row = layout.row(align=True)
        row.prop(context.window_manager, "memorytalker_show_landmarks", text="Show")
        row.operator("memorytalker.clear_landmarks", text="Clear all", icon='X')


CLASSES = (MEMORYTALKER_PT_panel, MEMORYTALKER_PT_landmarks)
