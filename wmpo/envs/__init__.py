"""Real simulators behind gymnasium: MetaWorld v3 with image observations.

The simulator's names load MetaWorld on first use, so the task names (``wmpo.envs.tasks``) and
the CLI work where MetaWorld is not installed (a GPU node that only trains the DiT)."""

from typing import Any

from wmpo.envs.tasks import ALL_TASKS, POLICY_TASKS, check_task, instruction, parse_tasks

__all__ = [
    "ALL_TASKS", "DEFAULT_CAMERA", "POLICY_TASKS", "CameraSpec", "MetaWorldEnv", "SimState",
    "check_task", "instruction", "make_env", "parse_tasks",
]
_SIMULATOR = ("DEFAULT_CAMERA", "CameraSpec", "MetaWorldEnv", "SimState", "make_env")


def __getattr__(name: str) -> Any:
    if name in _SIMULATOR:
        from wmpo.envs import metaworld_env

        return getattr(metaworld_env, name)
    raise AttributeError(f"module 'wmpo.envs' has no attribute {name!r}")
