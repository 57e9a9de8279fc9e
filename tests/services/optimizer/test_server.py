"""Serving from checkpoints: `wmpo serve optimizer` (its errors, and the settings and planner it
serves with), and the embedded stack, which runs the optimizer only when a plan generator is
given. The tiny planner is saved the way training saves its models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from wmpo_client.optimizer_http import OptimizerClient

from services.cli import main
from services.embedded import embedded_stack
from services.optimizer.server import load_planner
from services.optimizer.settings import OptimizerSettings
from tests.services.optimizer.conftest import HORIZON, INSTRUCTION, frames, save_planner

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_planner(tmp_path_factory.mktemp("optimizer-checkpoints"))


def test_the_planner_loads_from_checkpoints_with_their_hashes(checkpoints) -> None:
    generator, vae = checkpoints
    planner = load_planner(OptimizerSettings(generator=str(generator), trajectory_vae=str(vae), dev_mode=True))
    assert planner.horizon == HORIZON and planner.idm is None
    assert len(planner.hashes["generator_sha256"]) == 12 and len(planner.hashes["trajectory_vae_sha256"]) == 12
    assert planner.config.checkpoint is False  # the default: store activations (faster, same plans)
    low_memory = OptimizerSettings(generator=str(generator), trajectory_vae=str(vae), dev_mode=True,
                                   activation_checkpointing=True)
    assert load_planner(low_memory).config.checkpoint is True
    assert planner.config.anchor is False  # MVISTA-4D's +ActionInit: from the guess's VAE round trip
    anchored = load_planner(OptimizerSettings(generator=str(generator), trajectory_vae=str(vae),
                                              dev_mode=True, anchor_init=True))
    assert anchored.config.anchor is True and anchored.provenance()["planner"]["anchor"] is True


def test_the_planner_optimizes_through_a_world_model_when_one_is_set(checkpoints) -> None:
    """WMPO_WORLD_MODEL: the decoded actions drive that world model's DiT (here the generator's own
    weights, which share its autoencoder); its hash joins the provenance; a missing one is named."""
    generator, vae = checkpoints
    planner = load_planner(OptimizerSettings(generator=str(generator), trajectory_vae=str(vae),
                                             world_model=str(generator), dev_mode=True))
    assert planner.world_model is not None
    assert planner.hashes["world_model_sha256"] == planner.hashes["generator_sha256"]
    from wmpo.optimize.planner import PlanRequest

    result = planner.plan([PlanRequest(frames(1, 0)[0], INSTRUCTION, steps=2, seed=0)])[0]
    assert result.actions.shape == (HORIZON, 4) and len(result.objective) == 2
    from wmpo.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no world model checkpoint at"):
        load_planner(OptimizerSettings(generator=str(generator), trajectory_vae=str(vae),
                                       world_model=str(vae.parent / "nope"), dev_mode=True))


def test_serve_optimizer_command(checkpoints, capsys, monkeypatch) -> None:
    generator, vae = checkpoints
    monkeypatch.setenv("WMPO_GENERATOR", "")  # blank: no plan generator (not the bundled one)
    assert main(["serve", "optimizer", "--dev"]) == 2
    assert "set WMPO_GENERATOR and WMPO_TRAJECTORY_VAE" in capsys.readouterr().err
    monkeypatch.delenv("WMPO_GENERATOR")
    assert main(["serve", "optimizer", "--dev", "--generator", str(generator), "--trajectory-vae",
                 str(vae.parent / "nope")]) == 2
    assert "no trajectory VAE checkpoint at" in capsys.readouterr().err
    assert main(["serve", "optimizer", "--generator", str(generator), "--trajectory-vae", str(vae)]) == 2
    assert "API key" in capsys.readouterr().err  # keys are required outside dev mode

    import services.optimizer.server as server

    served = []
    monkeypatch.setattr(server, "serve", lambda settings, planner, worker: served.append((settings, planner)))
    monkeypatch.setenv("WMPO_MAX_STEPS", "150")
    assert main(["serve", "optimizer", "--dev", "--port", "8133", "--generator", str(generator),
                 "--trajectory-vae", str(vae)]) == 0
    settings, planner = served[0]
    assert settings.port == 8133 and settings.max_steps == 150 and settings.generator == str(generator)
    assert planner.horizon == HORIZON
    assert "optimizer: HTTP on 127.0.0.1:8133" in capsys.readouterr().err
    # Nothing configured: the bundled plan generator, trajectory VAE and residual inverse dynamics.
    assert main(["serve", "optimizer", "--dev"]) == 0
    settings, planner = served[1]
    assert Path(settings.generator) == REPO / "checkpoints" / "plan-generator-tasks" and settings.world_model is None
    assert planner.idm is not None and planner.hashes["trajectory_vae_sha256"] == "11d0c6f5e67b"
    assert "through the plan tokens" in capsys.readouterr().err
    assert main(["serve", "optimizer", "--dev", "--worker", "--generator", str(generator),
                 "--trajectory-vae", str(vae)]) == 2
    assert "--worker consumes plan work from Redis" in capsys.readouterr().err


def test_embedded_stack_runs_the_optimizer_only_with_a_plan_generator(checkpoints) -> None:
    generator, vae = checkpoints
    world_model = REPO / "checkpoints" / "world-model"
    with embedded_stack(world_model, judge=False) as stack:
        assert stack.optimizer is None
    with embedded_stack(world_model, judge=False, optimizer_generator=generator, optimizer_vae=vae,
                        optimizer_overrides={"default_steps": 2}) as stack:
        assert stack.optimizer is not None and stack.judge is None
        with OptimizerClient(stack.optimizer.http_url) as client:
            plan = client.plan(frames(1, 0)[0], INSTRUCTION, seed=0)
        assert plan.actions.shape == (HORIZON, 4) and plan.steps == 2 and np.abs(plan.actions).max() <= 1
        assert plan.provenance["generator_sha256"] != ""
