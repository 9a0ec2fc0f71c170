"""Headless pictures of the demo head with Blender's Workbench engine (the bpy module, no window)."""
from __future__ import annotations

import math
from pathlib import Path

import bpy
import numpy as np

from model_core.synthetic.head import DemoHead


def head_scene(head: DemoHead, size: int = 360, name: str = "DemoHead") -> bpy.types.Object:
    """A fresh scene with the head (FLAME's y-up turned to Blender's z-up), a camera and Workbench."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(head.vertices.tolist(), [], head.faces.tolist())
    mesh.shade_smooth()
    obj = bpy.data.objects.new(name, mesh)
    obj.rotation_euler = (math.pi / 2, 0, 0)
    scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.data.lens = 85
    scene.collection.objects.link(camera)
    scene.camera = camera
    scene.render.engine = 'BLENDER_WORKBENCH'
    scene.display.shading.light = 'STUDIO'
    scene.display.shading.color_type = 'SINGLE'
    scene.display.shading.single_color = (0.8, 0.62, 0.52)
    scene.render.resolution_x = scene.render.resolution_y = size
    aim(camera, (0, 0, -0.01), math.radians(25))
    return obj


def aim(camera, target, azimuth: float, distance: float = 0.75, height: float = 0.0) -> None:
    camera.location = (target[0] + distance * math.sin(azimuth), target[1] - distance * math.cos(azimuth),
                       target[2] + height)
    direction = np.array(target) - np.array(camera.location)
    camera.rotation_euler = (math.atan2(math.hypot(direction[0], direction[1]), -direction[2]), 0,
                             math.atan2(direction[1], direction[0]) - math.pi / 2)


def render_still(path: Path) -> np.ndarray:
    """Renders the current frame; returns its pixels (rows, columns, RGBA), top row first."""
    scene = bpy.context.scene
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(str(path))
    pixels = np.array(image.pixels[:], np.float32).reshape(image.size[1], image.size[0], 4)[::-1]
    bpy.data.images.remove(image)
    return pixels


def save_sheet(tiles: list[np.ndarray], path: Path, columns: int) -> None:
    """Joins equally sized tiles into a grid and writes it as a PNG."""
    rows = math.ceil(len(tiles) / columns)
    blank = np.ones_like(tiles[0])
    grid = [np.concatenate([tiles[r * columns + c] if r * columns + c < len(tiles) else blank
                            for c in range(columns)], axis=1) for r in range(rows)]
    sheet = np.concatenate(grid, axis=0)[::-1]  # Blender images start at the bottom row
    image = bpy.data.images.new(path.stem, sheet.shape[1], sheet.shape[0], alpha=True)
    image.pixels.foreach_set(np.ascontiguousarray(sheet).ravel())
    image.filepath_raw = str(path)
    image.file_format = 'PNG'
    image.save()
    bpy.data.images.remove(image)
