"""The main job on the embedded default: no Redis, no GPU, bundled checkpoints.

1. Collect a little real data: one scripted-expert episode per policy task in MetaWorld.
2. Evaluate the bundled base policy in the real simulator on held-out seeds and print a
   success table (95% Wilson intervals).
3. The robot-team flow: start the embedded simulator service, let the base policy propose
   candidate action chunks from a real MetaWorld frame, ``POST /v1/imagine`` them through the
   light client, replay the same actions in MetaWorld, and write real vs imagined frames to a
   PNG a person can look at; the world model's replays of step 1's episodes go to
   ``imagined/`` for the rollout viewer (``wmpo serve simulator --runs-dir OUT``, ``/viewer/``).
4. Verify before execute: the base policy on one task, with and without the judge choosing
   among imagined candidate chunks (embedded simulator + judge), success in the real simulator.
5. GRPO in imagination: a short job (a few steps) trains the base policy inside the world model
   through the embedded simulator and judge services, then the new policy is evaluated in the
   real simulator on the same held-out seeds as step 2 (the full recipe is in the README).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from wmpo.data.collect import CollectConfig, SourceSpec, collect
from wmpo.data.episodes import EpisodeDataset
from wmpo.envs.tasks import POLICY_TASKS, instruction
from wmpo.errors import CheckpointError
from wmpo.eval.policy import EvalConfig, evaluate, format_table

BUNDLED_POLICY = Path(__file__).resolve().parent.parent / "checkpoints" / "policy-base"
BUNDLED_WORLD_MODEL = Path(__file__).resolve().parent.parent / "checkpoints" / "world-model"
BUNDLED_JUDGE = Path(__file__).resolve().parent.parent / "checkpoints" / "judge"


def verify_before_execute_demo(policy_dir: Path, world_model_dir: Path, judge_dir: Path, episodes: int,
                               workers: int, task: str = "button-press-topdown-v3") -> dict:
    """Success of the policy (temperature 1) on held-out seeds, without and with verify before execute."""
    from services.embedded import embedded_stack

    plain = evaluate(EvalConfig(tasks=[task], source=SourceSpec("policy", checkpoint=str(policy_dir),
                                                                temperature=1.0),
                                episodes=episodes, workers=workers), progress=False)
    with embedded_stack(world_model_dir, judge_dir) as stack:
        spec = SourceSpec("verified-policy", checkpoint=str(policy_dir), temperature=1.0,
                          simulator_url=stack.http_url, candidates=4, max_attempts=2)
        verified = evaluate(EvalConfig(tasks=[task], source=spec, episodes=episodes, workers=workers),
                            progress=True)
    return {"task": task, "episodes": episodes,
            "without": plain["per_task"][task], "with": verified["per_task"][task],
            "verification": verified.get("verification")}


def grpo_demo(out_dir: Path, policy_dir: Path, world_model_dir: Path, judge_dir: Path, before: dict,
              episodes: int, workers: int, task: str = "drawer-close-v3", steps: int = 2) -> dict:
    """A short GRPO job in imagination on one task; success in MetaWorld before (from step 2, same
    seeds) and after."""
    from services.embedded import job_stack
    from wmpo.rl.job import GRPOJobConfig, run_grpo_job

    job_dir = out_dir / "grpo"
    shutil.rmtree(job_dir, ignore_errors=True)
    cfg = GRPOJobConfig(policy=str(policy_dir), out=str(job_dir), tasks=[task], steps=steps, groups_per_step=2,
                        group_size=8, chunks=10, lr=3e-5, world_model=str(world_model_dir), judge=str(judge_dir),
                        seed=0)
    job = run_grpo_job(cfg, embedded=job_stack)
    after = evaluate(EvalConfig(tasks=[task], source=SourceSpec("policy", checkpoint=str(job_dir / "policy"),
                                                                temperature=0.0),
                                episodes=episodes, workers=workers), progress=False)
    history = [{k: h.get(k) for k in ("step", "imagined_success", "groups_kept", "dnv_flags", "kl_to_start",
                                      "seconds")} for h in json.loads((job_dir / "summary.json").read_text())["history"]]
    return {"task": task, "steps": job["training"]["steps"], "history": history, "episodes": episodes,
            "before": before, "after": after["per_task"][task], "policy": str(job_dir / "policy")}


def save_strip(ds: EpisodeDataset, path: Path, frames_per_episode: int = 8) -> None:
    """One row per episode: evenly spaced frames from start to end."""
    from PIL import Image

    rows = []
    for i in range(len(ds)):
        ep = ds.episode(i)
        idx = np.linspace(0, ep.length, frames_per_episode).round().astype(int)
        rows.append(np.concatenate(list(ep.frames[idx]), axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def imagine_vs_real(out_dir: Path, policy_dir: Path, world_model_dir: Path, task: str = "button-press-topdown-v3",
                    candidates: int = 4, chunks: int = 3, seed: int = 7) -> dict:
    """Candidate chunks from the policy at a real frame, imagined by the service and replayed
    in MetaWorld. Returns per-candidate PSNR (imagined vs real) and the service timing."""
    import torch
    from PIL import Image
    from wmpo_client import SimulatorClient

    from services.embedded import embedded_stack
    from wmpo.data.collect import EVAL_SEED_BASE
    from wmpo.envs import make_env
    from wmpo.models.policy import Policy

    policy, _ = Policy.from_checkpoint(str(policy_dir))
    env = make_env(task, max_steps=500, terminate_on_success=False)
    start, _ = env.reset(seed=EVAL_SEED_BASE + seed)
    state = env.get_sim_state()
    seqs, reals = [], []
    for i in range(candidates):  # the policy at RL temperature, acting in the real simulator
        gen = torch.Generator().manual_seed(i)
        frame = env.set_sim_state(state)
        acts, frames = [], []
        for _ in range(chunks):
            chunk = policy.act(frame[None], [env.instruction], temperature=1.6, generator=gen)[0]
            for a in chunk:
                frame = env.step(a)[0]
                frames.append(frame)
            acts.append(chunk)
        seqs.append(np.stack(acts))
        reals.append(np.stack(frames))
    env.close()
    candidates_arr = np.stack(seqs).astype(np.float32)  # (N, chunks, K, 4)
    with embedded_stack(world_model_dir) as stack, SimulatorClient(stack.http_url) as client:
        result = client.imagine(start, instruction(task), candidates_arr, seed=0)
    imagined = result.frames  # (N, chunks*K/stride, H, W, 3)
    stride = (chunks * 8) // imagined.shape[1]
    real = np.stack(reals)[:, stride - 1::stride]  # real frames at the imagined frames' steps
    err = ((imagined.astype(np.float32) - real.astype(np.float32)) ** 2).mean(axis=(1, 2, 3, 4))
    copy_err = ((real.astype(np.float32) - start.astype(np.float32)) ** 2).mean(axis=(1, 2, 3, 4))
    rows = []
    for i in range(candidates):
        rows.append(np.concatenate([start, *real[i]], axis=1))
        rows.append(np.concatenate([start, *imagined[i]], axis=1))
    path = out_dir / "imagined_vs_real.png"
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return {
        "task": task,
        "png": str(path),
        "psnr_imagined": [round(float(x), 2) for x in 10 * np.log10(255**2 / err)],
        "psnr_copy_start_frame": [round(float(x), 2) for x in 10 * np.log10(255**2 / copy_err)],
        "timing": result.timing,
        "provenance": result.provenance,
    }


def run_demo(episodes: int = 20, workers: int = 2, out: str = "outputs/demo",
             checkpoint: Path = BUNDLED_POLICY, world_model: Path = BUNDLED_WORLD_MODEL) -> dict:
    out_dir = Path(out)
    if not (checkpoint / "model.safetensors").exists():
        raise CheckpointError(f"bundled policy missing at {checkpoint}; check out the repository fully")
    tasks = list(POLICY_TASKS)

    print(f"[1/5] collecting 1 scripted-expert episode per task in MetaWorld -> {out_dir / 'data'}")
    shutil.rmtree(out_dir / "data", ignore_errors=True)
    summary = collect(CollectConfig(out=str(out_dir / "data"), tasks=tasks, source="expert",
                                    episodes=1, workers=workers))
    ds = EpisodeDataset.load(out_dir / "data")
    save_strip(ds, out_dir / "expert_episodes.png")
    print(f"      {summary['frames']} frames at {summary['frames_per_second']} frames/s; "
          f"strip: {out_dir / 'expert_episodes.png'}")

    print(f"[2/5] evaluating the bundled base policy on {episodes} held-out seeds per task")
    report = evaluate(EvalConfig(tasks=tasks, source=SourceSpec("policy", checkpoint=str(checkpoint),
                                                                 temperature=0.0),
                                 episodes=episodes, workers=workers))
    print(format_table(report, f"base policy ({checkpoint.name}); real MetaWorld, held-out seeds, greedy"))
    print("[3/5] robot-team flow: candidate chunks from the policy -> POST /v1/imagine (embedded service)")
    if (world_model / "model.safetensors").exists():
        imagine = imagine_vs_real(out_dir, checkpoint, world_model)
        print(f"      PSNR imagined vs real per candidate: {imagine['psnr_imagined']} dB "
              f"(copying the start frame: {imagine['psnr_copy_start_frame']} dB)")
        print(f"      service timing: {imagine['timing']}")
        print(f"      real (odd rows) vs imagined (even rows): {imagine['png']}")
        # The expert episodes replayed by the world model, for the rollout viewer's recorded runs.
        from wmpo.eval.judge import write_imagined_dataset

        shutil.rmtree(out_dir / "imagined", ignore_errors=True)
        write_imagined_dataset(str(world_model), str(out_dir / "data"), str(out_dir / "imagined"),
                               progress=False)
        print(f"      the world model's replays of step 1's episodes: {out_dir / 'imagined'}")
    else:
        imagine = {"skipped": f"no world model at {world_model}"}
        print(f"      skipped: {imagine['skipped']}")
    vbe_episodes = max(1, episodes // 2)
    print(f"[4/5] verify before execute on {vbe_episodes} held-out seeds: 4 candidate chunks per decision, "
          "imagined by the simulator, the judge's best executed")
    if (world_model / "model.safetensors").exists() and (BUNDLED_JUDGE / "model.safetensors").exists():
        vbe = verify_before_execute_demo(checkpoint, world_model, BUNDLED_JUDGE, vbe_episodes, workers)
        w, v = vbe["without"], vbe["with"]
        print(f"      {vbe['task']}: {w['success_rate']:.0%} without, {v['success_rate']:.0%} with verification "
              f"({vbe_episodes} episodes each; too few for a verdict: see README for 100-episode results); "
              f"decision latency p50 {vbe['verification']['decision_seconds_p50']} s")
    else:
        vbe = {"skipped": "no bundled world model or judge"}
        print(f"      skipped: {vbe['skipped']}")
    print("[5/5] GRPO in imagination: a 2-step job on drawer-close-v3 through the embedded simulator and judge, "
          f"then the new policy on the same {episodes} held-out seeds as step 2")
    if (world_model / "model.safetensors").exists() and (BUNDLED_JUDGE / "model.safetensors").exists():
        task = "drawer-close-v3"
        grpo = grpo_demo(out_dir, checkpoint, world_model, BUNDLED_JUDGE, report["per_task"][task], episodes,
                         workers, task=task)
        for h in grpo["history"]:
            print(f"      step {h['step']}: success in imagination {h['imagined_success']:.2f}, "
                  f"{h['groups_kept']} informative groups, {h['dnv_flags']} dual-noise flags, "
                  f"KL to start {h['kl_to_start'] or 0:.4f}, {h['seconds']['step']} s")
        b, a = grpo["before"], grpo["after"]
        print(f"      {task} in MetaWorld, greedy: {b['success_rate']:.0%} before, {a['success_rate']:.0%} after "
              f"({episodes} episodes each: a smoke run, not a result; README has the 100-episode table)")
    else:
        grpo = {"skipped": "no bundled world model or judge"}
        print(f"      skipped: {grpo['skipped']}")
    (out_dir / "report.json").write_text(json.dumps(
        {"collection": summary, "base_policy": report, "imagine": imagine, "verify_before_execute": vbe,
         "grpo": grpo},
        indent=2, default=str))
    print(f"wrote {out_dir / 'report.json'}")
    print(f"to look at it in the rollout viewer: wmpo serve simulator --dev --runs-dir {out_dir}, then "
          "open http://127.0.0.1:8000/viewer/ (imagine from example frames; recorded runs: step 1's "
          "episodes next to their imagined replays)")
    return report
