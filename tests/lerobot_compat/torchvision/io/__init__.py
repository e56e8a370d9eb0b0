"""torchvision.io.VideoReader's "pyav" backend, on PyAV (see the package docstring)."""

import av
import torch


class VideoReader:
    def __init__(self, path: str, stream: str = "video"):
        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        self._frames = None

    def seek(self, seconds: float, keyframes_only: bool = False):
        self.container.seek(
            int(seconds / self.stream.time_base), stream=self.stream, backward=True, any_frame=False
        )
        self._frames = None
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if self._frames is None:
            self._frames = self.container.decode(self.stream)
        frame = next(self._frames)
        data = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
        return {"pts": float(frame.time), "data": data}
