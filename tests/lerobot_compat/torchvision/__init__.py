"""A stand-in for torchvision inside the throwaway LeRobot environment only (tests/lerobot_env.py).

The local CPU torch build cannot load the registry's torchvision extension, and LeRobot imports
torchvision for two things its dataset reader needs here: `transforms` (unused by a plain read) and
`io.VideoReader`, its "pyav" video backend. `io.VideoReader` below is that backend's behaviour on PyAV
(seek to the keyframe before a time, then frames as {"pts": seconds, "data": uint8 [C, H, W]});
everything else, locating an episode's frames and checking their timestamps, is LeRobot's own code.
"""

from torchvision import io, transforms  # noqa: F401

_backend = "pyav"


def set_video_backend(backend: str) -> None:
    global _backend
    _backend = backend


def get_video_backend() -> str:
    return _backend
