#!/bin/sh
# LeRobot's reader (lerobot-dataset 0.4.4, module ledataset) on an exported dataset, in a side venv:
# it cannot be installed in .venv (numpy < 2.3, huggingface-hub < 0.36), and it needs torchvision,
# whose PyPI wheel is built for CUDA torch. The side venv borrows .venv's torch and gets a bare
# `torchvision` package (ledataset imports the name; the video backend is PyAV, see the .py).
#   sh scripts/lerobot_reader_check.sh LEROBOT_DIR WMPO_DIR
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-/tmp/ledataset-venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$(readlink -f "$ROOT/.venv/bin/python")" -m venv "$VENV"
    "$VENV/bin/pip" install -q lerobot-dataset==0.4.4
    SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$ROOT/.venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$SITE/zz_wmpo_venv.pth"
    mkdir -p "$VENV/shim/torchvision/transforms"
    echo "from . import transforms  # noqa: F401" > "$VENV/shim/torchvision/__init__.py"
    : > "$VENV/shim/torchvision/transforms/__init__.py"
fi
PYTHONPATH="$VENV/shim" HF_HUB_OFFLINE=1 "$VENV/bin/python" "$ROOT/scripts/lerobot_reader_check.py" "$@"
