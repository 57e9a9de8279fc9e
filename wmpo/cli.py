"""The core library's commands: collect, train, eval, export, tasks.

The ``wmpo`` command is ``services.cli``: these commands plus those that run services (serve,
demo). Commands here that can run against an embedded stack (``train grpo`` and ``train
lifelong`` without URLs, ``eval policy --verify`` without ``--simulator-url``) take the stack's
factory from the parsed arguments (``embedded``, ``embedded_simulator``), which the services
layer sets: the core never imports the services.

Errors caused by bad input print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from wmpo.errors import ConfigError, WmpoError
from wmpo.judge.rewards import REWARD_KINDS
from wmpo.rl import TASK_SAMPLINGS

BUNDLED_POLICY = Path(__file__).resolve().parent.parent / "checkpoints" / "policy-base"
BUNDLED_WORLD_MODEL = Path(__file__).resolve().parent.parent / "checkpoints" / "world-model"
BUNDLED_JUDGE = Path(__file__).resolve().parent.parent / "checkpoints" / "judge"
BUNDLED_TRAJECTORY_VAE = Path(__file__).resolve().parent.parent / "checkpoints" / "trajectory-vae"
# The plan generator fine-tuned on the policy tasks: its instruction-only target shows the task done far
# more often than the play-data one (checkpoints/plan-generator; results/plan-generator, last section).
BUNDLED_PLAN_GENERATOR = Path(__file__).resolve().parent.parent / "checkpoints" / "plan-generator-tasks"
BUNDLED_INVERSE_DYNAMICS = Path(__file__).resolve().parent.parent / "checkpoints" / "inverse-dynamics"


CALIBRATION_HELP = ("per task: run the start policy in MetaWorld as GRPO samples it (temperature, horizon) "
                    "and print its real success beside imagination's first step (0: skip)")
REWARD_HELP = ("a rollout's reward: success = the judged success (1/0, WMPO); clip = the temporally "
               "weighted clip reward of the judge's per-clip confidences (RoboStereo's OEPL), which also "
               "ranks groups whose members all pass or all fail; imitation = minus the perceptual "
               "distance of its imagined frames to the scripted expert's imagined rollout from the same "
               "start (RoboStereo's IEPL; the expert acts once per start in MetaWorld, a demonstration)")
TASK_SAMPLING_HELP = ("start tasks of the imagined groups: round-robin, or informative = drawn by each "
                      "task's share of informative groups so far (a task the policy always or never "
                      "solves in imagination is imagined less; a uniform floor keeps every task)")
TARGET_KL_HELP = ("bound each GRPO update's drift from the rollout policy (approximate KL per action chunk): "
                  "a gradient step past 1.5 x this is undone and retried at half the learning rate, and the "
                  "update stops once past it, so a step on one informative group cannot move the policy as "
                  "far as one on many (0: off)")
SEED_OFFSET_HELP = ("episode i of a task uses layout 1,000,000 + offset + i; pieces run over other offsets "
                    "combine with `wmpo eval policy --merge`")
JOURNAL_HELP = ("append every finished episode to this JSONL file; the same command rerun with it after an "
                "interruption runs only the episodes not in it (it refuses another evaluation's journal)")
GUIDANCE_HELP = ("classifier-free guidance on the actions instead of the world model's (1 = off; 3 follows "
                 "the actions more closely at about twice the imagination time)")


def _add_grpo_reward_flags(p: argparse.ArgumentParser) -> None:
    """--reward and --task-sampling, shared by `train grpo` and `train lifelong`."""
    p.add_argument("--reward", choices=REWARD_KINDS, default="success", help=REWARD_HELP)
    p.add_argument("--task-sampling", choices=TASK_SAMPLINGS, default="round-robin", help=TASK_SAMPLING_HELP)


def _tasks(spec: str) -> list[str]:
    from wmpo.envs.tasks import parse_tasks

    return parse_tasks(spec)


def _task_counts(spec: str | None) -> dict[str, int] | None:
    """'drawer-close-v3=1,door-open-v3=2' -> {task: count}."""
    if not spec:
        return None
    from wmpo.envs.tasks import check_task
    from wmpo.errors import ConfigError

    out = {}
    for item in spec.split(","):
        task, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            raise ConfigError(f"--demos expects task=N pairs separated by commas, got {item!r}")
        out[check_task(task.strip())] = int(n)
    return out


def _add_source_args(p: argparse.ArgumentParser, default: str) -> None:
    from wmpo.data.sources import SOURCE_KINDS

    p.add_argument("--source", default=default, choices=SOURCE_KINDS,
                   help="where actions come from (default: %(default)s)")
    p.add_argument("--noise-std", type=float, default=0.5, help="Gaussian action noise for noisy/perturbed")
    p.add_argument("--perturb-prob", type=float, default=0.5,
                   help="perturbed: probability that an 8-step segment is random-walk motion")
    p.add_argument("--checkpoint", default=None, help="policy checkpoint directory (source=policy)")
    p.add_argument("--temperature", type=float, default=1.0, help="policy sampling temperature (0 = greedy)")


def cmd_collect(a: argparse.Namespace) -> None:
    from wmpo.data.collect import CollectConfig, collect

    cfg = CollectConfig(out=a.out, tasks=_tasks(a.tasks), source=a.source, episodes=a.episodes,
                        seed_start=a.seed_start, workers=a.workers, image_size=a.image_size,
                        max_steps=a.max_steps, noise_std=a.noise_std, perturb_prob=a.perturb_prob,
                        checkpoint=a.checkpoint, temperature=a.temperature)
    summary = collect(cfg)
    print(json.dumps(summary, indent=2))


def cmd_collect_play(a: argparse.Namespace) -> None:
    from wmpo.data.play import collect_play

    print(json.dumps(collect_play(a.out, scale=a.scale, workers=a.workers, splits=tuple(a.splits)), indent=2))


def cmd_train_policy(a: argparse.Namespace) -> None:
    from wmpo.train.policy import PolicyTrainConfig, train_policy

    cfg = PolicyTrainConfig(data=a.data, out=a.out, tasks=_tasks(a.tasks) if a.tasks else None,
                            preset=a.preset, demos_per_task=a.demos_per_task,
                            demos_override=_task_counts(a.demos), steps=a.steps,
                            batch_size=a.batch_size, lr=a.lr, seed=a.seed, resume=a.resume)
    print(json.dumps(train_policy(cfg), indent=2))


def cmd_train_autoencoder(a: argparse.Namespace) -> None:
    from wmpo.train.autoencoder import AutoencoderTrainConfig, train_autoencoder

    cfg = AutoencoderTrainConfig(data=a.data, out=a.out, preset=a.preset, steps=a.steps,
                                 batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    print(json.dumps(train_autoencoder(cfg), indent=2))


def cmd_train_world_model(a: argparse.Namespace) -> None:
    from wmpo.data.play import data_command
    from wmpo.train.world_model import WorldModelTrainConfig, train_world_model

    cfg = WorldModelTrainConfig(data=a.data, autoencoder=a.autoencoder, out=a.out, preset=a.preset,
                                steps=a.steps, batch_size=a.batch_size, lr=a.lr, window=a.window,
                                seed=a.seed, save_every=a.save_every, eval_every=a.eval_every or a.save_every,
                                log_every=a.log_every, init=a.init, heldout_data=a.heldout_data,
                                moving_weight=a.moving_weight, moving_threshold=a.moving_threshold,
                                lr_schedule=a.lr_schedule, warmup=a.warmup, export=a.export, rewarm=a.rewarm,
                                data_command=a.data_command or data_command(a.data + (a.heldout_data or [])),
                                trajectory_vae=a.trajectory_vae, plan_drop_max=a.plan_drop_max,
                                plan_drop_on=a.plan_drop_on,
                                consistency_weight=a.consistency_weight, self_forcing=a.self_forcing,
                                self_forcing_steps=a.self_forcing_steps, motion_conditioning=a.motion_conditioning,
                                device=a.device, time_budget=a.time_budget, val_batch=a.val_batch)
    print(json.dumps(train_world_model(cfg), indent=2))


def cmd_eval_optimizer(a: argparse.Namespace) -> None:
    """The action optimizer in MetaWorld's closed loop (plan, execute, re-plan) on held-out seeds."""
    from wmpo.data.collect import SourceSpec
    from wmpo.eval.policy import EvalConfig, evaluate

    opt = {"generator": a.generator, "vae": a.trajectory_vae, "idm": a.inverse_dynamics, "variant": a.variant,
           "steps": a.steps, "execute_chunks": a.execute_chunks, "world_model": a.world_model, "goal": a.goal}
    if a.lr is not None:
        opt["lr"] = a.lr
    elif a.variant == "full-init":
        # Its default step changed (0.1 -> 0.01): recorded, so that reports and journals from
        # before do not merge with these.
        from wmpo.optimize.planner import PlannerConfig

        opt["lr"] = PlannerConfig().init_lr
    if a.anchor:  # recorded only when set, so reports from before still merge with their kind
        opt["anchor"] = True
    spec = SourceSpec("optimizer", checkpoint=a.policy, temperature=a.temperature, optimizer=opt)
    spec.build()  # fail fast on bad checkpoints, before starting workers
    report = evaluate(EvalConfig(tasks=_tasks(a.tasks), source=spec, episodes=a.episodes, seed_offset=a.seed_offset,
                                 workers=a.workers, max_steps=a.max_steps, journal=a.journal))
    _print_eval(report, f"action optimizer ({a.variant}, goal: {a.goal})")
    _write_json(report, a.json)


def _print_eval(report: dict, title: str) -> None:
    """A real-simulator evaluation's table and, where the episodes had them, its summaries."""
    from wmpo.eval.policy import format_table

    print(format_table(report, title))
    for key, what in (("verification", "verify before execute"), ("plans", "plans"),
                      ("goal_reaching", "goal reaching")):
        if key in report:
            print(f"{what}:", json.dumps(report[key]))


def cmd_eval_world_model(a: argparse.Namespace) -> None:
    from wmpo.eval.world_model import WorldModelEvalConfig, evaluate_world_model, format_report

    alts = tuple(x.strip() for x in a.alternatives.split(",") if x.strip())
    cfg = WorldModelEvalConfig(checkpoint=a.checkpoint, tasks=_tasks(a.tasks), cases=a.cases,
                               horizon=a.horizon, alternatives=alts, sampler_steps=a.sampler_steps,
                               action_guidance=a.action_guidance,
                               strip=a.strip, trajectory_vae=a.trajectory_vae)
    report = evaluate_world_model(cfg)
    print(format_report(report))
    if a.record:
        from wmpo.utils.checkpoint import record_evaluation

        record_evaluation(a.checkpoint, "world_model", report)
        print(f"recorded the result in {a.checkpoint}/manifest.json")
    _write_json(report, a.json)


def cmd_train_trajectory_vae(a: argparse.Namespace) -> None:
    from wmpo.train.trajectory_vae import TrajectoryVAETrainConfig, train_trajectory_vae

    cfg = TrajectoryVAETrainConfig(data=a.data, out=a.out, preset=a.preset, steps=a.steps,
                                   batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    print(json.dumps(train_trajectory_vae(cfg), indent=2))


def cmd_train_inverse_dynamics(a: argparse.Namespace) -> None:
    from wmpo.train.inverse_dynamics import InverseDynamicsTrainConfig, train_inverse_dynamics

    cfg = InverseDynamicsTrainConfig(
        data=a.data, out=a.out, heldout_data=a.heldout_data or [], trajectory_vae=a.trajectory_vae,
        autoencoder=a.autoencoder, frame_stride=a.frame_stride, preset=a.preset, variants=a.variants,
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, prior_noise=a.prior_noise, prior_draws=a.prior_draws,
        seed=a.seed)
    print(json.dumps(train_inverse_dynamics(cfg), indent=2))


def cmd_train_judge(a: argparse.Namespace) -> None:
    from wmpo.train.success_classifier import JudgeTrainConfig, train_success_classifier

    cfg = JudgeTrainConfig(data=a.data, val_data=a.val_data, out=a.out, preset=a.preset, steps=a.steps,
                           batch_size=a.batch_size, lr=a.lr, recon_prob=a.recon_prob,
                           world_model=a.world_model if a.recon_prob > 0 else None, seed=a.seed, init=a.init,
                           min_threshold_support=a.min_threshold_support)
    print(json.dumps(train_success_classifier(cfg), indent=2))


def cmd_train_grpo(a: argparse.Namespace) -> None:
    from wmpo.rl.job import GRPOJobConfig, run_grpo_job

    cfg = GRPOJobConfig(
        policy=a.policy, out=a.out, tasks=_tasks(a.tasks), steps=a.steps, groups_per_step=a.groups,
        group_size=a.group_size, chunks=a.chunks, temperature=a.temperature, lr=a.lr, epochs=a.epochs,
        minibatch=a.minibatch, max_sampling_rounds=a.sampling_rounds, verify=not a.no_verify, seed=a.seed,
        target_kl=a.target_kl,
        simulator_url=a.simulator_url,
        judge_url=a.judge_url, world_model=a.world_model, judge=a.judge, eval_episodes=a.eval_episodes,
        eval_workers=a.workers, environment=a.environment, real_budget=a.real_budget,
        action_guidance=a.action_guidance, calibration_episodes=a.calibration_episodes,
        calibration_every=a.calibration_every, keep_best_real=a.keep_best_real, reward=a.reward,
        task_sampling=a.task_sampling,
        perceptual_model=a.perceptual_model)
    print(json.dumps(run_grpo_job(cfg, embedded=getattr(a, "embedded", None)), indent=2))


def cmd_train_lifelong(a: argparse.Namespace) -> None:
    from wmpo.rl.lifelong import LifelongConfig, report, run_lifelong

    if a.report:
        print(report(a.out))
        return
    cfg = LifelongConfig(
        out=a.out, tasks=_tasks(a.tasks), policy=a.policy, world_model=a.world_model, judge=a.judge,
        rounds=a.rounds, real_rollouts=a.real_rollouts, rollout_temperature=a.rollout_temperature,
        wm_steps=a.wm_steps, wm_lr=a.wm_lr, judge_steps=a.judge_steps, judge_horizon_cuts=a.judge_horizon_cuts,
        threshold_support=a.threshold_support, threshold_data=a.threshold_data, min_imagined_auc=a.min_imagined_auc,
        grpo_steps=a.steps, groups=a.groups, group_size=a.group_size,
        chunks=a.chunks, temperature=a.temperature,
        lr=a.lr, target_kl=a.target_kl, action_guidance=a.action_guidance,
        calibration_episodes=a.calibration_episodes,
        calibration_every=a.calibration_every, keep_best_real=a.keep_best_real, reward=a.reward,
        task_sampling=a.task_sampling, eval_episodes=a.eval_episodes, workers=a.workers, seed=a.seed)
    result = run_lifelong(cfg, embedded=getattr(a, "embedded", None))
    print(report(a.out))
    print(json.dumps({"real_rollouts_total": result["real_rollouts_total"], "final": result["final"]}, indent=2))


def cmd_imagine_dataset(a: argparse.Namespace) -> None:
    from wmpo.eval.judge import write_imagined_dataset

    print(json.dumps(write_imagined_dataset(a.world_model, a.data, a.out, a.seed, action_guidance=a.action_guidance,
                                            reconstruct=a.reconstruct, real_context=a.real_context,
                                            sampler_steps=a.sampler_steps, sampler_shift=a.sampler_shift),
                     indent=2))


def cmd_eval_judge(a: argparse.Namespace) -> None:
    from wmpo.eval.judge import JudgeEvalConfig, evaluate_judge, format_report

    if a.dual_noise:
        from wmpo.data.episodes import EpisodeDataset
        from wmpo.eval.judge import dual_noise_report
        from wmpo.judge.success import SuccessJudge

        if len(a.data) != 1:
            raise ConfigError("--dual-noise takes one --data (the imagined replay of REAL_DATA)")
        report = dual_noise_report(SuccessJudge.load(a.checkpoint), EpisodeDataset.load(a.dual_noise),
                                   EpisodeDataset.load(a.data[0]), a.world_model or str(BUNDLED_WORLD_MODEL),
                                   seed=a.seed)
        print(json.dumps(report, indent=2))
        return
    cfg = JudgeEvalConfig(classifier=a.checkpoint, data=a.data, world_model=a.world_model or None,
                          seed=a.seed, limit=a.limit)
    report = evaluate_judge(cfg)
    print(format_report(report))
    if a.record:
        from wmpo.utils.checkpoint import record_evaluation

        record_evaluation(a.checkpoint, a.record, report)
        print(f"recorded the result in {a.checkpoint}/manifest.json under evaluations.{a.record}")
    _write_json(report, a.json)


def cmd_eval_policy(a: argparse.Namespace) -> None:
    from wmpo.data.collect import SourceSpec
    from wmpo.eval.policy import (
        EvalConfig,
        compare_reports,
        evaluate,
        format_comparison,
        merge_reports,
    )

    if a.compare:
        cmp = compare_reports(*(_read_json_report(p) for p in a.compare))
        print(format_comparison(cmp))
        _write_json(cmp, a.json)
        return
    if a.merge:
        report = merge_reports([_read_json_report(p) for p in a.merge])
        _print_eval(report, f"{len(a.merge)} reports merged: {report['source'].get('kind')}")
        _write_json(report, a.json)
        return
    if a.temperature is None:
        a.temperature = 1.0 if a.verify else 0.0
    elif a.verify and a.temperature <= 0:
        raise ConfigError("--verify samples several candidates per chunk: --temperature must be > 0")
    with contextlib.ExitStack() as stack:
        if a.expert:
            spec = SourceSpec("expert")
        elif a.verify:
            url = a.simulator_url
            if url is None:  # the embedded stack: simulator + judge in this process
                open_stack = getattr(a, "embedded_simulator", None)
                if open_stack is None:
                    raise ConfigError("--verify without --simulator-url runs an embedded stack: use the wmpo command")
                drift = {"drift_log": a.drift_log} if a.drift_log else {}
                url = stack.enter_context(open_stack(a.world_model, a.judge, **drift))
            elif a.drift_log:
                raise ConfigError("--drift-log sets the embedded simulator's outcome log; a simulator at "
                                  "--simulator-url writes its own (WMPO_DRIFT_LOG)")
            spec = SourceSpec("verified-policy", checkpoint=a.checkpoint, temperature=a.temperature,
                              simulator_url=url, candidates=a.candidates, max_attempts=a.max_attempts)
        else:
            spec = SourceSpec("policy", checkpoint=a.checkpoint, temperature=a.temperature)
            spec.build()  # fail fast on a bad checkpoint, before starting workers
        cfg = EvalConfig(tasks=_tasks(a.tasks), source=spec, episodes=a.episodes, seed_offset=a.seed_offset,
                         workers=a.workers, max_steps=a.max_steps, journal=a.journal)
        report = evaluate(cfg)
    title = "expert" if a.expert else f"policy {a.checkpoint}" + (" + verify before execute" if a.verify else "")
    _print_eval(report, title)
    _write_json(report, a.json)
    if a.record and not a.expert:
        from wmpo.utils.checkpoint import record_evaluation

        summary = {k: v for k, v in report.items() if k != "episodes_detail"}
        record_evaluation(a.checkpoint, "real_sim_verified" if a.verify else "real_sim", summary)
        print(f"recorded the result in {a.checkpoint}/manifest.json")


def cmd_eval_policy_imagination(a: argparse.Namespace) -> None:
    from types import SimpleNamespace

    from wmpo_client import SimulatorClient
    from wmpo_client.judge_http import JudgeClient

    from wmpo.eval.policy_imagination import (
        ImaginationEvalConfig,
        evaluate_policies,
        format_report,
        merge_reports,
    )
    from wmpo.rl.imagination import ServiceGroupSimulator, ServiceRolloutJudge

    if (a.checkpoint is None) == (a.merge is None):
        raise ConfigError("give --checkpoint (policies to evaluate) or --merge (reports to combine), not both")
    if a.merge is not None:
        merged = merge_reports([_read_json_report(p) for p in a.merge])
        print(format_report(merged))
        _write_json(merged, a.json)
        return
    cfg = ImaginationEvalConfig(policies=a.checkpoint, tasks=_tasks(a.tasks), episodes=a.episodes, chunks=a.chunks,
                                temperature=a.temperature, seed=a.seed, seed_offset=a.seed_offset, batch=a.batch)
    if (a.simulator_url is None) != (a.judge_url is None):
        raise ConfigError("give both --simulator-url and --judge-url, or neither (the embedded stack)")
    with contextlib.ExitStack() as stack:
        if a.simulator_url is None:
            embedded = getattr(a, "embedded", None)
            if embedded is None:
                raise ConfigError("without --simulator-url this runs an embedded stack: use the wmpo command")
            models = SimpleNamespace(world_model=a.world_model, judge=a.judge, action_guidance=a.action_guidance)
            sim_url, judge_url = stack.enter_context(embedded(models))
        else:
            sim_url, judge_url = a.simulator_url, a.judge_url
        sim = stack.enter_context(SimulatorClient(sim_url, a.api_key, timeout=300.0))
        judge = stack.enter_context(JudgeClient(judge_url, a.api_key, timeout=300.0))
        groups, verdicts = ServiceGroupSimulator(sim), ServiceRolloutJudge(judge)
        report = evaluate_policies(cfg, (groups, verdicts))
        report["simulator"], report["judge"] = groups.provenance, verdicts.provenance
    print(format_report(report))
    _write_json(report, a.json)


def _read_json_report(path: str) -> dict:
    """A --json report, or an evaluation's --journal (the episodes it has finished so far)."""
    try:
        text = Path(path).read_text()
        first = text.split("\n", 1)[0]
        if first.startswith('{"journal"'):
            from wmpo.eval.policy import journal_report

            return journal_report(Path(path))
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the report {path}: {e}") from e


def _write_json(report: dict, path: str | None) -> None:
    """A command's --json report (nothing when the flag is not given)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {path}")


def cmd_export_onnx(a: argparse.Namespace) -> None:
    from wmpo.export.graphs import GRAPHS
    from wmpo.export.onnx_export import MANIFEST, export_onnx, format_parity, parity_report

    checkpoint = a.checkpoint or str(BUNDLED_WORLD_MODEL)
    graphs = tuple(g.strip() for g in a.graphs.split(",")) if a.graphs else GRAPHS
    manifest = export_onnx(checkpoint, a.out, graphs=graphs, opset=a.opset)
    if a.parity:
        report = parity_report(checkpoint, a.out, fp16=a.fp16)
        manifest["parity"] = report  # recorded with the graphs it checks
        Path(a.out, MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        print(format_parity(report))


def cmd_export_triton(a: argparse.Namespace) -> None:
    from wmpo.export.triton_repo import RepoSettings, repository_tree, write_repository

    if a.preferred:
        try:
            preferred = tuple(int(x) for x in a.preferred.split(","))
        except ValueError:
            raise ConfigError(f"--preferred expects comma-separated batch sizes, got {a.preferred!r}") from None
    else:  # the engine's batch and its multiples up to the cap
        preferred = tuple(p for p in (16, 32, 64) if p < a.max_batch) + (a.max_batch,)
    settings = RepoSettings(variant=a.variant, version=a.version, max_batch=a.max_batch, preferred=preferred,
                            queue_delay_us=a.queue_delay_us, instances=a.instances,
                            instance_kind=a.instance_kind, threads=a.threads, opt_batch=a.opt_batch)
    write_repository(a.checkpoint or str(BUNDLED_WORLD_MODEL), a.repo, settings, onnx_dir=a.onnx)
    print(repository_tree(a.repo))


def cmd_export_latents(a: argparse.Namespace) -> None:
    from wmpo.data.latents import LatentEpisodes
    from wmpo.data.play import data_command, expand_datasets
    from wmpo.train.world_model import load_autoencoder

    ae, ae_sha = load_autoencoder(a.autoencoder)
    data = LatentEpisodes.encode(expand_datasets(a.data), ae, a.frame_stride, a.window + 1)
    if len(data) == 0:
        raise ConfigError(f"no episode in {a.data} has {a.window + 1} latent frames at stride {a.frame_stride}")
    meta = {"autoencoder_sha256": ae_sha, "frame_stride": a.frame_stride, "min_frames": a.window + 1,
            "datasets": a.data, "data_command": data_command(a.data), "episodes": len(data),
            "latent_frames": len(data.latents)}
    info = data.save_packed(a.out, meta)
    print(json.dumps({**info, "out": a.out, "bytes": Path(a.out).stat().st_size}, indent=2))


def cmd_export_lerobot(a: argparse.Namespace) -> None:
    from wmpo.data.lerobot import VideoSettings, export_lerobot

    video = VideoSettings(codec={"h264": "libx264", "av1": "libsvtav1"}[a.codec], pix_fmt=a.pix_fmt, crf=a.crf)
    print(json.dumps(export_lerobot(a.data, a.out, video, robot_type=a.robot_type), indent=2))


def cmd_import_lerobot(a: argparse.Namespace) -> None:
    from wmpo.data.lerobot import import_lerobot

    print(json.dumps(import_lerobot(a.data, a.out, image_size=a.image_size, camera=a.camera,
                                    action_key=a.action_key, episodes_succeed=a.episodes_succeed,
                                    max_episodes=a.max_episodes), indent=2))


def cmd_tasks(a: argparse.Namespace) -> None:
    from wmpo.envs.tasks import INSTRUCTIONS, POLICY_TASKS

    for task, text in INSTRUCTIONS.items():
        print(f"{task:<30} {text}{'   [policy task]' if task in POLICY_TASKS else ''}")


def build_parser() -> argparse.ArgumentParser:
    from wmpo.envs.tasks import DEFAULT_MAX_STEPS

    ap = argparse.ArgumentParser(prog="wmpo", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="collect episodes in the real simulator (MetaWorld)")
    p.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    p.add_argument("--tasks", default="policy", help="comma-separated tasks, or a named set: 'policy', 'all', "
                   "'play' (the world model's training tasks), 'heldout' (its held-out tasks)")
    _add_source_args(p, "expert")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task")
    p.add_argument("--seed-start", type=int, default=0, help="first layout seed (< 1,000,000)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("collect-play", help="the world model's task-agnostic play data: every source over the "
                       "play tasks, and the held-out tasks' validation set (seeded, resumable)")
    p.add_argument("--out", default="datasets/play-v2", help="root: <out>/train/<stage>, <out>/heldout/<stage>")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every stage's episodes per task (a larger scale adds to what is there)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--splits", nargs="+", default=["train", "heldout"], choices=["train", "heldout"])
    p.set_defaults(func=cmd_collect_play)

    p = sub.add_parser("imagine-dataset", help="the world model's replays of a real dataset's episodes, "
                       "labelled with the real outcomes (judge training and evaluation data)")
    p.add_argument("--data", required=True, help="real episode dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--world-model", default=str(BUNDLED_WORLD_MODEL))
    p.add_argument("--action-guidance", type=float, default=None, help=GUIDANCE_HELP)
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed; each replay's own seed follows from it and the episode's task and env seed")
    p.add_argument("--reconstruct", action="store_true",
                   help="the world model's autoencoder reconstructions of the real frames instead of its "
                   "replays: what a judge can read at best through this latent")
    p.add_argument("--real-context", action="store_true",
                   help="imagine every chunk from the real frames before it instead of the imagined ones: "
                   "one chunk's error without the earlier chunks' errors compounding into it")
    p.add_argument("--sampler-steps", type=int, default=None, help="denoising steps (default: the checkpoint's)")
    p.add_argument("--sampler-shift", type=float, default=None,
                   help="time shift of the denoising steps (default: the checkpoint's; < 1 spends more of "
                   "them at low noise, where fine detail is drawn; > 1 at high noise)")
    p.set_defaults(func=cmd_imagine_dataset)

    tr = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)
    p = tr.add_parser("policy", help="supervised base policy from demonstrations")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--tasks", default=None, help="tasks to train on (default: all in the dataset)")
    p.add_argument("--preset", default="small")
    p.add_argument("--demos-per-task", type=int, default=None)
    p.add_argument("--demos", default=None, help="per-task demo counts overriding --demos-per-task, "
                   "e.g. drawer-close-v3=1,door-open-v3=1")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=cmd_train_policy)

    p = tr.add_parser("autoencoder", help="per-frame autoencoder for the world model")
    p.add_argument("--data", required=True, nargs="+", help="dataset directories")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_autoencoder)

    p = tr.add_parser("world-model", help="action-conditioned video DiT (resumes from <out>/train_state.pt)")
    p.add_argument("--data", required=True, nargs="+",
                   help="dataset directories, or one packed latent file (wmpo export latents)")
    p.add_argument("--autoencoder", required=True, help="autoencoder (or world-model) checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds this session may train: after 60 steps the run is shortened to what fits "
                   "(its LR schedule with it), leaving room for the saves (0 = no limit)")
    p.add_argument("--val-batch", type=int, default=0,
                   help="windows per validation batch (default --batch-size); keep it to compare runs")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--window", type=int, default=8, help="latent frames per training window after the anchor")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--init", default=None, help="fine-tune this world model (its DiT shape wins over --preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=None, help="validation losses (default: --save-every)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "wsd"],
                   help="wsd: warmup, constant, cosine decay over the last 20%% (extend a run by raising --steps)")
    p.add_argument("--heldout-data", nargs="+", default=None,
                   help="datasets of tasks never trained on: a zero-shot validation loss")
    p.add_argument("--moving-weight", type=float, default=0.0,
                   help="extra loss weight of latent pixels that move between frames (0 = plain MSE)")
    p.add_argument("--moving-threshold", type=float, default=0.1,
                   help="channel-mean latent change above which a latent pixel counts as moving")
    p.add_argument("--export", default=None, help="directory (in the repository) replaced at every save with "
                   "the usable fp16 world model and a compact resume state; a run without "
                   "<out>/train_state.pt continues from it")
    p.add_argument("--rewarm", type=int, default=100, help="LR re-warmup steps after resuming from --export")
    p.add_argument("--data-command", default=None,
                   help="how to rebuild the data (recorded; default: read from collect-play's play.json)")
    p.add_argument("--trajectory-vae", default=None,
                   help="train the action optimizer's plan generator: the DiT conditioned on this trajectory "
                   "VAE's tokens and the instruction (usually with --init, fine-tuning a world model)")
    p.add_argument("--plan-drop-max", type=float, default=0.5,
                   help="plan generator: the null-plan probability grows linearly from 0 to this")
    p.add_argument("--plan-drop-on", choices=("all", "successes"), default="all",
                   help="plan generator: windows whose plan may be dropped: all, or only those of episodes "
                   "that reached their task (the instruction-only future learns from doing the task; measured level "
                   "with all on the policy tasks: results/plan-generator)")
    p.add_argument("--consistency-weight", type=float, default=0.1,
                   help="plan generator: weight of the latent-consistency head's loss")
    p.add_argument("--self-forcing", type=float, default=0.0,
                   help="fraction of windows whose recent context the model imagines itself (from the real "
                   "actions, through the served sampler) before the loss on the real next frames (0 = off)")
    p.add_argument("--self-forcing-steps", type=int, default=4,
                   help="sampler steps per AR step when imagining that context")
    p.add_argument("--motion-conditioning", action="store_true",
                   help="each generated frame also reads the displacement commanded since the last context "
                   "frame (with --init, a model without it is extended and starts unchanged)")
    p.set_defaults(func=cmd_train_world_model)

    p = tr.add_parser("trajectory-vae", help="the action optimizer's trajectory VAE: action windows of the "
                      "datasets <-> a few latent tokens")
    p.add_argument("--data", nargs="+", required=True, help="dataset directories (their actions are read)")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="small", help="tiny, small (4 chunks -> 4 tokens of 32), long (12 chunks)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_trajectory_vae)

    p = tr.add_parser("inverse-dynamics", help="the action optimizer's residual inverse dynamics (latent "
                      "transition + the VAE's prior action -> correction) and the full-IDM baseline")
    p.add_argument("--data", nargs="+", required=True, help="dataset directories, or directories of them")
    p.add_argument("--heldout-data", nargs="+", default=None, help="datasets of tasks never trained on "
                   "(validation only)")
    p.add_argument("--out", required=True, help="<out>/residual and <out>/full checkpoints, <out>/cache latents")
    p.add_argument("--trajectory-vae", default=str(BUNDLED_TRAJECTORY_VAE), help="decodes the priors")
    p.add_argument("--autoencoder", default=str(BUNDLED_WORLD_MODEL),
                   help="frozen frame autoencoder (or a world model, for its autoencoder)")
    p.add_argument("--frame-stride", type=int, default=2, help="env steps per latent frame (the world model's)")
    p.add_argument("--preset", default="small", help="tiny, small, small-stack (3 frames before the step)")
    p.add_argument("--variants", nargs="+", default=["residual", "full"], help="residual and/or full")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--prior-noise", type=float, default=1.0,
                   help="largest std of the noise added to the VAE latent before decoding priors")
    p.add_argument("--prior-draws", type=int, default=4, help="noisy decodes of each action window")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_inverse_dynamics)

    p = tr.add_parser("judge", help="success classifier on real rollouts (resumes from <out>/train_state.pt)")
    p.add_argument("--data", required=True, nargs="+", help="training dataset directories")
    p.add_argument("--val-data", required=True, nargs="+", help="validation datasets (choose the threshold)")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--recon-prob", type=float, default=0.3,
                   help="chance a training clip is replaced by autoencoder reconstructions (0 = off)")
    p.add_argument("--world-model", default=str(BUNDLED_WORLD_MODEL), help="its autoencoder makes reconstructions")
    p.add_argument("--init", default=None, help="fine-tune this success classifier (its preset wins)")
    p.add_argument("--min-threshold-support", type=int, default=1,
                   help="choose the threshold only when --val-data holds at least this many successes and "
                   "failures; else keep --init's (else 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_judge)

    p = tr.add_parser("grpo", help="GRPO in imagination through the simulator and judge services "
                      "(resumes from <out>/train_state.pt)")
    p.add_argument("--policy", default=str(BUNDLED_POLICY), help="starting policy checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", default="button-press-topdown-v3")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--groups", type=int, default=8, help="informative groups per update")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--chunks", type=int, default=12, help="imagined horizon in chunks of 8 actions")
    p.add_argument("--temperature", type=float, default=1.6)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--minibatch", type=int, default=64)
    p.add_argument("--target-kl", type=float, default=0.0, help=TARGET_KL_HELP)
    p.add_argument("--sampling-rounds", type=int, default=3,
                   help="dynamic sampling: imagination rounds per step while fewer than --groups groups "
                   "are informative (the step then trains on those it has)")
    p.add_argument("--no-verify", action="store_true", help="skip dual-noise verification")
    _add_grpo_reward_flags(p)
    p.add_argument("--simulator-url", default=None, help="simulator service (default: embedded stack)")
    p.add_argument("--judge-url", default=None, help="judge service (default: embedded stack)")
    p.add_argument("--world-model", default=str(BUNDLED_WORLD_MODEL), help="for the embedded stack")
    p.add_argument("--judge", default=str(BUNDLED_JUDGE), help="classifier for the embedded stack")
    p.add_argument("--action-guidance", type=float, default=None, help="the embedded stack's simulator: " + GUIDANCE_HELP)
    p.add_argument("--perceptual-model", default=None,
                   help="--reward imitation: the world-model checkpoint whose autoencoder measures the "
                   "distance to the expert (default: --world-model)")
    p.add_argument("--eval-episodes", type=int, default=0,
                   help="real-simulator episodes per task on held-out seeds, before and after (0: skip)")
    p.add_argument("--workers", type=int, default=2, help="processes for the real-simulator evaluation")
    p.add_argument("--calibration-episodes", type=int, default=0, help=CALIBRATION_HELP)
    p.add_argument("--calibration-every", type=int, default=0,
                   help="every K steps, run the current policy in MetaWorld on the same calibration layouts "
                   "(--calibration-episodes per task) beside the step's imagined success: shows when GRPO "
                   "learns what imagination rewards and MetaWorld does not (0: only before step 1)")
    p.add_argument("--keep-best-real", action="store_true",
                   help="with --calibration-every: answer with the policy of the best real check (the start "
                   "policy's included; <out>/policy-best-real), not the last one")
    p.add_argument("--environment", choices=["imagination", "real"], default="imagination",
                   help="real: online GRPO in MetaWorld with its true success flag (the baseline)")
    p.add_argument("--real-budget", type=int, default=0,
                   help="with --environment real: real episodes to spend (sets the steps)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_grpo)

    p = tr.add_parser("lifelong", help="WMPO's real-data loop: collect P real rollouts of the policy, "
                      "fine-tune the world model and the judge on them, GRPO in imagination, evaluate; "
                      "repeat (resumes from <out>/lifelong.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", default="button-press-topdown-v3,drawer-close-v3,door-open-v3")
    p.add_argument("--policy", default=str(BUNDLED_POLICY), help="starting policy checkpoint")
    p.add_argument("--world-model", default=str(BUNDLED_WORLD_MODEL), help="starting world model")
    p.add_argument("--judge", default=str(BUNDLED_JUDGE), help="starting success classifier")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--real-rollouts", type=int, default=128, help="P: real rollouts of the policy per round")
    p.add_argument("--rollout-temperature", type=float, default=1.0,
                   help="the policy's sampling temperature in the real rollouts (GRPO samples at 1.6)")
    p.add_argument("--wm-steps", type=int, default=400, help="world-model fine-tuning steps (0: skip)")
    p.add_argument("--wm-lr", type=float, default=1e-4,
                   help="world-model fine-tuning peak learning rate (at 1e-4, 25 steps already took the base "
                   "policy's imagined door openings from 35%% to 0-5%%, real 12.5%%: results/grpo-clip-gated/)")
    p.add_argument("--judge-steps", type=int, default=300, help="judge fine-tuning steps (0: skip)")
    p.add_argument("--threshold-support", type=int, default=20,
                   help="the fine-tuned judge's threshold is re-chosen on the round's validation rollouts only "
                   "when they hold at least this many successes and failures; else the judge keeps its threshold")
    p.add_argument("--threshold-data", nargs="+", default=[], metavar="DATASET",
                   help="real datasets outside the real-rollout budget (e.g. datasets/judge-val of "
                   "scripts/retrain_judge.sh) pooled with the rounds' validation rollouts to choose that threshold, "
                   "each cut at GRPO's horizon (with --judge-horizon-cuts) and replayed with the round's world model")
    p.add_argument("--min-imagined-auc", type=float, default=0.0,
                   help="GRPO trains only on the tasks whose imagined validation rollouts the round's judge ranks "
                   "with at least this AUC (0: every task; a round with none keeps its policy)")
    p.add_argument("--judge-horizon-cuts", action="store_true",
                   help="also fine-tune and calibrate the judge on the real rollouts cut at GRPO's horizon "
                   "(--chunks x 8 steps, relabelled) and their imagined replays: no extra real rollouts")
    p.add_argument("--steps", type=int, default=10, help="GRPO steps in imagination per round")
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--chunks", type=int, default=12)
    p.add_argument("--temperature", type=float, default=1.6, help="the policy's sampling temperature in GRPO")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--target-kl", type=float, default=0.0, help=TARGET_KL_HELP)
    p.add_argument("--action-guidance", type=float, default=None,
                   help="in GRPO's simulator and the judge's imagined data: " + GUIDANCE_HELP)
    p.add_argument("--calibration-episodes", type=int, default=0, help="before each round's GRPO: " + CALIBRATION_HELP)
    p.add_argument("--calibration-every", type=int, default=0,
                   help="every K GRPO steps, the current policy on the same calibration layouts beside the "
                   "step's imagined success (needs --calibration-episodes; 0: only before step 1)")
    p.add_argument("--keep-best-real", action="store_true",
                   help="with --calibration-every: each round goes on from the policy of the best real check (the start "
                   "policy's included; <out>/policy-best-real), not the last one")
    _add_grpo_reward_flags(p)
    p.add_argument("--eval-episodes", type=int, default=100, help="held-out episodes per task after each round")
    p.add_argument("--report", action="store_true",
                   help="print the loop in --out as a markdown table (rounds, GRPO steps, real checks, "
                   "evaluations) and exit; also printed at the end of a run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_lifelong)

    ev = sub.add_parser("eval", help="evaluate in the real simulator").add_subparsers(dest="what", required=True)
    p = ev.add_parser("policy", help="success rate per task on held-out seeds, with 95%% Wilson intervals")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", default=str(BUNDLED_POLICY), help="policy checkpoint (default: bundled)")
    g.add_argument("--expert", action="store_true", help="evaluate the scripted expert instead")
    g.add_argument("--merge", nargs="+", metavar="REPORT", help="instead: combine the --json reports (or "
                   "--journal files: the episodes finished so far) of `eval policy` or `eval optimizer` runs of "
                   "one source over other tasks or seed ranges into one report (every episode once; intervals "
                   "over all of them)")
    g.add_argument("--compare", nargs=2, metavar=("A", "B"), help="instead: a paired comparison of two --json "
                   "reports or journals on the layouts both ran (per task: successes, layouts only one solved, "
                   "exact McNemar p)")
    p.add_argument("--tasks", default="policy")
    p.add_argument("--episodes", type=int, default=100, help="episodes per task")
    p.add_argument("--seed-offset", type=int, default=0, help=SEED_OFFSET_HELP)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy decoding (default; with --verify: 1.0, candidates must differ)")
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS)
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--journal", default=None, help=JOURNAL_HELP)
    p.add_argument("--record", action="store_true", help="also record the result in the checkpoint's manifest")
    p.add_argument("--verify", action="store_true",
                   help="verify before execute: imagine N sampled candidates per chunk, execute the judge's best")
    p.add_argument("--candidates", type=int, default=4, help="--verify: candidates per decision")
    p.add_argument("--max-attempts", type=int, default=3, help="--verify: imagine calls per decision before "
                   "executing the best seen anyway")
    p.add_argument("--simulator-url", default=None, help="--verify: simulator service with a judge "
                   "(default: an embedded stack from --world-model and --judge); the outcome of every "
                   "executed chunk is reported to its drift monitor")
    p.add_argument("--world-model", default=str(BUNDLED_WORLD_MODEL))
    p.add_argument("--judge", default=str(BUNDLED_JUDGE))
    p.add_argument("--drift-log", default=None, help="--verify on the embedded stack: its simulator appends "
                   "every reported outcome to this JSONL file (read it with `wmpo drift report --log`)")
    p.set_defaults(func=cmd_eval_policy)

    p = ev.add_parser("optimizer", help="the action optimizer in closed loop (plan, execute, re-plan) on "
                      "held-out seeds, with 95%% Wilson intervals and plan latency")
    p.add_argument("--generator", required=True, help="plan generator (wmpo train world-model --trajectory-vae)")
    p.add_argument("--trajectory-vae", required=True)
    p.add_argument("--inverse-dynamics", default=None, help="residual (or, for full-idm, full) IDM checkpoint")
    p.add_argument("--world-model", default=None, help="optimize through this action-conditioned world model "
                   "(the latent's decoded actions drive it; it must share the generator's autoencoder) instead "
                   "of the generator's plan tokens")
    p.add_argument("--variant", default="full-init", choices=["full", "full-init", "act-head", "full-idm"])
    p.add_argument("--policy", default=str(BUNDLED_POLICY), help="the +ActionInit / act-head policy")
    p.add_argument("--steps", type=int, default=None, help="optimization steps per plan (default: 100 for "
                   "full, 15 for full-init, 0 for act-head and full-idm)")
    p.add_argument("--execute-chunks", type=int, default=1, help="chunks executed per plan before re-planning")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate on the trajectory latent "
                   "(default: the planner's, 0.1 from a random latent, 0.01 from the policy's chunks)")
    p.add_argument("--anchor", action="store_true", help="start a plan from the policy's chunks exactly, "
                   "not from their VAE round trip (the guess's reconstruction error is kept in every decoding)")
    p.add_argument("--goal", default="instruction", choices=["instruction", "demo"],
                   help="the target future: the generator's instruction-only future, or the scripted expert's "
                   "demonstration from the same layout (goal reaching; reports the final object/hand error)")
    p.add_argument("--temperature", type=float, default=0.0, help="the policy's sampling temperature")
    p.add_argument("--tasks", default="policy")
    p.add_argument("--episodes", type=int, default=30, help="episodes per task")
    p.add_argument("--seed-offset", type=int, default=0, help=SEED_OFFSET_HELP)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS)
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--journal", default=None, help=JOURNAL_HELP)
    p.set_defaults(func=cmd_eval_optimizer)

    p = ev.add_parser("world-model", help="action following and fidelity against the real simulator")
    p.add_argument("--checkpoint", default=str(BUNDLED_WORLD_MODEL))
    p.add_argument("--trajectory-vae", default=None, help="the checkpoint is the optimizer's plan generator: "
                   "sequences go in through this VAE's latents, imagined from the frame at S (horizon: the VAE's)")
    p.add_argument("--tasks", default="policy")
    p.add_argument("--cases", type=int, default=20, help="cases per task")
    p.add_argument("--horizon", type=int, default=48)
    p.add_argument("--alternatives", default="other,negated,random",
                   help="counterfactual action sequences (other, reversed, negated, random)")
    p.add_argument("--sampler-steps", type=int, default=None)
    p.add_argument("--action-guidance", type=float, default=None, help=GUIDANCE_HELP)
    p.add_argument("--strip", default=None, help="write a PNG of real vs imagined futures")
    p.add_argument("--json", default=None)
    p.add_argument("--record", action="store_true", help="also record the result in the checkpoint's manifest")
    p.set_defaults(func=cmd_eval_world_model)

    p = ev.add_parser("policy-imagination", help="policies' success per task in imagination (world model + "
                      "judge) next to the real simulator, from the same held-out layouts; Pearson r and MAE")
    p.add_argument("--checkpoint", nargs="+", help="policy checkpoints (several: the agreement "
                   "is over every (policy, task) pair)")
    p.add_argument("--merge", nargs="+", metavar="REPORT", help="instead: combine the --json reports of runs "
                   "over different policies (same settings) into one, with the agreement over all of them")
    p.add_argument("--tasks", default="policy")
    p.add_argument("--episodes", type=int, default=20, help="held-out start layouts per task")
    p.add_argument("--chunks", type=int, default=20, help="action chunks per trial (8 env steps each)")
    p.add_argument("--temperature", type=float, default=1.0, help="the policy's sampling temperature (> 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seed-offset", type=int, default=0, help="layouts 1,000,000 + offset + i")
    p.add_argument("--batch", type=int, default=8, help="trials imagined together")
    p.add_argument("--world-model", default=str(BUNDLED_WORLD_MODEL), help="the embedded stack's world model")
    p.add_argument("--judge", default=None, help="the embedded stack's judge (default: the bundled one)")
    p.add_argument("--action-guidance", type=float, default=None,
                   help="the embedded simulator's action guidance (default: the world model's)")
    p.add_argument("--simulator-url", default=None, help="a running simulator service (with --judge-url)")
    p.add_argument("--judge-url", default=None)
    p.add_argument("--api-key", default=None, help="for --simulator-url / --judge-url")
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_eval_policy_imagination)
    p = ev.add_parser("judge", help="success classifier precision/recall/F1 on real and imagined rollouts")
    p.add_argument("--checkpoint", default=str(BUNDLED_JUDGE))
    p.add_argument("--data", required=True, nargs="+",
                   help="held-out datasets of real (or imagined) rollouts; several make one test set, "
                   "scored per task over all of them")
    p.add_argument("--world-model", default=None,
                   help="also judge the world model's replays of the same actions (label: the real outcome)")
    p.add_argument("--limit", type=int, default=0, help="first N episodes only (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--record", default=None, metavar="NAME", help="record the result in the manifest under NAME")
    p.add_argument("--dual-noise", default=None, metavar="REAL_DATA",
                   help="dual-noise verification report: --data is the imagined replay of REAL_DATA "
                   "(wmpo imagine-dataset); judged successes are imagined again under noise --seed")
    p.set_defaults(func=cmd_eval_judge)

    ex = sub.add_parser("export", help="the fast path (ONNX graphs and Triton model repositories of a "
                        "world model) and datasets as LeRobot v3").add_subparsers(dest="what", required=True)
    p = ex.add_parser("onnx", help="the DiT's context and cached-denoiser calls and the autoencoder's encoder "
                      "and decoder as ONNX graphs (dynamic batch), checked against torch with ONNX Runtime")
    p.add_argument("--checkpoint", default=None, help="world-model checkpoint (default: the bundled one)")
    p.add_argument("--out", default="outputs/onnx", help="directory for <graph>.onnx and export.json")
    p.add_argument("--graphs", default=None,
                   help="comma-separated subset of dit_denoiser,dit_context,ae_encoder,ae_decoder")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-parity", dest="parity", action="store_false", help="skip the ONNX Runtime check")
    p.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip the float16 errors")
    p.set_defaults(func=cmd_export_onnx)
    p = ex.add_parser("triton", help="a Triton model repository (config.pbtxt + versioned model files) for "
                      "the tensorrt_plan, onnxruntime_onnx or python backend")
    p.add_argument("--checkpoint", default=None, help="world-model checkpoint (default: the bundled one)")
    p.add_argument("--repo", required=True, help="model repository directory (created; other versions kept)")
    p.add_argument("--variant", default="python", choices=["python", "onnxruntime_onnx", "tensorrt_plan"],
                   help="python: ONNX Runtime in Triton's Python backend (CPU); tensorrt_plan: GPU nodes, "
                   "plans built there by <repo>/build_tensorrt_plans.sh (default: %(default)s)")
    p.add_argument("--onnx", default=None, help="reuse `wmpo export onnx` output of the same checkpoint "
                   "(default: export now)")
    p.add_argument("--version", type=int, default=1, help="model version directory (default: 1)")
    p.add_argument("--max-batch", type=int, default=64, help="max_batch_size (and TensorRT profile max)")
    p.add_argument("--preferred", default=None, help="dynamic batching's preferred batch sizes, comma-separated "
                   "(default: 16, 32 below the max batch, and the max batch)")
    p.add_argument("--queue-delay-us", type=int, default=500, help="dynamic batching's max queue delay")
    p.add_argument("--opt-batch", type=int, default=16, help="TensorRT profile's opt batch")
    p.add_argument("--instances", type=int, default=1, help="instances per model (instance_group count)")
    p.add_argument("--instance-kind", default="auto", choices=["auto", "cpu", "gpu"],
                   help="auto: GPU for tensorrt_plan and onnxruntime_onnx, CPU for python")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads per instance (0: auto)")
    p.set_defaults(func=cmd_export_triton)
    p = ex.add_parser("latents", help="datasets encoded by a world model's autoencoder into one small packed "
                      "file (8-bit, lzma), to train the DiT where the episodes are not (a GPU node)")
    p.add_argument("--data", required=True, nargs="+", help="dataset directories (or collect-play roots)")
    p.add_argument("--autoencoder", required=True, help="autoencoder (or world-model) checkpoint")
    p.add_argument("--out", required=True, help="packed latent file (.npz)")
    p.add_argument("--frame-stride", type=int, default=2, help="env steps per latent frame (the DiT's)")
    p.add_argument("--window", type=int, default=8, help="training window: shorter episodes are left out")
    p.set_defaults(func=cmd_export_latents)
    p = ex.add_parser("lerobot", help="a wmpo dataset (collected, imagined or policy rollouts) as a "
                      "LeRobotDataset v3.0: parquet frames and actions, mp4 videos, provenance in info.json")
    p.add_argument("--data", required=True, help="wmpo dataset directory")
    p.add_argument("--out", required=True, help="LeRobot dataset directory (created; must not exist)")
    p.add_argument("--pix-fmt", default="yuv444p", choices=["yuv444p", "yuv420p", "rgb24"],
                   help="yuv444p: no chroma subsampling, frames back within 2 levels at crf 0; yuv420p: "
                   "what browsers play; rgb24: lossless RGB (libx264rgb, exact frames, larger files)")
    p.add_argument("--codec", default="h264", choices=["h264", "av1"],
                   help="h264 (libx264, default) or av1 (SVT-AV1, yuv420p only: what LeRobot's hub datasets use)")
    p.add_argument("--crf", type=int, default=0,
                   help="quality, 0 = no quantization for h264 (default: %(default)s; LeRobot uses 30 for av1)")
    p.add_argument("--robot-type", default="sawyer", help="info.json's robot_type (default: %(default)s)")
    p.set_defaults(func=cmd_export_lerobot)

    im = sub.add_parser("import", help="datasets from other formats").add_subparsers(dest="what", required=True)
    p = im.add_parser("lerobot", help="a LeRobotDataset v3 (a camera, a 4-D action, tasks) as a wmpo dataset "
                      "that `wmpo train` reads")
    p.add_argument("--data", required=True, help="LeRobot v3 dataset directory")
    p.add_argument("--out", required=True, help="wmpo dataset directory (created; must not exist)")
    p.add_argument("--camera", default=None, help="camera feature, e.g. observation.images.top "
                   "(default: the first video or image feature)")
    p.add_argument("--image-size", type=int, default=None,
                   help="frames are center-cropped to a square and resized to this (default: the "
                   "camera's size; the bundled models use 64)")
    p.add_argument("--action-key", default="action", help="the 4-D action feature (default: %(default)s)")
    p.add_argument("--episodes-succeed", action="store_true",
                   help="label every episode's last frame a success (demonstrations without success labels)")
    p.add_argument("--max-episodes", type=int, default=None, help="import only the first N episodes")
    p.set_defaults(func=cmd_import_lerobot)

    p = sub.add_parser("tasks", help="list MetaWorld tasks and their instructions")
    p.set_defaults(func=cmd_tasks)
    return ap


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """The top-level subcommands of a parser from ``build_parser`` (the services layer adds its own)."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    try:
        args.func(args)
    except WmpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed work is saved (rerun to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`wmpo tasks | head`): not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (flushing at exit must not fail again)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
