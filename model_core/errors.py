"""Errors raised for bad input. Each message names the problem and says what to do."""


class MemoryTalkerError(Exception):
    """Base class: anything the user can fix by changing the input or the command."""


class AudioError(MemoryTalkerError):
    """The audio file is missing, unreadable, empty or contains invalid samples."""


class CheckpointError(MemoryTalkerError):
    """A model folder or checkpoint file is missing, malformed or unsafe to read."""


class DataError(MemoryTalkerError):
    """A training/evaluation data folder does not have the expected layout."""
