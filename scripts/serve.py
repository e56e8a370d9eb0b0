"""Serve a policy to robot clients over websockets (vla.deploy.server) until Ctrl-C or SIGTERM.

python scripts/serve.py checkpoint=outputs/export/<date>/<time> backend=onnx server.host=0.0.0.0
python scripts/serve.py checkpoint=outputs/train/<date>/<time>             # a run folder, torch
Robots connect to ws://<host>:<port> (scripts/run_robot.py control.url=...); the first message they
receive is the policy's metadata (action size, chunk size, control rate, statistics key, image size,
state size).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import ServeConfig, register_configs, to_object  # noqa: E402

register_configs()


def build_server(cfg: ServeConfig):
    """The policy in `cfg.checkpoint` on `cfg.backend`, behind a `PolicyServer` (not started)."""
    from vla.deploy.server import PolicyServer
    from vla.inference import load_policy

    policy = load_policy(cfg.checkpoint, cfg.backend, unnorm_key=cfg.unnorm_key, threads=cfg.threads)
    return PolicyServer(policy, cfg.server)


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    logging.getLogger("websockets").setLevel(logging.WARNING)
    with user_errors():
        server = build_server(to_object(cfg, ServeConfig))
    print(f"serving {server.metadata['source']} ({server.metadata['backend']}); Ctrl-C to stop")
    server.run()
    print(f"stopped: {server.stats}")


if __name__ == "__main__":
    main()
