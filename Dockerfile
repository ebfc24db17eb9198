# The one kernel-warmup image: the operator (warmup_operator), the warmer package
# (kernel_warmer) and the serving-side sitecustomize. The chart runs the operator from it,
# and the bootstrap init container the operator injects runs
# `python3 -m kernel_warmer.bootstrap` from it to copy the warmer into each Pod (the
# warmer then runs in the serving image itself).
#
#   docker build -t <registry>/kernel-warmup:0.1.0 .
#   helm install kernel-warmup charts/kernel-warmup --set image.repository=<registry>/kernel-warmup

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY initcontainer/ initcontainer/
# A regular (not editable) install of both import packages and the operator's pinned deps.
RUN pip install --no-cache-dir --root-user-action=ignore --prefix=/install ".[operator]"

FROM python:3.12-slim
COPY --from=build /install /usr/local
# Not part of the wheel: kernel_warmer.bootstrap looks for it here.
COPY initcontainer/serving_site/sitecustomize.py /opt/kernel-warmup/serving_site/sitecustomize.py
# Read-only root filesystem in the chart: no .pyc writes; HOME on the /tmp emptyDir.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
# Non-root and numeric, so Kubernetes' runAsNonRoot can check it (the chart sets it too).
USER 65532:65532
# 8081: liveness (/healthz), 9090: Prometheus metrics.
EXPOSE 8081 9090
CMD ["python3", "-m", "warmup_operator"]
