"""MemoryTalker for Blender: speech-driven, personalised facial animation on FLAME-topology heads.

Registration is deliberately light (no torch, no transformers): the model runs in a worker process
started on the first generation.
"""
from __future__ import annotations

import bpy

from . import cli, landmarks, operators, settings, ui
from .worker_client import stop_shared_worker

CLASSES = settings.CLASSES + operators.CLASSES + ui.CLASSES
_cli_handle = None


def register() -> None:
    global _cli_handle
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    settings.register_properties()
    landmarks.register()
    _cli_handle = bpy.utils.register_cli_command("memorytalker", cli.run)


def unregister() -> None:
    global _cli_handle
    ui.cancel_warm_up()
    stop_shared_worker()
    if _cli_handle is not None:
        bpy.utils.unregister_cli_command(_cli_handle)
        _cli_handle = None
    landmarks.unregister()
    settings.unregister_properties()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
