"""Simulated athena humanoid (MuJoCo, Unitree G1 with a fixed base): tasks, sample data, evaluation.

Offscreen rendering needs an OpenGL backend chosen before anything imports mujoco (MuJoCo reads
`MUJOCO_GL` once, at its own import): entry points (train.py, the scripts, the tests' conftest) call
`select_gl_backend()` first; a program of your own should too, or set MUJOCO_GL itself. Importing
this package changes nothing.

Public API (imported lazily, so `vla.config.sim` stays cheap):
    AthenaEnv, ensure_sample_dataset, generate_dataset, evaluate_policy, evaluate_with_baselines
"""

from __future__ import annotations

import ctypes.util
import importlib
import os
import sys
import warnings


def select_gl_backend() -> None:
    """An explicit `MUJOCO_GL` wins; otherwise EGL (Mesa's software renderer here, a GPU's EGL where there
    is one), and OSMesa when no libEGL is installed."""
    if "MUJOCO_GL" in os.environ:
        return
    if "mujoco" in sys.modules:
        warnings.warn(
            "mujoco was imported before vla.sim.select_gl_backend(), so MUJOCO_GL could not be chosen; "
            "offscreen rendering may fail. Call it first or set MUJOCO_GL=egl (or osmesa).",
            stacklevel=3,
        )
        return
    os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "osmesa"


_LAZY = {
    "AthenaEnv": "vla.sim.env",
    "ensure_sample_dataset": "vla.sim.episodes",
    "generate_dataset": "vla.sim.episodes",
    "evaluate_policy": "vla.sim.evaluate",
    "evaluate_with_baselines": "vla.sim.evaluate",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vla.sim' has no attribute {name!r}")
