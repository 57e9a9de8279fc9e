"""The rollout viewer in a real browser: Debian's chromium, headless, driven by Playwright.

A keyed stack runs in this process on loopback ports: the judge (the bundled classifier),
a simulator over a tiny world model that asks it, and a trainer whose jobs use both. The
page is opened from the simulator and the trainer as a user would, with the key in the URL
fragment, and asserted on what it shows: candidate videos and confidences from an imagine
request made by the page, imagined vs real frames of a recorded run, a job's plots filling
from its event stream while it runs, and a clear error for a wrong key. Screenshots go to
`outputs/viewer-screenshots/` (git-ignored) for people to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from playwright.sync_api import Browser, Page, expect, sync_playwright

from services.embedded import serve_in_thread, serve_judge_in_thread
from services.judge.server import load_classifier
from services.judge.settings import JudgeSettings
from services.simulator.settings import SimulatorSettings
from services.trainer.server import serve_trainer_in_thread
from services.trainer.settings import TrainerSettings
from tests.services.simulator.conftest import tiny_world_model
from wmpo.data.episodes import Episode, ShardWriter, init_dataset

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "outputs" / "viewer-screenshots"
KEY = "viewer-key-0123456789abcdef"
LOOPBACK: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "grpc_port": 0, "api_keys": KEY}
# Two groups of 2 rollouts of 2 chunks per step on the tiny world model: about a second a step.
JOB: dict[str, Any] = {
    "policy": str(ROOT / "checkpoints" / "policy-base"),
    "tasks": ["button-press-topdown-v3"],
    "groups_per_step": 1,
    "group_size": 2,
    "chunks": 2,
    "verify": False,
    "max_sampling_rounds": 1,
    "eval_episodes": 0,
}

torch.set_num_threads(1)


@dataclass(frozen=True)
class Stack:
    simulator: str
    trainer: str


def write_runs(root: Path) -> None:
    """A real run of 2 episodes and its imagined replays (as `wmpo imagine-dataset` writes
    them: same task and seed, frames every 2 steps, source kind imagined, from the real run)."""
    rng = np.random.default_rng(0)
    camera = {"name": "corner4"}
    init_dataset(root / "real", 64, camera)
    init_dataset(root / "imagined", 64, camera)
    real, imagined = ShardWriter(root / "real"), ShardWriter(root / "imagined")
    for seed in (7, 8):
        frames = rng.integers(0, 255, (9, 64, 64, 3), dtype=np.uint8)
        success = np.zeros(9, bool)
        success[-1] = seed == 7
        meta = {"task": "drawer-close-v3", "instruction": "push the drawer closed", "seed": seed}
        real.add(Episode(frames, np.zeros((8, 4), np.float32), success, {**meta, "source": "expert"}))
        source = {"kind": "imagined", "from": "datasets/real", "seed": seed}
        imagined.add(Episode(frames[::2] // 2, np.zeros((4, 4), np.float32), success[::2],
                             {**meta, "source": source, "frame_stride": 2}))
    real.flush()
    imagined.flush()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("viewer")
    write_runs(tmp / "runs")
    judge_settings = JudgeSettings(**LOOPBACK, checkpoint=str(ROOT / "checkpoints" / "judge"))
    with serve_judge_in_thread(load_classifier(judge_settings.checkpoint), judge_settings) as judge:
        sim_settings = SimulatorSettings(
            **LOOPBACK, judge_url=judge.http_url, judge_api_key=KEY, runs_dir=str(tmp / "runs"),
            max_wait_ms=5.0,
        )
        with serve_in_thread(tiny_world_model(), sim_settings) as sim:
            trainer_settings = TrainerSettings(
                **LOOPBACK, trainer_dir=str(tmp / "trainer"), simulator_url=sim.http_url,
                judge_url=judge.http_url, simulator_api_key=KEY, judge_api_key=KEY,
                stream_poll_s=0.1, torch_threads=1,
            )
            with serve_trainer_in_thread(trainer_settings) as trainer:
                yield Stack(sim.http_url, trainer.http_url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():  # never a silent skip: CI installs it with `make setup`
        pytest.fail(f"the viewer's browser tests need Debian's chromium at {CHROMIUM}: run "
                    "scripts/system_deps.sh (make setup)", pytrace=False)
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    # A script error or a CSP violation in the page is a failure even if the checks passed;
    # the 4xx answers the tests provoke (wrong key, bad candidates) are the only errors allowed.
    provoked = "Failed to load resource: the server responded with a status of 4"
    assert [e for e in errors if not e.startswith(provoked)] == []


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_the_page_loads_with_the_key_and_imagines_n_candidates_with_confidences(
    stack: Stack, page: Page
) -> None:
    page.goto(f"{stack.simulator}/viewer#key={KEY}")
    expect(page.locator("#service")).to_contain_text("simulator")
    assert "key=" not in page.url  # the key left the address bar for sessionStorage
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#start-canvas")).to_be_visible()
    page.fill("#n", "3")
    page.click("#imagine-run")

    candidates = page.locator("#imagine-results figure.candidate")
    expect(candidates).to_have_count(3, timeout=30_000)
    expect(page.locator("#imagine-results .confidence-value")).to_have_count(3)
    confidences = [float(t) for t in page.locator(".confidence-value").all_inner_texts()]
    assert all(0.0 <= c <= 1.0 for c in confidences)
    expect(page.locator("#imagine-summary .verdict")).to_have_text(
        re.compile(r"^verdict: (execute|replan)$")
    )
    best = page.locator("figure.candidate.best")
    expect(best).to_have_count(1)
    assert float(best.locator(".confidence-value").inner_text()) == max(confidences)
    # Each video has the start frame and the imagined frames (1 chunk of 8 actions at the
    # tiny model's stride 2: 4 frames), and plays: its image changes.
    expect(page.locator("#imagine-player .frame-label")).to_contain_text("/ 5")
    first = candidates.first.locator("img.frame")
    src = first.get_attribute("src")
    assert src is not None and src.startswith("data:image/png;base64,")
    page.wait_for_function(
        "src => document.querySelector('#imagine-results img.frame').src !== src", arg=src
    )
    page.click("#imagine-player button.play")  # pause for a steady screenshot
    shot(page, "imagine")

    # Candidates from a JSON file whose chunks the model cannot take: the service's 4xx, on
    # the page, naming the problem.
    page.select_option("#kind", "json")
    bad = json.dumps(np.zeros((2, 1, 3, 4)).tolist()).encode()
    page.set_input_files("#candidates-file", files=[
        {"name": "candidates.json", "mimeType": "application/json", "buffer": bad}])
    expect(page.locator("#n")).to_have_value("2")
    page.click("#imagine-run")
    expect(page.locator("#error")).to_contain_text("candidates: chunk length K=3")


def test_in_dev_mode_without_a_judge_the_page_needs_no_key_and_imagines_unverified(
    page: Page,
) -> None:
    """What `wmpo serve simulator --dev` gives: no key, no judge, no runs directory."""
    settings = SimulatorSettings(host="127.0.0.1", port=0, grpc_port=0, dev_mode=True)
    with serve_in_thread(tiny_world_model(), settings) as sim:
        page.goto(f"{sim.http_url}/viewer/")
        expect(page.locator("#service")).to_contain_text("simulator")
        expect(page.locator("#verify")).to_be_disabled()
        expect(page.locator("#verify")).not_to_be_checked()
        page.fill("#n", "2")
        page.click("#imagine-run")
        expect(page.locator("#imagine-results figure.candidate")).to_have_count(2, timeout=30_000)
        expect(page.locator("#imagine-summary")).to_have_text("not verified: no judge confidences")
        expect(page.locator(".confidence-value")).to_have_count(0)
        page.click("text=Recorded runs")
        expect(page.locator("#runs-info")).to_contain_text("no runs directory")


def test_a_recorded_imagined_run_plays_next_to_the_real_episode_it_replays(
    stack: Stack, page: Page
) -> None:
    page.goto(f"{stack.simulator}/viewer#key={KEY}&panel=runs")
    expect(page.locator("#run-select option")).to_have_count(2)
    page.select_option("#run-select", "imagined")
    expect(page.locator("#runs-info")).to_have_text("imagined replays of real")
    clips = page.locator("#runs-results figure.clip")
    expect(clips).to_have_count(2)
    expect(clips.nth(0)).to_contain_text("imagined: imagined #0")
    expect(clips.nth(1)).to_contain_text("real: real #0")
    expect(page.locator("#runs-player .frame-label")).to_contain_text("/ 5")
    page.click("#runs-player button.play")
    shot(page, "runs")


def test_a_jobs_plots_fill_from_its_event_stream_while_it_runs(stack: Stack, page: Page) -> None:
    with httpx.Client(base_url=stack.trainer, headers={"x-api-key": KEY}, timeout=30) as http:
        # A job that holds the trainer's one worker, then the job the page watches: it is
        # still queued when the page opens, so every step it plots comes from the stream.
        blocker = http.post("/v1/jobs", json={**JOB, "steps": 50, "seed": 1}).json()
        watched = http.post("/v1/jobs", json={**JOB, "steps": 3, "seed": 2}).json()
        page.goto(f"{stack.trainer}/viewer#key={KEY}&job={watched['job_id']}")
        plots = page.locator("#job-plots")
        expect(page.locator("#job-state")).to_have_text("queued")
        assert plots.get_attribute("data-steps") == "0"
        expect(page.locator("#job-plots .uplot")).to_have_count(4)
        shot(page, "job-queued")
        http.post(f"/v1/jobs/{blocker['job_id']}/cancel")

        # Steps may land between two polls of the page (a fast machine finished two at
        # once in CI), so wait for the first plotted point, whichever step it is: every
        # plotted point so far came from the stream.
        page.wait_for_function(
            "() => Number(document.querySelector('#job-plots').dataset.steps) >= 1",
            timeout=60_000,
        )
        assert plots.get_attribute("data-streamed") == plots.get_attribute("data-steps")
        expect(plots).to_have_attribute("data-steps", "3", timeout=60_000)
        expect(page.locator("#job-state")).to_have_text("succeeded", timeout=30_000)
        assert plots.get_attribute("data-streamed") == "3"
        expect(page.locator("#job-step")).to_have_text("step 3 of 3")
        record = http.get(f"/v1/jobs/{watched['job_id']}").json()
        # The plotted points are the job's metrics: the reward series holds its rewards.
        plotted = page.evaluate(
            "() => JSON.stringify([...document.querySelectorAll('#job-plots .u-title')]"
            ".map(t => t.textContent))"
        )
        assert json.loads(plotted) == [
            "reward (mean over the step's groups)", "imagined success", "informative groups",
            "step time (s)",
        ]
        assert [m["step"] for m in record["metrics"]] == [1, 2, 3]
        time.sleep(0.3)  # uPlot draws on the next animation frame
        shot(page, "job")


def test_a_wrong_key_shows_a_clear_error_on_the_page(stack: Stack, page: Page) -> None:
    page.goto(f"{stack.simulator}/viewer#key=not-the-key-0000000000")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("The service refused the API key (invalid API key)")
    expect(page.locator("#tabs .tab")).to_have_count(0)
    shot(page, "wrong-key")
    # The right key typed into the form opens the panels.
    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    expect(error).to_be_hidden()
    expect(page.locator("#tabs .tab")).to_have_count(2)
