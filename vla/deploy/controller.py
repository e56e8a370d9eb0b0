"""The robot client's control loop: observations to the policy server, action chunks back, every command
through the one safety filter (`vla.sim.safety.SafetyFilter`), at the policy's control rate.

Per control tick t:
  1. ask for a chunk when needed: `sync`, when the current chunk is used up and none is in flight;
     `async`, also whenever the queued chunks and those in flight cover no more than `ahead` ticks
     from now, so several are in flight when the latency is over half a chunk. `ahead` follows the
     measured latency: the largest lag (ticks from a request's observation to the tick its chunk is
     taken) of the last `latency_window` chunks, plus one tick, so each chunk arrives before the
     queue runs out. When that lag is a whole chunk or more, no chunk can arrive before its first
     action is due, and async asks only once the robot has stopped, as sync does
     (`request_when_left` fixes `ahead` instead);
  2. take any reply. A chunk asked for while the robot was moving (actions queued for its observation's
     tick t0) holds actions for t0..t0+K-1: the ones already past are dropped, the rest blended with
     earlier predictions for the same ticks by temporal ensembling (ACT: weights exp(-decay * i), i = 0
     the oldest). A chunk asked for while nothing was queued (always so in sync) runs from its first
     action on arrival: the robot held still since the observation, which is still its state;
  3. no action for t (inference late, server down, request refused): hold the last safe command. Never
     extrapolate the policy. The client's watchdog gives up on a request after `request_timeout_s` and
     reconnects; the loop goes on holding;
  4. the command passes the safety filter (counted per intervention, logged) and goes to the robot;
  5. stuck: the filter retracts toward home; the loop then drops its chunks and asks again (a retry),
     and gives the task up after `max_retries` retries; the task times out at `task_timeout_s`.
Nothing from the network can end the loop: every failure becomes a held command and a log line.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque

import numpy as np

from vla.config.deploy import ControlSettings
from vla.deploy.client import PolicyClient
from vla.deploy.robot import Robot
from vla.sim.safety import INTERVENTIONS, SafetyFilter

log = logging.getLogger(__name__)
EVENTS = (
    "requests",
    "chunks",
    "late",
    "refused",
    "lost",
    "held",
    "retries",
    "gave_up",
    "timeout",
    "overruns",
)


def request_ahead(lags: list[int], chunk_size: int) -> int:
    """Actions left when async asks for the next chunk, from the recent lags (ticks from a request's
    observation to the tick its chunk was taken): the largest lag plus one tick of margin, so the chunk
    comes before the queue runs out; 0 (ask once stopped, as sync) when the lag is a chunk or more,
    since such a chunk is entirely past on arrival."""
    lag = max(lags)
    return 0 if lag >= chunk_size else min(lag + 1, chunk_size)


class ChunkQueue:
    """Predicted actions by control tick, blended where chunks overlap (temporal ensembling)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self._by_tick: dict[int, list[np.ndarray]] = {}

    def add(self, chunk: np.ndarray, start: int, now: int) -> int:
        """Actions `chunk` [K, D] for ticks start..start+K-1; those before `now` are past and dropped.
        Returns how many were kept."""
        kept = 0
        for k, action in enumerate(np.asarray(chunk, dtype=np.float64)):
            if start + k >= now:
                self._by_tick.setdefault(start + k, []).append(action)
                kept += 1
        return kept

    def left(self, now: int) -> int:
        """Consecutive ticks from `now` on with an action."""
        n = 0
        while now + n in self._by_tick:
            n += 1
        return n

    def pop(self, now: int) -> np.ndarray | None:
        """The blended action for tick `now` (None: none), forgetting ticks up to it."""
        for tick in [t for t in self._by_tick if t < now]:
            del self._by_tick[tick]
        predictions = self._by_tick.pop(now, None)
        if not predictions:
            return None
        if len(predictions) == 1:
            return predictions[0]
        weights = np.exp(-self.decay * np.arange(len(predictions)))
        return np.tensordot(weights / weights.sum(), np.stack(predictions), axes=1)

    def clear(self) -> None:
        self._by_tick.clear()


def run_episode(
    robot: Robot,
    client: PolicyClient,
    safety: SafetyFilter,
    settings: ControlSettings,
    instruction: str,
    num_steps: int,
    metadata: dict,
    meta: dict | None = None,
    recent_lags: deque[int] | None = None,
) -> dict:
    """Drive `robot` for `num_steps` ticks (or `settings.task_timeout_s`) toward `instruction`.
    `recent_lags` carries the measured lags (ticks) from earlier episodes into this one and is updated.

    Returns {"steps", "events": {name: count}, "interventions": {name: count}, "commands": [T, 23],
    "held_ticks": [t, ...], "roundtrip_ms": [...]}; the caller scores the task."""
    hz = robot.control_hz
    if metadata.get("control_hz") and float(metadata["control_hz"]) != hz:
        log.warning("the policy was trained at %s Hz; this robot runs at %s Hz", metadata["control_hz"], hz)
    limit = num_steps if settings.task_timeout_s is None else math.ceil(settings.task_timeout_s * hz)
    timed_out, num_steps = limit < num_steps, min(num_steps, limit)
    chunk_size = int(metadata["chunk_size"])
    fixed = settings.request_when_left
    if recent_lags is None:
        recent_lags = deque(maxlen=settings.latency_window)
    ahead = 0 if settings.mode == "sync" else fixed or max(1, chunk_size // 2)  # until a lag is measured
    if settings.mode == "async" and fixed is None and recent_lags:
        ahead = request_ahead(list(recent_lags), chunk_size)
    reads_state = int(metadata.get("state_dim") or 0) > 0
    events = dict.fromkeys(EVENTS, 0)
    counts_before = dict(safety.counts)
    safety.reset(robot.joint_positions())
    chunks = ChunkQueue(settings.ensemble_decay)
    # request id -> (tick of its observation, time sent, whether the robot had nothing queued then)
    pending: dict[int, tuple[int, float, bool]] = {}
    commands, held_ticks, roundtrips, lags, holding = [], [], [], [], False
    period = 1.0 / hz
    next_tick = time.perf_counter()

    def take(reply: dict, t: int) -> None:
        """Take `reply` at tick t: queue its chunk, count its lag, or count why it has none."""
        nonlocal ahead
        if reply.get("id") not in pending:
            return
        asked_at, _, stopped = pending.pop(reply["id"])
        if reply["type"] != "actions":  # "error" (refused) or "lost" (timed out, disconnected)
            events["refused" if reply["type"] == "error" else "lost"] += 1
            log.warning("tick %d: no chunk for request %d (%s)", t, reply["id"], reply.get("error"))
            return
        actions = np.asarray(reply["actions"])
        start = t if stopped else asked_at  # stopped: the observation is still the state
        if not chunks.add(actions.reshape(len(actions), -1), start, t):
            events["late"] += 1
            log.info("tick %d: the chunk for tick %d came after its last action", t, asked_at)
        events["chunks"] += 1
        roundtrips.append(reply.get("roundtrip_ms"))
        lags.append(t - asked_at)
        recent_lags.append(t - asked_at)
        if settings.mode == "async" and fixed is None:
            ahead = request_ahead(list(recent_lags), chunk_size)

    for t in range(num_steps):
        for rid, (_, sent, _) in list(pending.items()):
            if time.perf_counter() - sent > settings.request_timeout_s:
                events["lost"] += 1  # e.g. submitted while the server was down: ask again, fresh frame
                log.warning("tick %d: request %d unanswered for %s s", t, rid, settings.request_timeout_s)
                del pending[rid]

        while (reply := client.poll()) is not None:
            take(reply, t)
        # Ticks from t on that the queue and the chunks in flight will cover (if on time).
        horizon = max([chunks.left(t)] + [asked + chunk_size - t for asked, _, _ in pending.values()])
        stopped = not pending and not chunks.left(t)
        if stopped or (ahead > 0 and horizon <= ahead and len(pending) < settings.max_in_flight):
            request = {"image": robot.image(), "instruction": instruction, "step": t}
            if reads_state:
                request["state"] = np.asarray(robot.state(), dtype=np.float32)
            if meta is not None:
                request["meta"] = {**meta, "step": t}
            pending[client.submit(request)] = (t, time.perf_counter(), stopped)
            events["requests"] += 1
        # Lockstep (not realtime): wait for the answer when there is nothing else to do.
        if not settings.realtime and pending and not chunks.left(t):
            reply = client.poll(settings.request_timeout_s + settings.connect_timeout_s)
            while reply is not None:
                take(reply, t)
                reply = client.poll()
        action = chunks.pop(t)
        q = robot.joint_positions()
        before = dict(safety.counts)
        if action is None:
            events["held"] += 1
            held_ticks.append(t)
            if not holding:
                log.info("tick %d: no action in time: holding the last safe command", t)
            holding = True
            command = safety.hold()
        else:
            holding = False
            command = safety(action, q)
        robot.apply(command)
        commands.append(command)
        changed = [k for k in INTERVENTIONS if safety.counts[k] != before[k]]
        if changed:
            log.debug("tick %d: safety filter: %s", t, ", ".join(changed))
        if safety.counts["stuck"] != before["stuck"]:
            events["retries"] += 1
            log.warning("tick %d: stuck: retracting toward home, then retry %d", t, events["retries"])
            chunks.clear()  # the retry starts from a fresh observation after the retract
            pending.clear()  # answers to observations from before it are of no use
            if events["retries"] > settings.max_retries:
                events["gave_up"] += 1
                log.error(
                    "tick %d: still stuck after %d retries: giving the task up", t, settings.max_retries
                )
                break
        if settings.realtime:
            next_tick += period
            delay = next_tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                events["overruns"] += 1
                next_tick = time.perf_counter()
    else:
        if timed_out:
            events["timeout"] += 1
            log.warning("task timeout after %s s (%d ticks)", settings.task_timeout_s, num_steps)
    interventions = {k: safety.counts[k] - counts_before[k] for k in INTERVENTIONS}
    if any(interventions.values()):
        log.info("safety interventions: %s", {k: v for k, v in interventions.items() if v})
    return {
        "steps": len(commands),
        "events": events,
        "interventions": interventions,
        "commands": np.array(commands),
        "held_ticks": held_ticks,
        "roundtrip_ms": roundtrips,
        "lag_ticks": lags,
    }


def drive_episodes(
    robot,
    client: PolicyClient,
    safety: SafetyFilter,
    settings: ControlSettings,
    tasks: list[str],
    episodes_per_task: int,
    seed: int,
    metadata: dict,
) -> dict:
    """Episodes seed..seed+n-1 of each task on a `vla.deploy.robot.SimAthena` through the server:
    {"success_rate", "episodes", "events", "interventions", "per_task": {task: {"successes",
    "final_values", "failures"}},
    "roundtrip_ms": [...], "commands": {(task, seed): [T, 23]}}."""
    report = {"events": dict.fromkeys(EVENTS, 0), "interventions": dict.fromkeys(INTERVENTIONS, 0)}
    per_task, commands, roundtrips = {}, {}, []
    recent_lags: deque[int] = deque(maxlen=settings.latency_window)  # the latency, across episodes
    for task in tasks:
        outcomes, values = [], []
        for s in range(seed, seed + episodes_per_task):
            spec = robot.start(task, s)
            meta = {"task": task, "seed": s} if metadata.get("reads_meta") else None
            result = run_episode(
                robot, client, safety, settings, spec.instruction, spec.num_steps, metadata, meta, recent_lags
            )
            details = robot.env.success_details()
            ok = result["events"]["gave_up"] == 0 and details["success"]
            values.append(round(details["value"], 4))
            log.info("%s seed %d: %s (%s)", task, s, "success" if ok else "failure", result["events"])
            outcomes.append(ok)
            commands[(task, s)] = result["commands"]
            roundtrips += result["roundtrip_ms"]
            for group in ("events", "interventions"):
                for k, v in result[group].items():
                    report[group][k] += v
        per_task[task] = {
            "successes": int(sum(outcomes)),
            "final_values": values,
            "failures": [s for s, ok in zip(range(seed, seed + episodes_per_task), outcomes) if not ok],
        }
    episodes = len(tasks) * episodes_per_task
    successes = sum(r["successes"] for r in per_task.values())
    return {
        "success_rate": successes / episodes,
        "episodes": episodes,
        **report,
        "per_task": per_task,
        "roundtrip_ms": roundtrips,
        "commands": commands,
    }
