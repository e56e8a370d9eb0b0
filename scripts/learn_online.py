"""Continuous learning in the simulator: deploy, record, relabel, retrain, promote only what is better.

python scripts/learn_online.py start=outputs/train/<date>/<time>            # DAgger, 3 rounds
python scripts/learn_online.py start=RUN learn.relabel=expert_demos         # the behaviour-cloning baseline
python scripts/learn_online.py start=RUN learn.relabel=success_only learn.judge=human   # keep what a person calls a success
python scripts/learn_online.py start=RUN output_dir=outputs/learn_online/<date>/<time> # resume that loop
python scripts/learn_online.py start=RUN sim.disturbance.start_std=0.6   # deployed from displaced start poses
Each round drives the deployed policy through the policy server and robot client (safety filter and
recovery on), writes every episode (Isaac format, with its outcome) to <output_dir>/dataset/round_<r>/,
fine-tunes from the deployed weights on all rounds so far, evaluates on held-out scenes and promotes
only a better policy. Writes history.csv / .md / .png; docs/experiments/continuous_learning.md.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla.cli import user_errors  # noqa: E402
from vla.config import LearnOnlineConfig, register_configs, to_object  # noqa: E402

register_configs()


def run(cfg: LearnOnlineConfig, judge=None) -> dict:
    """Run (or resume) the loop; returns {"rounds": the history rows, "deployed": run folder, ...}."""
    from train import run as train_run
    from vla.learn.rounds import run_loop

    return run_loop(cfg, train_run, judge)


@hydra.main(version_base="1.3", config_path="../conf", config_name="learn_online")
def main(cfg: DictConfig) -> None:
    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    with user_errors():
        result = run(to_object(cfg, LearnOnlineConfig))
    print(Path(result["output_dir"], "history.md").read_text(encoding="utf-8"))
    print(json.dumps({"deployed": result["deployed"], "output_dir": result["output_dir"]}))


if __name__ == "__main__":
    main()
