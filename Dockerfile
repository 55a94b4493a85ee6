# syntax=docker/dockerfile:1
# One image for every Improbable service: the bot, generate workers, trainers, beat, Flower and the
# migration step (docker-compose.yml picks the command).
#
#   docker build -t improbable .                                      # CUDA PyTorch (default)
#   docker build -t improbable:cpu --build-arg TORCH_VARIANT=cpu .    # CPU-only PyTorch, a much smaller image
#
# TORCH_VARIANT: `cuda` installs PyPI's torch wheel, which bundles its CUDA libraries (the host needs only
# the NVIDIA driver and the NVIDIA Container Toolkit); `cpu`, or a PyTorch index name such as `cu126`,
# `cu128` or `rocm6.4`, installs from that PyTorch wheel index instead.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, so that the package's own `torch>=...` requirement is already met by the chosen variant
RUN case "$TORCH_VARIANT" in \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      cpu|cu*|rocm*) pip install --index-url "${TORCH_INDEX_URL}/${TORCH_VARIANT}" "torch==${TORCH_VERSION}" ;; \
      *) echo "TORCH_VARIANT must be cuda, cpu, cuXYZ or rocmX.Y (got '${TORCH_VARIANT}')" >&2; exit 1 ;; \
    esac
WORKDIR /src
COPY pyproject.toml README.md ./
COPY improbable ./improbable
COPY core ./core
COPY service ./service
COPY trainer ./trainer
COPY worker ./worker
COPY bot ./bot
COPY db ./db
# deploy: Flower; s3: object storage through s3fs (IMPROBABLE_STORAGE_URL=s3://bucket/prefix)
RUN pip install ".[deploy,s3]" \
 && python -c "import improbable.cli, improbable.health, core.metrics, service, db, worker.app, bot"

FROM python:${PYTHON_VERSION}-slim
ARG TORCH_VARIANT=cuda
LABEL org.opencontainers.image.title="improbable" \
      org.opencontainers.image.description="Discord bot that talks in borrowed voices (small recurrent LMs)" \
      io.improbable.torch-variant="${TORCH_VARIANT}"
# an unprivileged user owns the data folder (the named volume mounted there inherits the ownership)
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/improbable improbable \
 && mkdir -p /data /corpora \
 && chown improbable:improbable /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IMPROBABLE_DATA_DIR=/data \
    IMPROBABLE_LOG_FORMAT=json
WORKDIR /home/improbable
USER improbable
# 9100: Prometheus /metrics, /healthz, /readyz of bot and workers (IMPROBABLE_METRICS_PORT); 5555: Flower
EXPOSE 9100 5555
CMD ["improbable", "--help"]
