#!/bin/sh
# Debian packages MuJoCo's offscreen EGL rendering needs (Mesa's software renderer; the image
# installs the same), then those only development and tests need: chromium, the headless
# browser the rollout viewer's tests drive through Playwright, and prometheus for promtool, which
# evaluates the chart's drift alert rule in tests/deploy.
# Installs only what is missing; needs root (or sudo) only when something is missing.
set -e
missing=""
for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri libglx-mesa0; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
for pkg in chromium prometheus; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
