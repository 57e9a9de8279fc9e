"""MetaWorld v3 task registry: names, natural-language instructions and scripted experts.

All 50 MetaWorld v3 tasks are available. ``POLICY_TASKS`` is the set the base policy is
trained and evaluated on (see README, "Tasks"): two easy tasks, one medium and two hard.
``HELDOUT_TASKS`` are never in the task-agnostic world model's training data (the play
split, ``PLAY_TASKS`` = all the others); they are its zero-shot check (RAW-Dream).
"""

from __future__ import annotations

import difflib

from wmpo.errors import UnknownTaskError

# Scripted experts finish the policy tasks in 45-90 steps; 160 = 20 chunks of 8 leaves slack.
DEFAULT_MAX_STEPS = 160

# Short, imperative instructions in the style of LIBERO / Open-X annotations.
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring onto the peg",
    "basketball-v3": "dunk the ball into the basket",
    "bin-picking-v3": "move the cube from one bin to the other bin",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out of the coffee machine",
    "coffee-push-v3": "push the mug into the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pull the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "hand-insert-v3": "put the hand into the hole",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate sideways out of the goal",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grab the stick and push the box with it",
    "stick-pull-v3": "grab the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck back to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position behind the wall",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

ALL_TASKS: tuple[str, ...] = tuple(INSTRUCTIONS)

# Easy (button-press-topdown, drawer-close), medium (door-open) and hard (push: small puck,
# goal only a dot; pick-place: grasp + lift + place). See README "Tasks" for why.
POLICY_TASKS: tuple[str, ...] = (
    "button-press-topdown-v3",
    "drawer-close-v3",
    "door-open-v3",
    "push-v3",
    "pick-place-v3",
)

# Held out of the world model's play data, declared once here. Five have a sibling task in
# the play split with the same object (door, drawer, puck behind a wall, window, button
# behind a wall), so zero-shot imagination can be judged on a familiar scene doing something
# new; hammer-v3's hammer and nail appear in no other task (the hardest zero-shot case).
HELDOUT_TASKS: tuple[str, ...] = (
    "door-close-v3",
    "drawer-open-v3",
    "push-back-v3",
    "pick-place-wall-v3",
    "window-close-v3",
    "button-press-wall-v3",
    "hammer-v3",
)
assert not set(HELDOUT_TASKS) & set(POLICY_TASKS), "the policy tasks must be in the play split"

# The world model's training tasks: every other task (43 of 50), the policy tasks included.
PLAY_TASKS: tuple[str, ...] = tuple(t for t in ALL_TASKS if t not in HELDOUT_TASKS)

NAMED_TASK_SETS: dict[str, tuple[str, ...]] = {
    "policy": POLICY_TASKS,
    "all": ALL_TASKS,
    "play": PLAY_TASKS,
    "heldout": HELDOUT_TASKS,
}

# MetaWorld's expert class names do not always follow the task name.
_EXPERT_NAME_OVERRIDES = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


def check_task(name: str) -> str:
    """Return ``name`` if it is a MetaWorld v3 task, else raise an error listing valid names."""
    if name in INSTRUCTIONS:
        return name
    if name + "-v3" in INSTRUCTIONS:  # accept "door-open" for "door-open-v3"
        return name + "-v3"
    close = difflib.get_close_matches(name, ALL_TASKS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownTaskError(
        f"unknown task {name!r}.{hint} Valid tasks: {', '.join(ALL_TASKS)}"
    )


def parse_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Parse a comma-separated task list; ``policy``, ``all``, ``play`` (the world model's
    training tasks) and ``heldout`` (its held-out tasks) are named sets (``NAMED_TASK_SETS``)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item in NAMED_TASK_SETS:
            out.extend(NAMED_TASK_SETS[item])
        else:
            out.append(check_task(item))
    if not out:
        raise UnknownTaskError(f"no tasks given. Valid tasks: {', '.join(ALL_TASKS)}")
    return list(dict.fromkeys(out))


def instruction(task: str) -> str:
    return INSTRUCTIONS[check_task(task)]


def expert_class_name(task: str) -> str:
    task = check_task(task)
    if task in _EXPERT_NAME_OVERRIDES:
        return _EXPERT_NAME_OVERRIDES[task]
    words = task.removesuffix("-v3").split("-")
    return "Sawyer" + "".join(w.capitalize() for w in words) + "V3Policy"


def make_expert(task: str):
    """The scripted MetaWorld expert for ``task`` (acts on the 39-D state observation)."""
    import warnings

    import metaworld.policies as policies

    # MetaWorld warns that some expert gains exceed the action range; the env clips them.
    warnings.filterwarnings("ignore", message="Constant", module="metaworld")
    return getattr(policies, expert_class_name(task))()
