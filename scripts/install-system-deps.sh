#!/usr/bin/env bash
# Debian packages the napari tests need: an X server (Xvfb) and the OpenGL/Qt libraries.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libopengl0 libdbus-1-3 \
    libfontconfig1 libglib2.0-0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 \
    libxcb-xfixes0 libxcb-cursor0 libxcursor1 >/dev/null
