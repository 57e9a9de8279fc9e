"""Real simulators behind gymnasium: MetaWorld v3 with image observations."""

from wmpo.envs.metaworld_env import DEFAULT_CAMERA, CameraSpec, MetaWorldEnv, SimState, make_env
from wmpo.envs.tasks import ALL_TASKS, POLICY_TASKS, check_task, instruction, parse_tasks

__all__ = [
    "ALL_TASKS", "DEFAULT_CAMERA", "POLICY_TASKS", "CameraSpec", "MetaWorldEnv", "SimState",
    "check_task", "instruction", "make_env", "parse_tasks",
]
