"""The continuous-learning loop: rounds of deploy -> record -> relabel -> fine-tune -> evaluate -> promote.

Round 0 is the start policy and its own training data. Round r (1, 2, ...):
  1. record: the deployed policy (the last promoted round's) drives `learn.episodes_per_task` new scenes
     per task through the policy server and robot client (`vla.learn.rollout`); `expert_demos` records
     the scripted expert instead (the behaviour-cloning baseline);
  2. train: a new run started from the deployed weights and statistics (`init_from`, fresh optimizer)
     on the union of rounds 0..r (`VersionedDataset.union_view`), every other key the start run's;
  3. evaluate on the fixed held-out scenes (`learn.eval_seed`, disjoint from every training seed) with
     95% Wilson intervals, and promote by `learn.promotion`; a round that is not better stays on disk
     and the deployed policy stays as it was.
Each step ends by rewriting the round's manifest, so a rerun on the same folder resumes after it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vla.config import ConfigError, EvalSettings, LearnOnlineConfig, SimSettings, TrainConfig, to_object
from vla.config.sim import DisturbanceSettings
from vla.learn.dataset import LoopError, VersionedDataset, read_json, write_json_atomic
from vla.learn.history import history_rows, log_round, write_history

log = logging.getLogger(__name__)
TrainFn = Callable[[TrainConfig], dict[str, float]]  # train.py's run(cfg)
# Settings that decide what a loop's folder holds: a resumed loop must keep them.
LOOP_KEYS = ("relabel", "tasks", "episodes_per_task", "rollout_seed", "eval_seed", "eval_episodes_per_task")


def evaluate_run(run_dir: str | Path, cfg: LearnOnlineConfig, sim: SimSettings) -> dict[str, Any]:
    """Held-out success of a run's policy (in-process, behind the safety filter), with its interval."""
    from vla.inference import load_policy
    from vla.sim.evaluate import evaluate_policy

    learn = cfg.learn
    settings = EvalSettings(
        tasks=learn.tasks,
        episodes_per_task=learn.eval_episodes_per_task,
        seed=learn.eval_seed,
        baselines=[],
        gif_episodes=0,
        sim=sim,
        disturbance=cfg.sim.disturbance,  # held-out scenes in deployment conditions, for every arm
    )
    report = evaluate_policy(load_policy(run_dir), settings)
    return {
        "successes": sum(r["successes"] for r in report["per_task"].values()),
        "episodes": report["episodes"],
        "success_rate": report["success_rate"],
        "ci95": list(report["ci95"]),
        "per_task": {t: r["successes"] for t, r in report["per_task"].items()},
    }


def training_episodes(view: Path, success_only: bool) -> int:
    """Episodes of the union view the fine-tune trains on (with success_only, those judged successful)."""
    if not success_only:
        return sum(1 for _ in view.iterdir())
    return sum(bool(read_json(p / "metadata.json").get("success")) for p in view.iterdir())


def should_promote(candidate: dict, deployed: dict, rule: str) -> tuple[bool, str]:
    """`point`: more successes on the same held-out scenes; `interval`: the candidate's 95% interval
    lies wholly above the deployed policy's (lower bound above its upper bound)."""
    if candidate["episodes"] != deployed["episodes"]:
        raise LoopError("the candidate and the deployed policy were evaluated on different scene counts")
    if rule == "point":
        ok = candidate["successes"] > deployed["successes"]
        return ok, f"{candidate['successes']} vs {deployed['successes']} of {candidate['episodes']}"
    ok = candidate["ci95"][0] > deployed["ci95"][1]
    return ok, f"lower bound {candidate['ci95'][0]:.3f} vs upper bound {deployed['ci95'][1]:.3f}"


class Loop:
    def __init__(self, cfg: LearnOnlineConfig, train_fn: TrainFn, judge=None) -> None:
        from vla.sim.episodes import resolve_sample_data
        from vla.training.runs import load_train_config

        self.cfg, self.train_fn, self.judge = cfg, train_fn, judge
        self.dir = Path(cfg.output_dir)
        self.dataset = VersionedDataset(self.dir)
        self.start = Path(cfg.start).expanduser().resolve()
        if not (self.start / "model" / "config.json").is_file():
            raise ConfigError(
                f"start={cfg.start}: not a finished lora=full training run (no model/config.json)"
            )
        self.start_cfg = load_train_config(self.start)
        if self.start_cfg.data.format != "sample":
            raise ConfigError(
                f"start={cfg.start}: trained on data={self.start_cfg.data.format}; the loop needs a simulator-trained run"
            )
        self.sim = self.start_cfg.data.sample.sim_settings(cfg.sim)
        self.start_data = Path(
            resolve_sample_data(self.start_cfg.data, self.start_cfg.sim, cfg.paths.cache_dir).root
        )
        self._check_loop_file()

    def _check_loop_file(self) -> None:
        path = self.dir / "loop.json"
        record = {
            "start": str(self.start),
            **{k: getattr(self.cfg.learn, k) for k in LOOP_KEYS},
            "disturbance": dataclasses.asdict(self.cfg.sim.disturbance),
        }
        if path.is_file():
            saved = read_json(path)
            saved.setdefault("disturbance", dataclasses.asdict(DisturbanceSettings()))  # older loops: off
            for key, value in record.items():
                if saved.get(key) != value:
                    name = "sim.disturbance" if key == "disturbance" else f"learn.{key}"
                    raise ConfigError(
                        f"{name}={value!r}: the loop in {self.dir} was run with {saved.get(key)!r} ({path}); "
                        "a resumed loop keeps it (or choose a new output_dir)"
                    )
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, record)

    def deployed(self, before: int) -> dict:
        """The manifest of the last promoted round before round `before` (round 0 at least)."""
        manifests = self.dataset.manifests()[:before]
        return [m for m in manifests if m.get("promoted")][-1]

    def run(self) -> dict[str, Any]:
        if self.dataset.manifest(0) is None:
            self._round0()
        for r in range(1, self.cfg.learn.rounds + 1):
            manifest = self.dataset.manifest(r)
            if manifest is None:
                manifest = self._record(r)
            if manifest["status"] == "recorded":
                manifest = self._train(r, manifest)
            if manifest["status"] == "trained":
                manifest = self._evaluate(r, manifest)
        rows = history_rows(self.dataset.manifests())
        write_history(rows, self.dir)
        return {
            "rounds": rows,
            "deployed": self.deployed(len(rows))["policy_trained"],
            "output_dir": str(self.dir),
        }

    def _round0(self) -> None:
        count = sum(1 for p in self.start_data.iterdir() if p.is_dir() and not p.name.startswith("."))
        log.info("round 0: evaluating the start policy %s", self.start)
        evaluation = evaluate_run(self.start, self.cfg, self.sim)
        record = {
            "status": "evaluated",
            "policy": "scripted expert (the start run's training data)",
            "policy_trained": str(self.start),
            "episodes_dir": str(self.start_data),
            "relabel": "expert",
            "counts": {"episodes": count},
            "train_episodes": count,
            "evaluation": evaluation,
            "promoted": True,
            "promotion": "the start policy",
        }
        self.dataset.write_manifest(0, record)
        log_round(self.cfg.logger, self.dir, history_rows(self.dataset.manifests()))

    def _record(self, r: int) -> dict:
        learn = self.cfg.learn
        deployed = self.deployed(r)
        self.dataset.clean_partial(r)
        self.dataset.episodes_dir(r).mkdir(parents=True, exist_ok=True)
        if learn.relabel == "expert_demos":
            counts = self._record_expert(r)
            policy = "scripted expert"
        else:
            counts = self._record_rollouts(r, deployed["policy_trained"])
            policy = deployed["policy_trained"]
        record = {
            "status": "recorded",
            "policy": policy,
            "deployed_round": deployed["round"],
            "episodes_dir": str(self.dataset.episodes_dir(r).resolve()),
            "relabel": learn.relabel,
            "judge": learn.judge,
            "beta": learn.beta(r),
            "seeds": {t: [learn.round_seeds(r).start, learn.round_seeds(r).stop] for t in learn.tasks},
            "counts": counts,
        }
        self.dataset.write_manifest(r, record)
        return {**record, "round": r}

    def _record_rollouts(self, r: int, policy_dir: str) -> dict:
        from vla.config.deploy import ServerSettings
        from vla.deploy.client import PolicyClient
        from vla.deploy.robot import SimAthena
        from vla.deploy.server import PolicyServer, ServerThread
        from vla.inference import load_policy
        from vla.learn.relabel import MixingPolicy
        from vla.learn.rollout import RecordingRobot, record_rollouts, terminal_judge
        from vla.sim.athena import AthenaRobot
        from vla.sim.safety import SafetyFilter

        learn = self.cfg.learn
        judge = self.judge or (terminal_judge if learn.judge == "human" else None)
        with AthenaRobot(self.sim) as model:
            policy = load_policy(policy_dir)
            mixing = MixingPolicy(policy, model, learn.beta(r), learn.seed, r, learn.tasks)
            served = mixing if learn.relabel == "dagger" else policy
            server = PolicyServer(served, ServerSettings(port=0))  # loopback, any free port
            with ServerThread(server) as url:
                control = dataclasses.replace(self.cfg.control, url=url)
                with PolicyClient(control) as client:
                    metadata = client.wait_metadata(control.connect_timeout_s * 5)
                    safety = SafetyFilter(model, self.sim.safety, self.sim.control_hz)
                    recorder = RecordingRobot(SimAthena(self.sim, model), self.cfg.sim.disturbance)
                    return record_rollouts(
                        self.dataset,
                        r,
                        learn,
                        recorder,
                        client,
                        safety,
                        control,
                        metadata,
                        mixing if learn.relabel == "dagger" else None,
                        judge,
                    )

    def _record_expert(self, r: int) -> dict:
        """The baseline: fresh scripted-expert demonstrations on the round's scenes, recorded as the
        start data was (same noise injection, from home: no `sim.disturbance`, as a teleoperator
        records them), behind the same safety filter."""
        from vla.sim.athena import AthenaRobot
        from vla.sim.env import AthenaEnv
        from vla.sim.episodes import episode_name, record_episode
        from vla.sim.safety import SafetyFilter

        learn, done = self.cfg.learn, self.dataset.recorded(r)
        noise = self.start_cfg.data.sample.expert_noise
        with AthenaRobot(self.sim) as model:
            env, safety = AthenaEnv(robot=model), SafetyFilter(model, self.sim.safety, self.sim.control_hz)
            for task in learn.tasks:
                for seed in learn.round_seeds(r):
                    if episode_name(task, seed) not in done:
                        episode = record_episode(env, safety, task, seed, noise)
                        episode["metadata"].update(round=r, relabel="expert_demos", judge="sim")
                        self.dataset.write_episode(r, episode_name(task, seed), episode)
        n = len(self.dataset.recorded(r))
        return {"episodes": n, "successes": n, "expert_requests": 0, "requests": 0}

    def _train(self, r: int, manifest: dict) -> dict:
        view = self.dataset.union_view(r)
        init_from = self.deployed(r)["policy_trained"]
        train_cfg = self.round_train_config(r, view, init_from)
        log.info("round %d: fine-tuning %s on %s (%d steps)", r, init_from, view, train_cfg.trainer.max_steps)
        metrics = self.train_fn(train_cfg)
        run_dir = Path(train_cfg.run_dir)
        if not (run_dir / "model" / "config.json").is_file():
            raise LoopError(f"round {r}: training finished without {run_dir / 'model'}")
        record = {
            **manifest,
            "status": "trained",
            "init_from": init_from,
            "policy_trained": str(run_dir.resolve()),
            "train_view": str(view),
            "train_episodes": training_episodes(view, train_cfg.data.success_only),
            "val_loss": metrics.get("val/loss"),
            "train_seconds": metrics.get("wall_time_s"),
        }
        self.dataset.write_manifest(r, record)
        return record

    def round_train_config(self, r: int, view: Path, init_from: str) -> TrainConfig:
        c = copy.deepcopy(self.start_cfg)
        c.data.root, c.data.success_only = str(view), self.cfg.learn.relabel == "success_only"
        c.init_from, c.ckpt_path = str(init_from), None
        c.trainer.max_steps, c.trainer.val_check_interval = (
            self.cfg.train.max_steps,
            self.cfg.train.val_check_interval,
        )
        c.trainer.enable_progress_bar = False
        c.optim.lr = self.cfg.train.lr or c.optim.lr
        c.optim.warmup_steps = self.cfg.train.warmup_steps
        c.callbacks.sim_eval_every_n_val = 0
        c.logger, c.paths = copy.deepcopy(self.cfg.logger), copy.deepcopy(self.cfg.paths)
        c.run_dir = str(self.dir / "rounds" / f"round_{r:03d}" / "train")
        c.run_name, c.seed = f"{self.dir.name}_round_{r}", self.start_cfg.seed + r
        return to_object(OmegaConf.structured(c), TrainConfig)  # the schema's checks once more

    def _evaluate(self, r: int, manifest: dict) -> dict:
        evaluation = evaluate_run(manifest["policy_trained"], self.cfg, self.sim)
        deployed = self.deployed(r)
        promoted, why = should_promote(evaluation, deployed["evaluation"], self.cfg.learn.promotion)
        log.info(
            "round %d: %s (%s; rule %s)",
            r,
            "promoted" if promoted else "kept, not deployed",
            why,
            self.cfg.learn.promotion,
        )
        record = {
            **manifest,
            "status": "evaluated",
            "evaluation": evaluation,
            "promoted": promoted,
            "promotion": f"{self.cfg.learn.promotion}: {why} against round {deployed['round']}",
        }
        self.dataset.write_manifest(r, record)
        log_round(self.cfg.logger, self.dir, history_rows(self.dataset.manifests()[: r + 1]))
        return record


def run_loop(cfg: LearnOnlineConfig, train_fn: TrainFn, judge=None) -> dict[str, Any]:
    """Run (or resume) the loop in `cfg.output_dir`; returns {"rounds": history rows, "deployed", ...}."""
    return Loop(cfg, train_fn, judge).run()
