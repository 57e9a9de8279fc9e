"""Train the video DiT on latent sequences of collected episodes (``wmpo train world-model``).

The autoencoder is trained first (``wmpo train autoencoder``) and frozen; every episode is
encoded once, then the DiT is trained with the rectified-flow objective of
``wmpo.models.flow`` on random windows (anchor + ``window`` frames, random context/generation
split). An exponential moving average of the weights is what gets saved and sampled.
Resumable: ``<out>/train_state.pt`` is written every ``save_every`` steps, and a world-model
checkpoint (autoencoder + EMA DiT) is refreshed at the same time so a long background run
always leaves something usable. Resuming from ``train_state.pt`` is exact: the same weights,
optimizer moments and data order as a run that never stopped.

Across machines (``export``, e.g. ``checkpoints/world-model-v2`` in the repository): at every
save the export directory is replaced (never accumulated) by the usable world model (fp16 EMA)
plus a compact training state, ``resume.safetensors`` (the raw DiT weights in fp16 and the
data-order generator) and ``resume.json`` (step, config, data command and fingerprint). A run
started with the same command on a machine without ``<out>/train_state.pt`` continues from
the export: raw weights and EMA from their fp16 copies, a fresh AdamW whose moments refill
within about 1/(1 - beta2) = 100 steps while the learning rate re-warms over ``rewarm``
steps, and the same data order. Not bit-identical (fp16 rounding, new moments), but it
loses nothing but the steps since the last save. The Adam moments are left out on purpose:
they would triple the committed state for a difference that lasts ~100 steps.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wmpo.data.episodes import atomic_write_json
from wmpo.data.latents import LatentEpisodes
from wmpo.data.play import expand_datasets
from wmpo.errors import CheckpointError, ConfigError
from wmpo.models.autoencoder import FrameAutoencoder
from wmpo.models.flow import (
    FlowBatch,
    flow_errors,
    flow_matching_loss,
    moving_mask,
    plan_generator_loss,
)
from wmpo.models.text import EMBED_DIM
from wmpo.models.trajectory_vae import TrajectoryVAE
from wmpo.models.video_dit import PRESETS, PlanCondition, VideoDiT, VideoDiTConfig
from wmpo.sampling.rollout import SamplerConfig, start_rollout, step_rollouts
from wmpo.sampling.world_model import TorchWorldModel
from wmpo.train.common import (
    JsonlLog,
    cosine_lr,
    load_train_state,
    save_train_state,
    set_lr,
    wsd_lr,
)
from wmpo.utils.checkpoint import environment_info, load_checkpoint

LR_SCHEDULES = ("cosine", "wsd")
RESUME_WEIGHTS = "resume.safetensors"
RESUME_JSON = "resume.json"
# Config fields that may change when a run is resumed (bookkeeping, and ``steps``: with the
# wsd schedule a run is extended by raising it before its decay starts).
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "eval_every", "save_every", "out", "export", "rewarm",
                               "device", "time_budget", "val_batch"})
TIMING_STEPS = 50  # --time-budget: steps timed (after 10 warm-up steps) before the run's length is fixed


@dataclass
class WorldModelTrainConfig:
    data: list[str]
    autoencoder: str
    out: str
    preset: str = "small"
    steps: int = 20000
    batch_size: int = 32
    lr: float = 3e-4
    warmup: int = 500
    window: int = 8  # latent frames after the anchor
    ema: float = 0.999
    action_dropout: float = 0.1  # for classifier-free guidance on actions at sampling time
    val_episodes: int = 16
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    save_every: int = 500
    init: str | None = None  # fine-tune: start from this world model's DiT (its preset wins)
    heldout_data: list[str] | None = None  # never trained on: the zero-shot validation loss
    moving_weight: float = 0.0  # extra loss weight of moving latent pixels (wmpo.models.flow)
    moving_threshold: float = 0.1
    lr_schedule: str = "cosine"
    decay_frac: float = 0.2  # wsd: the last fraction of steps decays to zero
    export: str | None = None  # repository directory: usable checkpoint + compact resume state
    rewarm: int = 100  # LR re-warmup steps after resuming from the export (fresh AdamW moments)
    data_command: str | None = None  # how the data is rebuilt on a new machine (recorded)
    # The action optimizer's plan generator (issue 17): a trajectory VAE checkpoint switches the
    # DiT's plan conditioning on (usually with --init, fine-tuning the world model); the plan is
    # dropped with a probability growing linearly from 0 to plan_drop_max over the run, on every
    # window ("all") or only on windows of episodes that reached their task ("successes": the
    # instruction-only future then learns what doing the task looks like, not the average of play).
    trajectory_vae: str | None = None
    plan_drop_max: float = 0.5
    plan_drop_on: str = "all"
    consistency_weight: float = 0.1
    # Imagined context (scheduled sampling): this fraction of the windows gets its recent context
    # imagined by the EMA model from the real actions, so the loss teaches the model to continue
    # (and correct) its own frames, as it must at inference. 0 = always the real frames.
    self_forcing: float = 0.0
    self_forcing_steps: int = 4  # sampler steps per AR step of the imagined context
    # The DiT also reads the displacement commanded since the last context frame (VideoDiT's
    # motion conditioning); with --init a model without it is extended (zero new weights).
    motion_conditioning: bool = False
    # Where to train: "auto" = the GPU when there is one (bf16 autocast there), else the CPU.
    device: str = "auto"
    # Seconds of training this session may spend (0 = no limit): after TIMING_STEPS timed steps the
    # run's total steps (and so its LR schedule) are set to what fits, leaving room for the saves.
    time_budget: float = 0.0
    val_batch: int = 0  # windows per validation batch (0 = batch_size); fixed, validation losses compare

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown DiT preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("--steps and --batch-size must be >= 1 and --lr > 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown --lr-schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if self.moving_weight < 0 or self.moving_threshold <= 0:
            raise ConfigError(f"--moving-weight must be >= 0 and --moving-threshold > 0, got "
                              f"{self.moving_weight}, {self.moving_threshold}")
        if not 0 < self.decay_frac <= 1 or self.rewarm < 1:
            raise ConfigError(f"--decay-frac must be in (0, 1] and --rewarm >= 1, got {self.decay_frac}, {self.rewarm}")
        if not 2 <= self.window < PRESETS[self.preset].max_frames:
            raise ConfigError(f"--window must be in [2, {PRESETS[self.preset].max_frames - 1}]")
        if not 0 <= self.self_forcing <= 1 or self.self_forcing_steps < 1:
            raise ConfigError(f"--self-forcing must be in [0, 1] and --self-forcing-steps >= 1, got "
                              f"{self.self_forcing}, {self.self_forcing_steps}")
        if self.self_forcing > 0 and self.trajectory_vae:
            raise ConfigError("--self-forcing trains a plain world model; it does not apply with --trajectory-vae")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.time_budget < 0 or self.val_batch < 0:
            raise ConfigError(f"--time-budget and --val-batch must be >= 0, got {self.time_budget}, {self.val_batch}")
        if not 0 <= self.plan_drop_max <= 1 or self.consistency_weight < 0:
            raise ConfigError(f"--plan-drop-max must be in [0, 1] and --consistency-weight >= 0, got "
                              f"{self.plan_drop_max}, {self.consistency_weight}")
        if self.plan_drop_on not in ("all", "successes"):
            raise ConfigError(f"--plan-drop-on must be 'all' or 'successes', got {self.plan_drop_on!r}")


def load_autoencoder(directory: str) -> tuple[FrameAutoencoder, str]:
    tensors, config, manifest = load_checkpoint(directory)
    if config.get("kind") == "world-model":  # reuse the autoencoder of an existing world model
        tensors = {k[3:]: v for k, v in tensors.items() if k.startswith("ae.")}
        config = config["autoencoder"]
    if config.get("kind") != "autoencoder":
        raise CheckpointError(f"{directory} is a {config.get('kind')!r} checkpoint, not an autoencoder")
    return FrameAutoencoder.from_config_and_tensors(config, tensors, directory), manifest.get("weights_sha256", "")


def validation_episodes(n_episodes: int, val_episodes: int, seed: int) -> np.ndarray:
    """The episodes a run validates on (never trained on): fixed by the seed and the data."""
    rng = np.random.default_rng(seed)
    n_val = min(val_episodes, max(1, n_episodes // 10))
    return np.sort(rng.choice(n_episodes, n_val, replace=False))


def validation_losses(model: VideoDiT, eps: LatentEpisodes, pool: np.ndarray | None, batch_size: int,
                      window: int, moving_threshold: float, planner: PlanInputs | None = None,
                      keep_plan: bool = True) -> tuple[float, float]:
    """Plain velocity MSE on generated frames, and the same on moving latent pixels only, over
    4 batches of fixed windows and noise (the same every time, so runs and checkpoints compare).
    A plan generator is validated with its plans (``keep_plan=False``: with the null plan) on the
    same windows and noise as a plain world model, so the two compare directly."""
    g = torch.Generator().manual_seed(1234)
    g_plan = torch.Generator().manual_seed(4321)  # plans apart: windows and noise as for a plain model
    tot, n_tot, mov, n_mov = 0.0, 0.0, 0.0, 0.0
    with torch.no_grad():
        for _ in range(4):
            batch: FlowBatch = eps.sample(batch_size, window, g, pool,
                                          plan_frames=planner.frames if planner else 0, plan_gen=g_plan)
            plan = planner.condition(batch, keep=keep_plan) if planner else None
            batch = batch.to(next(model.parameters()).device)
            sq, gen_mask = flow_errors(model, batch, g, plan=plan)
            gm = gen_mask[..., None, None, None]  # (B, F, 1, 1, 1)
            m = moving_mask(batch.latents, moving_threshold) * gm
            tot += float((sq * gm).sum())
            n_tot += float(gm.sum()) * sq[0, 0].numel()
            mov += float((sq * m).sum())
            n_mov += float(m.sum()) * sq.shape[2]
    return tot / n_tot, mov / max(n_mov, 1.0)


IMAGINED_CHUNK_FRAMES = 2  # latent frames per imagined AR step: the served K=4 chunk at frame stride 2


@torch.no_grad()
def imagine_context(model: VideoDiT, batch: FlowBatch, frac: float, sampler: SamplerConfig,
                    gen: torch.Generator) -> int:
    """Replace, in a ``frac`` of the windows, the recent context after the first real frame
    (window frames 2 .. n_context-1) by frames the model imagines from [anchor, frame 1] with the
    window's real actions, through the served sampler. The generated frames keep their real
    targets: the model learns to continue its own frames toward what really happened. Returns
    the number of windows changed. Windows with only one recent context frame stay real."""
    picks = torch.rand(len(batch.n_context), generator=gen) < frac
    seeds = torch.randint(0, 2**31 - 1, (len(picks),), generator=gen)
    n_context = batch.n_context.tolist()  # read once (on a GPU: one sync)
    idx = [i for i in range(len(picks)) if picks[i] and n_context[i] >= 3]
    if not idx:
        return 0
    width = batch.actions.shape[-1]
    rollouts = []
    for i in idx:  # on the batch's device: the sampler runs where the model is
        r = start_rollout(batch.latents[i, 0], int(seeds[i]), batch.latents[i, 1:2], batch.actions[i, 1:2], width)
        r.history_has_action = batch.has_action[i, 1:2].clone()
        rollouts.append(r)
    n = IMAGINED_CHUNK_FRAMES
    for s in range(0, max(n_context[i] - 2 for i in idx), n):
        live = [k for k, i in enumerate(idx) if 2 + s < n_context[i]]
        first = 2 + s  # window frame of the first frame this AR step imagines (always < F - 1)
        acts = torch.stack([batch.actions[idx[k], first:first + n] for k in live])  # (b, n, stride*4)
        new = step_rollouts(model, [rollouts[k] for k in live], acts.reshape(len(live), -1, 4), sampler)
        for k, frames in zip(live, new, strict=True):
            i = idx[k]
            stop = min(first + n, n_context[i])
            batch.latents[i, first:stop] = frames[: stop - first]
    return len(idx)


class PlanInputs:
    """Turns plan windows into the plan generator's inputs: the trajectory VAE's token means of
    each window's plan actions, and the instruction embeddings of its tasks (computed once)."""

    def __init__(self, vae: TrajectoryVAE, stride: int, tasks: list[str]) -> None:
        from wmpo.envs.tasks import instruction
        from wmpo.models.text import embed_instructions

        self.vae = vae.eval()
        self.frames = vae.cfg.steps // stride
        names = sorted(set(tasks))
        table = torch.from_numpy(embed_instructions([instruction(t) for t in names]))
        self.text = {t: table[i] for i, t in enumerate(names)}

    @torch.no_grad()
    def tokens(self, batch: FlowBatch) -> torch.Tensor:
        return self.vae.encode(batch.plan_actions)[0]  # (B, S, Z) means

    def texts(self, batch: FlowBatch) -> torch.Tensor:
        return torch.stack([self.text[t] for t in batch.tasks])

    def condition(self, batch: FlowBatch, keep: bool) -> PlanCondition:
        b = len(batch.tasks)
        return PlanCondition(self.tokens(batch), torch.full((b,), keep), batch.plan_index, self.texts(batch))


def training_device(cfg: WorldModelTrainConfig) -> torch.device:
    """The device a run trains on. GPU training covers the world model, with or without
    self-forcing (the sampler runs on the model's device); the plan generator (CPU-side plan
    inputs) trains on the CPU."""
    special = cfg.trajectory_vae is not None
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and not special else "cpu")
    if cfg.device.startswith("cuda"):
        if special:
            raise ConfigError("--device cuda trains the world model; --trajectory-vae (the plan generator) "
                              "trains on the CPU (--device cpu)")
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {cfg.device}: this torch sees no CUDA GPU")
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # validation runs in fp32; training under bf16 autocast
    return device


def load_latents(paths: list[str], ae: FrameAutoencoder, ae_sha: str, stride: int, min_frames: int,
                 cache_dir: Path) -> LatentEpisodes:
    """Episodes as latents: dataset directories are encoded (through the cache), or one packed
    latent file (``wmpo export latents``) is read as it is, for a machine without the episodes."""
    if not (len(paths) == 1 and Path(paths[0]).is_file()):
        return LatentEpisodes.encode_cached(expand_datasets(paths), ae, ae_sha, stride, min_frames, cache_dir)
    try:
        data, meta = LatentEpisodes.load_packed(paths[0])
    except (ValueError, OSError, KeyError) as e:
        raise ConfigError(f"--data {paths[0]}: not a packed latent file ({e})") from e
    if meta.get("autoencoder_sha256") != ae_sha or meta.get("frame_stride") != stride:
        raise ConfigError(f"{paths[0]} was encoded with autoencoder {str(meta.get('autoencoder_sha256'))[:12]} at "
                          f"frame stride {meta.get('frame_stride')}; this run has {ae_sha[:12]} at stride {stride}")
    if int(data.lengths.min()) < min_frames:
        raise ConfigError(f"{paths[0]} holds episodes of {int(data.lengths.min())} latent frames; windows need "
                          f"{min_frames} (pack it with this --window)")
    return data


def check_resumable(saved: dict[str, Any] | None, cfg: WorldModelTrainConfig, where: Path) -> None:
    """Refuse to continue a state written by a run with another configuration."""
    if not saved:
        return  # states written before configs were recorded
    now = asdict(cfg)
    diff = {k: (saved.get(k), now[k]) for k in now
            if k not in RESUMABLE_CHANGES and k in saved and saved[k] != now[k]}
    if diff:
        parts = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in ((k, *v) for k, v in diff.items()))
        raise ConfigError(f"{where} holds a run with another configuration ({parts}); resume with the same "
                          f"settings, or use another --out/--export")


def data_fingerprint(data: LatentEpisodes) -> dict[str, Any]:
    """Which episodes a run trains on (tasks and lengths, in order); latents are recomputed per
    machine, so they are not part of it."""
    h = hashlib.sha256(json.dumps([data.tasks, data.lengths.tolist()]).encode()).hexdigest()[:16]
    return {"episodes": len(data), "latent_frames": int(len(data.latents)), "sha256": h}


def find_export(export: str | None) -> Path | None:
    """The export directory with a resume state, or its previous copy if a swap was interrupted."""
    if not export:
        return None
    for d in (Path(export), Path(export + ".old")):
        if (d / RESUME_JSON).exists() and (d / RESUME_WEIGHTS).exists():
            return d
    return None


def write_export(export: str, save_model: Any, dit: VideoDiT, gen: torch.Generator,
                 state: dict[str, Any]) -> None:
    """Replace ``export`` with the usable world model and the compact resume state: written to
    a sibling temporary directory, then swapped in with two renames."""
    from safetensors.torch import save_file

    final = Path(export)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sha = save_model(tmp)
    tensors = {f"dit.{k}": v.detach().to(torch.float16).contiguous() for k, v in dit.state_dict().items()}
    tensors["gen_state"] = gen.get_state().clone()
    save_file(tensors, tmp / RESUME_WEIGHTS, metadata={"format": "wmpo-resume"})
    atomic_write_json(tmp / RESUME_JSON, {**state, "world_model_sha256": sha})
    old = final.parent / (final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_export(d: Path, dit: VideoDiT, ema: VideoDiT, gen: torch.Generator) -> dict[str, Any]:
    from safetensors.torch import load_file

    meta = json.loads((d / RESUME_JSON).read_text())
    tensors = load_file(d / RESUME_WEIGHTS)
    gen.set_state(tensors.pop("gen_state"))
    dit.load_state_dict({k[4:]: v.float() for k, v in tensors.items()})
    model, _, manifest = load_checkpoint(d)
    if manifest.get("weights_sha256") != meta.get("world_model_sha256"):
        raise CheckpointError(f"{d}: the world model and {RESUME_JSON} come from different saves")
    ema.load_state_dict({k[4:]: v.float() for k, v in model.items() if k.startswith("dit.")})
    return meta


def train_world_model(cfg: WorldModelTrainConfig, progress: bool = True) -> dict[str, Any]:
    cfg.validate()
    device = training_device(cfg)
    torch.manual_seed(cfg.seed)
    ae, ae_sha = load_autoencoder(cfg.autoencoder)
    for p in ae.parameters():
        p.requires_grad_(False)
    init_sha = ""
    # The served sampler's defaults: a fine-tune keeps its init's (chosen by evaluating that model,
    # e.g. the bundled 4 steps with action guidance 2) rather than falling back to the library's.
    served_sampler = SamplerConfig()
    if cfg.init:  # fine-tuning (WMPO's policy behaviour alignment): the DiT's shape is the init's
        init_wm = TorchWorldModel.load(cfg.init)
        if init_wm.ae.config != ae.config:
            raise ConfigError(f"--init {cfg.init} was trained with another autoencoder than {cfg.autoencoder}")
        dit_cfg = replace(init_wm.dit.config,
                          motion_conditioning=init_wm.dit.config.motion_conditioning or cfg.motion_conditioning)
        init_sha = init_wm.hashes.get("world_model_sha256", "")
        if not cfg.trajectory_vae:  # a plan generator reads no per-frame actions: no action guidance
            served_sampler = init_wm.sampler
    else:
        dit_cfg = VideoDiTConfig(**{**asdict(PRESETS[cfg.preset]),
                                    "latent_channels": ae.config.latent_channels,
                                    "latent_size": ae.config.latent_size,
                                    "motion_conditioning": cfg.motion_conditioning})
    vae, vae_sha = TrajectoryVAE.load(cfg.trajectory_vae) if cfg.trajectory_vae else (None, "")
    if vae is not None and not dit_cfg.has_plan:
        vc = vae.cfg
        if vc.steps % dit_cfg.frame_stride or vc.action_dim != dit_cfg.action_dim:
            raise ConfigError(f"--trajectory-vae {cfg.trajectory_vae}: {vc.steps} actions of width {vc.action_dim} do "
                              f"not fit the DiT's frame stride {dit_cfg.frame_stride} / action width {dit_cfg.action_dim}")
        dit_cfg = dit_cfg.with_plan(vc.tokens, vc.latent_dim, vc.steps // dit_cfg.frame_stride, EMBED_DIM)
    if vae is not None and cfg.window - 1 > dit_cfg.plan_frames:
        raise ConfigError(f"--window {cfg.window} generates more frames than a plan covers ({dit_cfg.plan_frames})")
    t_enc = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_latents(cfg.data, ae, ae_sha, dit_cfg.frame_stride, cfg.window + 1, out / "cache" / "train")
    if len(data) < 2:
        raise ConfigError(f"need at least 2 episodes with >= {cfg.window + 1} latent frames, got {len(data)}")
    if cfg.plan_drop_on == "successes" and (data.succeeded is None or not data.succeeded.any()):
        raise ConfigError("--plan-drop-on successes needs episodes that reached their task, and "
                          + ("this packed file does not record which did (pack it again)" if data.succeeded is None
                             else "none of the training episodes did"))
    heldout = (load_latents(cfg.heldout_data, ae, ae_sha, dit_cfg.frame_stride, cfg.window + 1,
                            out / "cache" / "heldout") if cfg.heldout_data else None)
    if heldout is not None and set(heldout.tasks) & set(data.tasks):
        raise ConfigError(f"held-out data shares tasks with the training data: {sorted(set(heldout.tasks) & set(data.tasks))}")
    enc_seconds = time.time() - t_enc
    fingerprint = data_fingerprint(data)
    val_eps = validation_episodes(len(data), cfg.val_episodes, cfg.seed)
    train_eps = np.setdiff1d(np.arange(len(data)), val_eps)

    dit = VideoDiT(dit_cfg)
    if cfg.init:
        # strict=False only for the plan-conditioning parameters a world model does not have yet.
        missing, unexpected = dit.load_init(init_wm.dit.state_dict())
        if unexpected or any(not (k.startswith(("plan_", "null_plan", "text_proj", "consistency_head"))
                                  or ".cross." in k) for k in missing):
            raise ConfigError(f"--init {cfg.init} does not fit this DiT: missing {missing}, unexpected {unexpected}")
        del init_wm
    planner = PlanInputs(vae, dit_cfg.frame_stride, data.tasks + (heldout.tasks if heldout else [])) if vae else None
    dit.to(device)
    ema = copy.deepcopy(dit).eval()
    opt = torch.optim.AdamW(dit.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    prior_seconds = 0.0  # training time of earlier sessions of this run
    rewarm_from: int | None = None  # step of the last resume from the export (LR re-warms from there)
    resumed_from = None
    state_path = out / "train_state.pt"
    log = JsonlLog(out / "train_log.jsonl")
    if (st := load_train_state(state_path)) is not None:
        check_resumable(st.get("config"), cfg, state_path)
        dit.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start = st["step"]
        rewarm_from = st.get("rewarm_from")
        prior_seconds = st.get("train_seconds", 0.0)
        resumed_from = str(state_path)
    elif (exp := find_export(cfg.export)) is not None:
        meta = json.loads((exp / RESUME_JSON).read_text())
        check_resumable(meta.get("config"), cfg, exp)
        load_export(exp, dit, ema, gen)
        start = rewarm_from = meta["step"]
        prior_seconds = meta.get("train_seconds", 0.0)
        resumed_from = str(exp)
        if meta.get("data") != fingerprint:
            log.write(event="warning", step=start, message="the data differs from the exported run's "
                      f"(there {meta.get('data')}, here {fingerprint}); rebuild it with {meta.get('data_command')!r}")
    log.write(event="start", step=start, device=str(device), episodes=len(data), latent_frames=len(data.latents),
              heldout_episodes=len(heldout) if heldout is not None else 0, data=fingerprint,
              resumed_from=resumed_from, encode_seconds=round(enc_seconds, 1),
              params=sum(p.numel() for p in dit.parameters()), threads=torch.get_num_threads())

    def lr_at(step: int) -> float:
        if cfg.lr_schedule == "wsd":
            lr = wsd_lr(step, cfg.lr, cfg.steps, cfg.warmup, cfg.decay_frac)
        else:
            lr = cosine_lr(step, cfg.lr, cfg.steps, cfg.warmup)
        if rewarm_from is not None:
            lr *= min(1.0, (step - rewarm_from + 1) / cfg.rewarm)
        return lr

    def eval_losses(model: VideoDiT, eps: LatentEpisodes, pool: np.ndarray | None) -> tuple[float, float]:
        return validation_losses(model, eps, pool, cfg.val_batch or cfg.batch_size, cfg.window,
                                 cfg.moving_threshold, planner)

    def val_loss() -> float:
        return eval_losses(ema, data, val_eps)[0]

    def val_record() -> dict[str, float]:
        v, vm = eval_losses(ema, data, val_eps)
        rec = {"val_loss": v, "val_loss_moving": vm}
        if heldout is not None:
            h, hm = eval_losses(ema, heldout, None)
            rec |= {"heldout_val_loss": h, "heldout_val_loss_moving": hm}
        return rec

    def save_world_model(step: int, final: bool, where: Path | None = None) -> str:
        manifest = {
            "kind": "world-model",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "complete": final,
            "training": {**asdict(cfg), "step": step, "seconds": round(time.time() - t0, 1)},
            "data": {"datasets": cfg.data, "command": cfg.data_command, "episodes": len(data),
                     "latent_frames": len(data.latents), "fingerprint": fingerprint,
                     "tasks": sorted(set(data.tasks)), "val_episodes": val_eps.tolist(),
                     "heldout_tasks": sorted(set(heldout.tasks)) if heldout is not None else []},
            "autoencoder_sha256": ae_sha,
            "init_world_model_sha256": init_sha or None,
            "trajectory_vae_sha256": vae_sha or None,
            "environment": environment_info(),
        }
        ema_cpu = ema if device.type == "cpu" else copy.deepcopy(ema).cpu()
        return TorchWorldModel(ae, ema_cpu, served_sampler).save(where or out, manifest)

    def save(step: int, final: bool = False) -> None:
        save_train_state(state_path, model=dit.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(),
                         gen=gen.get_state(), step=step, rewarm_from=rewarm_from, config=asdict(cfg),
                         train_seconds=round(time.time() - t0, 1))
        save_world_model(step, final=final)
        if cfg.export:
            write_export(cfg.export, lambda d: save_world_model(step, final=final, where=d), dit, gen,
                         {"step": step, "rewarm_from": rewarm_from, "train_seconds": round(time.time() - t0, 1),
                          "config": asdict(cfg), "data": fingerprint,
                          "data_command": cfg.data_command, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    t0 = time.time() - prior_seconds  # "seconds" in manifests counts every session of the run
    init_val = None
    if cfg.init and start == 0:  # how well the starting model already fits the new data (alignment's baseline)
        init_val = val_loss()
        log.write(event="init", step=start, val_loss=init_val)
    dit.train()
    sf_sampler = SamplerConfig(steps=cfg.self_forcing_steps)
    loss_ema = None
    bar = tqdm(range(start, cfg.steps), desc="train world model", initial=start, total=cfg.steps,
               disable=not progress)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    session_start = time.time()
    timing_from = start if cfg.time_budget > 0 else -10**9  # never reached without a budget
    t_timing = 0.0

    def fit_to_budget(step: int, step_seconds: float) -> None:
        """Fix the run's length to what the time budget allows (the LR schedule follows)."""
        # Room for the saves and validations still to come, and the final ones.
        left = cfg.time_budget - (time.time() - session_start) - 30.0
        per_step = step_seconds + 2.0 / cfg.save_every + 1.0 / cfg.eval_every  # ~2 s a save, ~1 s a validation
        cfg.steps = min(cfg.steps, max(step + 1, step + int(left / per_step)))
        log.write(event="time-budget", step=step, step_seconds=round(step_seconds, 4), steps=cfg.steps)

    for step in bar:
        if step >= cfg.steps:
            break
        set_lr(opt, lr_at(step))
        if step == timing_from + 10:
            t_timing = time.time()
        elif step == timing_from + 10 + TIMING_STEPS:
            fit_to_budget(step, (time.time() - t_timing) / TIMING_STEPS)
            bar.total = cfg.steps
        if planner is None:
            batch = data.sample(cfg.batch_size, cfg.window, gen, train_eps).to(device)
            if cfg.self_forcing > 0:
                imagine_context(ema, batch, cfg.self_forcing, sf_sampler, gen)
            with autocast:
                loss = flow_matching_loss(dit, batch, gen, action_dropout=cfg.action_dropout,
                                          moving_weight=cfg.moving_weight, moving_threshold=cfg.moving_threshold)
        else:
            batch = data.sample(cfg.batch_size, cfg.window, gen, train_eps, plan_frames=planner.frames)
            loss, _ = plan_generator_loss(dit, batch, planner.tokens(batch), planner.texts(batch),
                                          cfg.plan_drop_max * step / cfg.steps, cfg.consistency_weight, gen,
                                          cfg.moving_weight, cfg.moving_threshold,
                                          batch.succeeded if cfg.plan_drop_on == "successes" else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))  # short warm-up for the average
            for pe, p in zip(ema.parameters(), dit.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        # Kept on the device and read only when logged: no per-step sync, so on a GPU the next
        # batch is drawn on the CPU while this step still runs.
        loss_ema = loss.detach() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.detach()
        if (step + 1) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{float(loss_ema):.4f}")
            rec: dict[str, Any] = {"step": step + 1, "loss": float(loss_ema), "lr": opt.param_groups[0]["lr"],
                                   "train_seconds": round(time.time() - t0, 1)}
            if (step + 1) % cfg.eval_every == 0:
                rec |= val_record()
            log.write(**rec)
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save(step + 1)
    bar.close()
    final = val_record()
    final_val = final["val_loss"]
    log.write(event="done", step=cfg.steps, **final)
    if cfg.export:  # the finished model; its resume state lets a later run extend it (wsd)
        save(cfg.steps, final=True)
    sha = save_world_model(cfg.steps, final=True)
    state_path.unlink(missing_ok=True)
    return {"checkpoint": str(out), "sha256": sha, "val_loss": final_val, "init_val_loss": init_val,
            "seconds": round(time.time() - t0, 1)}

