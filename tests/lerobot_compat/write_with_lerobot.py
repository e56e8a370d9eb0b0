"""Run in the throwaway LeRobot environment: write a small dataset with LeRobot's own writer
(LeRobotDataset.create, add_frame, save_episode, finalize) from an .npz of episodes, for
vla.data.lerobot to read. Argument: the .npz (actions_<e>, states_<e>, front_<e>, wrist_<e>, tasks),
the output folder and whether to store the cameras as video."""

import sys

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

source, root, use_videos = sys.argv[1], sys.argv[2], sys.argv[3] == "video"
arrays = np.load(source)
tasks = [str(t) for t in arrays["tasks"]]
first = arrays["front_0"]
features = {
    "action": {"dtype": "float32", "shape": (arrays["actions_0"].shape[1],), "names": None},
    "observation.state": {"dtype": "float32", "shape": (arrays["states_0"].shape[1],), "names": None},
}
for camera in ("front", "wrist"):
    features[f"observation.images.{camera}"] = {
        "dtype": "video" if use_videos else "image",
        "shape": first.shape[1:],
        "names": ["height", "width", "channels"],
    }
dataset = LeRobotDataset.create(
    "local/written-by-lerobot",
    fps=int(arrays["fps"]),
    features=features,
    root=root,
    use_videos=use_videos,
    image_writer_threads=0,
    vcodec="h264",
)
for e, task in enumerate(tasks):
    for t in range(len(arrays[f"actions_{e}"])):
        dataset.add_frame(
            {
                "action": arrays[f"actions_{e}"][t],
                "observation.state": arrays[f"states_{e}"][t],
                "observation.images.front": arrays[f"front_{e}"][t],
                "observation.images.wrist": arrays[f"wrist_{e}"][t],
                "task": task,
            }
        )
    dataset.save_episode()
dataset.finalize()
print("written", root)
