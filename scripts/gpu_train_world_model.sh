#!/usr/bin/env bash
# A short GPU burst of the world model's training (issue 15), for a machine with an NVIDIA GPU and
# a CUDA torch but without MetaWorld or the episodes: the data travels as one packed latent file.
#
# Where the episodes are (any machine after `make setup` and `wmpo collect-play`):
#     wmpo export latents --data datasets/play-v2/train --autoencoder checkpoints/world-model \
#         --out .gpu/train.npz
#     wmpo export latents --data datasets/play-v2/heldout --autoencoder checkpoints/world-model \
#         --out .gpu/heldout.npz
# On the GPU machine, from the repository root (torch, numpy, safetensors and tqdm are all it needs):
#     scripts/gpu_train_world_model.sh PACK_DIR OUT_DIR [BUDGET_SECONDS]
#
# The runs named in RUNS (default "v3 sf") share the GPU for BUDGET_SECONDS (default 420) each,
# at batch 256 under bf16 autocast; after 60 steps each run's length, and with it the wsd
# schedule's decay, is fixed to what fits:
#   v3:   the "play" DiT (3.3M) fine-tuned from INIT (default checkpoints/world-model-v3);
#   sf:   the same, with self-forcing: a fraction SF (0.5) of the windows continue from context
#         the EMA model imagined itself (SF_STEPS=4 sampler steps): the control is v3;
#   wide: the "play-wide" DiT (7.3M, 1.5x wider) from scratch: the capacity experiment.
# Each run's export (usable fp16 world model, and the compact resume state of all but wide) is
# replaced every 1000 steps and packed into OUT_DIR/<name>.tar at the end (the device tool
# returns few files); OUT_DIR/<name>.jsonl is its log.
set -uo pipefail
PACK="${1:?packed latent directory (train.npz, heldout.npz)}"
OUT="${2:?output directory}"
BUDGET="${3:-420}"
PY="${PY:-python3}"
INIT="${INIT:-checkpoints/world-model-v3}"
NAMES="${RUNS:-v3 sf}"
# Two trainers share the machine's cores: with every core's thread each, their CPU work (the
# windows, the kernel launches) slowed to ~1.9 s a step on the first try (GPU idle).
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
RUNS=/tmp/wmpo-gpu-train
rm -rf "$RUNS"
mkdir -p "$RUNS"

# Where a step's time goes (one process, before the runs): the windows, the copy, fwd + bwd.
"$PY" - "$PACK/train.npz" <<'EOF2'
import sys, time
import torch
from wmpo.data.latents import LatentEpisodes
from wmpo.models.flow import flow_matching_loss
from wmpo.models.video_dit import PRESETS, VideoDiT, VideoDiTConfig
from dataclasses import asdict
data, _ = LatentEpisodes.load_packed(sys.argv[1])
gen = torch.Generator().manual_seed(0)
model = VideoDiT(VideoDiTConfig(**{**asdict(PRESETS["play"]), "latent_channels": 4, "latent_size": 16})).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
times = {"sample": [], "to": [], "fwd+bwd+opt": []}
for i in range(8):
    t = time.perf_counter(); b = data.sample(256, 8, gen); times["sample"].append(time.perf_counter() - t)
    t = time.perf_counter(); b = b.to("cuda"); torch.cuda.synchronize(); times["to"].append(time.perf_counter() - t)
    t = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = flow_matching_loss(model, b, gen, moving_weight=2.0)
    opt.zero_grad(); loss.backward(); opt.step(); torch.cuda.synchronize()
    times["fwd+bwd+opt"].append(time.perf_counter() - t)
print("step profile, ms (median of 5 after 3 warm-ups):",
      {k: round(1000 * sorted(v[3:])[2], 1) for k, v in times.items()}, "threads", torch.get_num_threads())
EOF2

train() {  # name, then the run's own arguments
    local name=$1
    shift
    "$PY" -m wmpo.cli train world-model --data "$PACK/train.npz" --heldout-data "$PACK/heldout.npz" \
        --autoencoder checkpoints/world-model --out "$RUNS/$name" --export "$RUNS/export/$name" \
        --device "${DEVICE:-cuda}" --time-budget "$BUDGET" --batch-size 256 --warmup 300 --lr-schedule wsd \
        --steps 1000000 --moving-weight 2 --moving-threshold 0.1 --save-every 1000 --eval-every 500 \
        --log-every 100 --val-batch 16 --data-command "wmpo collect-play --out datasets/play-v2 --scale 1" \
        "$@" > "$RUNS/$name.out" 2>&1
}

declare -A PIDS
for name in $NAMES; do
    case $name in
        v3) train v3 --init "$INIT" --lr 4e-4 & ;;
        sf) train sf --init "$INIT" --lr 4e-4 --self-forcing "${SF:-0.5}" --self-forcing-steps "${SF_STEPS:-4}" & ;;
        wide) train wide --preset play-wide --lr 4e-4 & ;;
        *) echo "unknown run $name (v3, sf, wide)"; exit 2 ;;
    esac
    PIDS[$name]=$!
done
sleep 90
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
STATUS=0
for name in $NAMES; do
    wait "${PIDS[$name]}"
    code=$?
    echo "exit code: $name $code"
    [ "$code" = 0 ] || STATUS=1
    tail -n 30 "$RUNS/$name.out"
    cp "$RUNS/$name/train_log.jsonl" "$OUT/$name.jsonl" 2>/dev/null || true
    [ -d "$RUNS/export/$name" ] || continue
    # wide: the model alone (its resume state would pass the tool's 16 MiB per file)
    if [ "$name" = wide ]; then rm -f "$RUNS/export/$name"/resume.*; fi
    tar -C "$RUNS/export" -cf "$OUT/$name.tar" "$name"
done
ls -la "$OUT"
exit $STATUS
