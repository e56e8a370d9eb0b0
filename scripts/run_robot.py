"""Drive the simulated athena through a policy server, as a real robot is driven (vla.deploy).

python scripts/serve.py checkpoint=DIR &                      # on the GPU box (server.host=0.0.0.0)
python scripts/run_robot.py control.url=ws://HOST:8765 tasks=[reach_ball] episodes_per_task=5
python scripts/run_robot.py control.mode=sync                 # wait for each chunk, for comparison
The control loop runs at the scene's control_hz (the policy's training rate), requests chunks ahead of
time (async) and blends their overlap, holds the last safe command when a chunk is late, reconnects
after a lost connection, and passes every command through the safety filter. Writes robot.json.
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
from vla.config import RunRobotConfig, register_configs, to_object  # noqa: E402

register_configs()


def run(cfg: RunRobotConfig) -> dict:
    """Run the episodes; returns the report written to `<output_dir>/robot.json`."""
    from vla.deploy.client import PolicyClient
    from vla.deploy.controller import drive_episodes
    from vla.deploy.robot import SimAthena
    from vla.sim.athena import AthenaRobot
    from vla.sim.safety import SafetyFilter

    sim = cfg.sim_settings()
    with AthenaRobot(sim) as model, PolicyClient(cfg.control) as client:
        metadata = client.wait_metadata(cfg.control.connect_timeout_s * 5)
        safety = SafetyFilter(model, sim.safety, sim.control_hz)
        report = drive_episodes(
            SimAthena(sim, model),
            client,
            safety,
            cfg.control,
            cfg.tasks,
            cfg.episodes_per_task,
            cfg.seed,
            metadata,
        )
        report["connection"] = dict(client.events)
    del report["commands"]
    times = sorted(report.pop("roundtrip_ms"))
    report["roundtrip_ms_p50"] = times[len(times) // 2] if times else None
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robot.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="run_robot")
def main(cfg: DictConfig) -> None:
    from vla.sim import select_gl_backend

    select_gl_backend()  # before anything imports mujoco
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    with user_errors():
        report = run(to_object(cfg, RunRobotConfig))
    print(
        json.dumps(
            {k: report[k] for k in ("success_rate", "episodes", "events", "interventions", "connection")}
        )
    )


if __name__ == "__main__":
    main()
