#!/bin/sh
# The install steps of the kernel-warmup image: the one source for both builds.
#   Dockerfile:  RUN sh /src/image/install.sh /src          (in python:3.12-slim)
#   make image:  chroot <rootfs> sh /src/image/install.sh /src   (scripts/build_image.py,
#                in a Debian rootfs made by debootstrap)
# Runs as root inside the image being built, with python3 and its venv module. Installs
# the operator and the warmer (a regular, not editable, install with the operator's pinned
# dependencies; no torch: the warmer runs in the serving image) into a venv, and the
# serving-side sitecustomize where kernel_warmer.bootstrap looks for it.
set -eu
src=${1:?usage: install.sh SRC (the folder holding pyproject.toml)}
prefix=/opt/kernel-warmup

python3 -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
    --quiet "$src[operator]"
mkdir -p "$prefix/serving_site"
cp "$src/initcontainer/serving_site/sitecustomize.py" "$prefix/serving_site/sitecustomize.py"
chmod -R a+rX "$prefix"
