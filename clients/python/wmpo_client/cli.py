"""`wmpo-client`: imagine an action file against a frame and write a GIF; plan actions toward
a goal with the action optimizer; check health.

    wmpo-client imagine --url http://127.0.0.1:8000 --api-key KEY \\
        --frame frame.png --actions actions.npy --horizon 2 --seed 0 --gif out.gif
    wmpo-client plan --url http://127.0.0.1:8003 --frame frame.png --goal goal.png \\
        --instruction "push the puck to the goal" --steps 15 --actions-out plan.npy --stream
    wmpo-client health --url grpc://127.0.0.1:50051

`--url` picks the transport: http(s)://... for HTTP, grpc://host:port for
gRPC. The API key may also come from WMPO_API_KEY, the URL from WMPO_URL.
Actions are float32 (N, C, K, 4), (N, K, 4) or a single chunk (K, 4), as
.npy or as .json (a nested list, or {"candidates": [...]}). The GIF shows the
candidates side by side, left to right in file order, starting with the
start frame. A JSON summary (seed, provenance, timing, judge fields) goes to
stdout; errors go to stderr with exit status 1 (service) or 2 (input).

argparse rather than click/typer: the client package stays at its six
dependencies, and three subcommands need nothing more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wmpo_client import connect
from wmpo_client.errors import SimulatorError
from wmpo_client.results import HealthStatus, ImagineResult

DEFAULT_URL = "http://127.0.0.1:8000"
_SEPARATOR_PX = 2


# -------------------------------------------------------------------- files


def load_frame(path: str | Path, resize: int | None = None) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), optionally resized to resize x resize."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
        if resize:
            rgb = rgb.resize((resize, resize), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8).copy()


def load_actions(path: str | Path) -> np.ndarray:
    """Candidates from .npy or .json as float32 (N, C, K, 4) or (N, K, 4)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        raw: Any = np.load(path, allow_pickle=False)
    elif suffix == ".json":
        raw = json.loads(path.read_text())
        if isinstance(raw, dict):
            if "candidates" not in raw:
                raise ValueError(f"{path}: a JSON object needs a 'candidates' key")
            raw = raw["candidates"]
    else:
        raise ValueError(f"{path}: actions must be a .npy or .json file")
    try:
        actions = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{path}: actions are not a rectangular array of numbers ({exc})"
        ) from None
    if actions.ndim == 2:  # one chunk of one candidate
        actions = actions[None]
    if actions.ndim not in (3, 4) or actions.shape[-1] != 4:
        raise ValueError(
            f"{path}: actions must have shape (K, 4), (N, K, 4) or (N, C, K, 4), "
            f"got {actions.shape}"
        )
    return actions


def gif_frames(
    frames: np.ndarray, start: np.ndarray | None = None, scale: int = 2
) -> list[np.ndarray]:
    """(N, T, H, W, 3) candidates -> T (+1 with `start`) images, candidates side by side."""
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, T, H, W, 3), got {frames.shape}")
    n, _, h, _, _ = frames.shape
    steps = list(frames.transpose(1, 0, 2, 3, 4))  # T x (N, H, W, 3)
    if start is not None:
        steps.insert(0, np.repeat(start[None], n, axis=0))
    gap = np.full((h, _SEPARATOR_PX, 3), 255, np.uint8)
    out = []
    for per_candidate in steps:
        row: list[np.ndarray] = []
        for i, frame in enumerate(per_candidate):
            if i:
                row.append(gap)
            row.append(frame)
        image = np.concatenate(row, axis=1)
        out.append(image.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else image)
    return out


def write_gif(
    path: str | Path,
    frames: np.ndarray,
    start: np.ndarray | None = None,
    scale: int = 2,
    fps: float = 5.0,
) -> Path:
    """Write candidates' frames (N, T, H, W, 3) side by side as a looping GIF."""
    images = [Image.fromarray(f) for f in gif_frames(frames, start, scale)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=max(int(1000 / fps), 20),
        loop=0,
    )
    return path


# ------------------------------------------------------------------- client


def _client(url: str, api_key: str | None, timeout: float, retries: int) -> Any:
    return connect(url, api_key, timeout=timeout, retries=retries)


def _summary(result: ImagineResult, gif: Path | None) -> dict[str, Any]:
    frames = result.frames
    return {
        "request_id": result.request_id,
        "seed": result.seed,
        "candidates": int(frames.shape[0]),
        "frames_per_candidate": int(frames.shape[1]),
        "frame_shape": list(frames.shape[2:]),
        "confidence": [c.confidence for c in result.candidates],
        "verdict": result.verdict,
        "best_candidate": result.best_candidate,
        "provenance": result.provenance,
        "timing": result.timing,
        "gif": str(gif) if gif else None,
    }


def _imagine(args: argparse.Namespace) -> int:
    frame = load_frame(args.frame, args.resize)
    actions = load_actions(args.actions)
    with _client(args.url, args.api_key, args.timeout, args.retries) as sim:
        result = sim.imagine(frame, args.instruction, actions, args.horizon, args.seed)
    gif = write_gif(args.gif, result.frames, frame, args.scale, args.fps) if args.gif else None
    print(json.dumps(_summary(result, gif), indent=2))
    return 0


def _optimizer(url: str, api_key: str | None, timeout: float, retries: int) -> Any:
    if url.startswith("grpc://"):
        from wmpo_client.optimizer_grpc import GrpcOptimizerClient

        return GrpcOptimizerClient(url, api_key, timeout=timeout, retries=retries)
    if url.startswith(("http://", "https://")):
        from wmpo_client.optimizer_http import OptimizerClient

        return OptimizerClient(url, api_key, timeout=timeout, retries=retries)
    raise ValueError(f"url must start with http://, https:// or grpc://, got {url!r}")


def load_init_actions(path: str | Path) -> np.ndarray:
    """Initial actions (T, 4) from .npy or .json (a nested list)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        raw: Any = np.load(path, allow_pickle=False)
    elif path.suffix.lower() == ".json":
        raw = json.loads(path.read_text())
    else:
        raise ValueError(f"{path}: initial actions must be a .npy or .json file")
    try:
        actions = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a rectangular array of numbers ({exc})") from None
    if actions.ndim != 2 or actions.shape[-1] != 4:
        raise ValueError(f"{path}: initial actions must have shape (T, 4), got {actions.shape}")
    return actions


def _plan(args: argparse.Namespace) -> int:
    from wmpo_client.optimizer_results import Plan

    frame = load_frame(args.frame, args.resize)
    goal = load_frame(args.goal, args.resize) if args.goal else None
    target = np.load(args.target, allow_pickle=False) if args.target else None
    init = load_init_actions(args.init_actions) if args.init_actions else None
    options = {"target_frames": target, "goal": goal, "init_actions": init, "steps": args.steps,
               "seed": args.seed}
    with _optimizer(args.url, args.api_key, args.timeout, args.retries) as optimizer:
        if args.stream:
            plan = None
            for event in optimizer.plan_stream(frame, args.instruction, **options):
                if isinstance(event, Plan):
                    plan = event
                else:
                    print(json.dumps({"step": event.step, "steps": event.steps,
                                      "objective": event.objective}), file=sys.stderr)
            assert plan is not None  # the stream raises if it ends without its result
        else:
            plan = optimizer.plan(frame, args.instruction, **options)
    if args.actions_out:
        Path(args.actions_out).parent.mkdir(parents=True, exist_ok=True)
        np.save(args.actions_out, plan.actions)
    gif = write_gif(args.gif, plan.frames[None], frame, args.scale, args.fps) if args.gif else None
    print(json.dumps({
        "request_id": plan.request_id,
        "steps": plan.steps,
        "seed": plan.seed,
        "actions": plan.actions.round(4).tolist(),
        "objective_first": plan.objective[0] if plan.objective else None,
        "objective_last": plan.objective[-1] if plan.objective else None,
        "frames": list(plan.frames.shape),
        "provenance": plan.provenance,
        "timing": plan.timing,
        "actions_out": args.actions_out,
        "gif": str(gif) if gif else None,
    }, indent=2))
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(args.url, args.api_key, args.timeout, 0) as sim:
        status: HealthStatus = sim.health()
    print(json.dumps({"ready": status.ready, "reason": status.reason, "version": status.version}))
    return 0 if status.ready else 1


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("WMPO_URL", DEFAULT_URL),
        help="http(s)://host:port or grpc://host:port (default: $WMPO_URL or %(default)s)",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("WMPO_API_KEY"),
        help="API key (default: $WMPO_API_KEY)",
    )
    common.add_argument("--timeout", type=float, default=60.0, help="seconds per call")

    parser = argparse.ArgumentParser(
        prog="wmpo-client", description="Call the wmpo services (simulator, action optimizer)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    imagine = sub.add_parser(
        "imagine", parents=[common], help="imagine candidate action chunks from a frame"
    )
    imagine.add_argument("--frame", required=True, help="start frame image (PNG, JPEG, ...)")
    imagine.add_argument("--actions", required=True, help="candidates as .npy or .json")
    imagine.add_argument("--instruction", default="", help="the task in words")
    imagine.add_argument("--horizon", type=int, default=0, help="chunks to imagine (0: all)")
    imagine.add_argument("--seed", type=int, default=None, help="noise seed (default: drawn)")
    imagine.add_argument("--gif", default=None, help="write the candidates side by side here")
    imagine.add_argument("--scale", type=int, default=2, help="GIF pixel scale (default 2)")
    imagine.add_argument("--fps", type=float, default=5.0, help="GIF frames per second")
    imagine.add_argument(
        "--resize", type=int, default=None, help="resize the frame to N x N (the model's size)"
    )
    imagine.add_argument("--retries", type=int, default=3, help="retries on busy (429/503)")
    imagine.set_defaults(run=_imagine)

    plan = sub.add_parser(
        "plan",
        help="plan actions with the action optimizer (from a frame toward a goal or a clip)",
        description="Plan the next T actions from a frame: toward a goal image (--goal), a clip of "
        "future frames (--target), or the instruction-only future the generator imagines.",
    )
    plan.add_argument(
        "--url",
        default=os.environ.get("WMPO_OPTIMIZER_URL", "http://127.0.0.1:8003"),
        help="the optimizer: http(s)://host:port or grpc://host:port (default: "
        "$WMPO_OPTIMIZER_URL or %(default)s)",
    )
    plan.add_argument("--api-key", default=os.environ.get("WMPO_API_KEY"),
                      help="API key (default: $WMPO_API_KEY)")
    plan.add_argument("--timeout", type=float, default=600.0, help="seconds per call (default 600)")
    plan.add_argument("--frame", required=True, help="the current camera frame (PNG, JPEG, ...)")
    plan.add_argument("--instruction", required=True, help="the task in words")
    plan.add_argument("--goal", default=None, help="a goal image: where the plan should end")
    plan.add_argument("--target", default=None, help="future frames to reach, uint8 (n, H, W, 3) .npy")
    plan.add_argument("--init-actions", default=None,
                      help="initial actions (T, 4) as .npy or .json, e.g. the policy's chunk")
    plan.add_argument("--steps", type=int, default=None, help="optimization steps (default: the service's)")
    plan.add_argument("--seed", type=int, default=None, help="seed (default: drawn)")
    plan.add_argument("--stream", action="store_true", help="print the objective per step to stderr")
    plan.add_argument("--actions-out", default=None, help="write the actions (T, 4) here as .npy")
    plan.add_argument("--gif", default=None, help="write the imagined future here")
    plan.add_argument("--scale", type=int, default=2, help="GIF pixel scale (default 2)")
    plan.add_argument("--fps", type=float, default=5.0, help="GIF frames per second")
    plan.add_argument("--resize", type=int, default=None,
                      help="resize the frame (and goal) to N x N (the model's size)")
    plan.add_argument("--retries", type=int, default=3, help="retries on busy (429/503)")
    plan.set_defaults(run=_plan)

    health = sub.add_parser("health", parents=[common], help="is the service ready?")
    health.set_defaults(run=_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `wmpo-client` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except SimulatorError as exc:
        print(f"wmpo-client: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"wmpo-client: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
