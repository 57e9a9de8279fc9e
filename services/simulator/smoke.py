"""A deployed simulator's smoke check: one `/v1/imagine`, answered by the expected DiT backend.

The Helm chart's `helm test` pod runs it against the chart's simulator Service when Triton is
enabled (`python -m services.simulator.smoke --url http://<release>-simulator:8000
--expect-backend triton`); the API key comes from `WMPO_SMOKE_API_KEY` (the chart's service
key), never from the command line. It sends one start frame of `--image-size` pixels and one
candidate of one chunk, and checks that frames came back with the request's shape and that the
provenance names the backend (for triton, also the Triton models' versions). Exit status 0 and
one summary line when it passed; 1 and what went wrong otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx
import numpy as np
from wmpo_client.codec import from_json, to_json

KEY_ENV = "WMPO_SMOKE_API_KEY"
CHUNK = 8  # actions per chunk (the policy's)


class SmokeFailure(Exception):
    """The simulator answered, but not as a working deployment should."""


def imagine_body(image_size: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
    candidates = rng.uniform(-1, 1, (1, 1, CHUNK, 4)).astype(np.float32)
    return {"start_frames": to_json(frame), "candidates": to_json(candidates), "seed": seed}


def check_imagine(client: httpx.Client, api_key: str, expect_backend: str,
                  image_size: int = 64, seed: int = 0) -> dict[str, str]:
    """POST one /v1/imagine through `client` (its base URL the simulator) and check the answer;
    returns the provenance. Raises SmokeFailure saying what is wrong."""
    started = time.perf_counter()
    r = client.post("/v1/imagine", json=imagine_body(image_size, seed), headers={"x-api-key": api_key})
    if r.status_code != 200:
        raise SmokeFailure(f"/v1/imagine answered {r.status_code}: {r.text[:500]}")
    body = r.json()
    candidates = body.get("candidates") or []
    if len(candidates) != 1:
        raise SmokeFailure(f"/v1/imagine returned {len(candidates)} candidates, sent 1")
    frames = from_json(candidates[0]["frames"])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (image_size, image_size, 3):
        raise SmokeFailure(f"/v1/imagine returned frames {frames.dtype} {frames.shape}, "
                           f"expected uint8 (T, {image_size}, {image_size}, 3)")
    provenance = body.get("provenance") or {}
    backend = provenance.get("backend")
    if backend != expect_backend:
        raise SmokeFailure(f"the provenance names backend {backend!r}, expected {expect_backend!r} "
                           f"(provenance: {json.dumps(provenance)[:500]})")
    if expect_backend == "triton" and not provenance.get("triton_models"):
        raise SmokeFailure("backend triton, but the provenance names no Triton models")
    provenance = {**provenance, "smoke_seconds": f"{time.perf_counter() - started:.2f}"}
    return provenance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.simulator.smoke", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the simulator's HTTP base URL")
    parser.add_argument("--expect-backend", default="triton", choices=["torch", "onnx", "triton"])
    parser.add_argument("--image-size", type=int, default=64, help="the checkpoint's frame size")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the request")
    args = parser.parse_args(argv)
    key = os.environ.get(KEY_ENV, "")
    if not key:
        print(f"smoke: set {KEY_ENV} to an API key the simulator accepts", file=sys.stderr)
        return 1
    try:
        with httpx.Client(base_url=args.url, timeout=args.timeout) as client:
            provenance = check_imagine(client, key, args.expect_backend, args.image_size)
    except (SmokeFailure, httpx.HTTPError) as e:
        print(f"smoke: FAILED against {args.url}: {e}", file=sys.stderr)
        return 1
    keep = ("backend", "triton_url", "triton_models", "triton_shared_memory", "world_model_sha256", "smoke_seconds")
    print("smoke: ok, " + ", ".join(f"{k}={provenance[k]}" for k in keep if k in provenance))
    return 0


if __name__ == "__main__":
    sys.exit(main())
