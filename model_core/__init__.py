"""MemoryTalker: speech-driven, personalised 3D facial animation (Blender-free core library)."""
from .audio import Waveform, load_audio
from .checkpoint import import_official, load_model, save_model
from .config import MemoryTalkerConfig, tiny_backbone_config
from .errors import AudioError, CheckpointError, DataError, MemoryTalkerError
from .inference import Animator, Motion, animate
from .model import MemoryTalker
from .motion_io import MotionWriter, write_motion

__all__ = [
    "Animator", "AudioError", "CheckpointError", "DataError", "MemoryTalker", "MemoryTalkerConfig",
    "MemoryTalkerError", "Motion", "MotionWriter", "Waveform", "animate", "import_official", "load_audio",
    "load_model", "save_model", "tiny_backbone_config", "write_motion",
]
__version__ = "0.1.0"
