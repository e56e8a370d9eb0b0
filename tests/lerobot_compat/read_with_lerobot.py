"""Run in the throwaway LeRobot environment: read a dataset with LeRobot's own LeRobotDataset and dump
what it returns as JSON on stdout: fps, episodes, camera and statistics keys, and per frame the
episode and frame index, timestamp, task, action, state and the camera's pixels (uint8 [H, W, 3])."""

import json
import sys

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root, camera = sys.argv[1], sys.argv[2]
dataset = LeRobotDataset("local/athena", root=root, video_backend="pyav")
rows = []
for i in range(len(dataset)):
    item = dataset[i]
    rows.append(
        {
            "episode_index": int(item["episode_index"]),
            "frame_index": int(item["frame_index"]),
            "timestamp": float(item["timestamp"]),
            "task": item["task"],
            "action": item["action"].tolist(),
            "state": item["observation.state"].tolist(),
            "image": np.round(item[camera].numpy() * 255).astype(np.uint8).transpose(1, 2, 0).tolist(),
        }
    )
print(
    json.dumps(
        {
            "fps": dataset.fps,
            "num_episodes": dataset.num_episodes,
            "rows": rows,
            "stats_keys": sorted(dataset.meta.stats),
            "camera_keys": dataset.meta.camera_keys,
        }
    )
)
