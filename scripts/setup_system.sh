#!/usr/bin/env bash
# System packages for offscreen MuJoCo rendering on the CPU (Mesa's software renderer):
#   EGL (MUJOCO_GL=egl, the default): libegl1 libegl-mesa0 libgl1-mesa-dri
#   OSMesa (MUJOCO_GL=osmesa, the fallback when no libEGL is found): libosmesa6
# Idempotent: installs only what is missing (apt-get update runs only then). Needs root or sudo.
set -euo pipefail

PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup_system: rendering packages already installed (${PACKAGES[*]})"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup_system: need root to install ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "setup_system: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
