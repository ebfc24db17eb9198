# The one kernel-warmup image: the operator (warmup_operator), the warmer package
# (kernel_warmer) and the serving-side sitecustomize. The chart runs the operator from it,
# and the bootstrap init container the operator injects runs
# `python3 -m kernel_warmer.bootstrap` from it to copy the warmer into each Pod (the
# warmer then runs in the serving image itself).
#
#   docker build -t <registry>/kernel-warmup:0.1.0 .
#   (without Docker: `make image` builds the same image as an OCI archive)
#   helm install kernel-warmup charts/kernel-warmup --set image.repository=<registry>/kernel-warmup

FROM python:3.12-slim AS build
# The install steps live in image/install.sh, shared with `make image` (which builds the
# same layout without Docker, from a Debian rootfs: scripts/build_image.py).
COPY pyproject.toml README.md /src/
COPY operator/ /src/operator/
COPY initcontainer/ /src/initcontainer/
COPY image/install.sh /src/image/install.sh
RUN sh /src/image/install.sh /src

FROM python:3.12-slim
COPY --from=build /opt/kernel-warmup /opt/kernel-warmup
# `make image` reads ENV, USER, EXPOSE and CMD below for its image config: keep each on one line.
# Read-only root filesystem in the chart: no .pyc writes; HOME on the /tmp emptyDir.
ENV PATH=/opt/kernel-warmup/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
# Non-root and numeric, so Kubernetes' runAsNonRoot can check it (the chart sets it too).
USER 65532:65532
# 8081: liveness (/healthz), 9090: Prometheus metrics.
EXPOSE 8081 9090
CMD ["python3", "-m", "warmup_operator"]
