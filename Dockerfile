# One image for every Improbable service: the bot, generate workers, trainers, beat, Flower and the
# migration step (docker-compose.yml picks the command). Plain Dockerfile syntax: the classic builder and
# BuildKit both build it, and no frontend image is pulled from a registry.
#
#   docker build -t improbable:cpu --build-arg TORCH_VARIANT=cpu .    # CPU-only PyTorch, a much smaller image
#   docker build -t improbable .                                      # CUDA PyTorch
#
# Build arguments:
#   BASE_IMAGE       the Python 3.11 image both stages start from, pinned to an exact release; any Debian-like
#                    image with `python3` and its venv module will do (scripts/docker-base-image.sh builds one
#                    locally for hosts without registry access)
#   TORCH_VARIANT    `cuda`: PyPI's torch wheel, which bundles its CUDA libraries (the host needs only the NVIDIA
#                    driver and the NVIDIA Container Toolkit); `cpu`, or a PyTorch index name such as `cu126`,
#                    `cu128` or `rocm6.4`: that build (torch==VERSION+VARIANT) from PyTorch's wheel index
#   TORCH_INDEX_URL  where that build comes from; empty: https://download.pytorch.org/whl/VARIANT (a mirror or
#                    a local index works the same)
#   PACKAGE_INDEX_URL  the index of every other package; empty: pip's default (PyPI)
#   OFFLINE          1: use no index at all, only the wheels in wheels/ (fill it with scripts/wheelhouse.sh)
# Every package but torch is installed at the exact version of requirements.lock.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ARG PACKAGE_INDEX_URL=
ARG OFFLINE=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# wheels/ holds at least its .gitignore, so this never fails; any wheels in it are used before an index
COPY wheels/ /wheels/
COPY requirements.lock ./
# torch first, by exact build, so that the package's own `torch>=...` requirement is already met by it
RUN set -eu; \
    case "$TORCH_VARIANT" in \
      cuda) spec="torch==${TORCH_VERSION}"; torch_index="" ;; \
      cpu|cu*|rocm*) spec="torch==${TORCH_VERSION}+${TORCH_VARIANT}"; \
                     torch_index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/${TORCH_VARIANT}}" ;; \
      *) echo "TORCH_VARIANT must be cuda, cpu, cuXYZ or rocmX.Y (got '${TORCH_VARIANT}')" >&2; exit 1 ;; \
    esac; \
    if [ -n "$OFFLINE" ]; then index="--no-index"; \
    else index="${PACKAGE_INDEX_URL:+--index-url $PACKAGE_INDEX_URL} ${torch_index:+--extra-index-url $torch_index}"; \
    fi; \
    echo "installing $spec ($index)"; \
    pip install $index --find-links /wheels -c requirements.lock "$spec"
# then every dependency, from pyproject.toml and the lock alone (the packages and README are empty stand-ins
# here, and the project itself is uninstalled again): this layer, and the copy of the venv below, stay cached while only
# the code changes, so a rebuild after a code change takes seconds instead of reinstalling everything
COPY pyproject.toml ./
# deploy: Flower; s3: object storage through s3fs (IMPROBABLE_STORAGE_URL=s3://bucket/prefix)
RUN set -eu; \
    touch README.md; \
    packages=$(python3 -c 'import tomllib; print(" ".join(p.rstrip("*") for p in tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["packages"]["find"]["include"]))'); \
    for package in $packages; do mkdir -p "$package" && touch "$package/__init__.py"; done; \
    if [ -n "$OFFLINE" ]; then index="--no-index"; else index="${PACKAGE_INDEX_URL:+--index-url $PACKAGE_INDEX_URL}"; fi; \
    pip install ".[deploy,s3]" $index --find-links /wheels -c requirements.lock \
 && pip uninstall --yes improbable

FROM ${BASE_IMAGE}
ARG TORCH_VARIANT=cuda
LABEL org.opencontainers.image.title="improbable" \
      org.opencontainers.image.description="Discord bot that talks in borrowed voices (small recurrent LMs)" \
      io.improbable.torch-variant="${TORCH_VARIANT}"
# an unprivileged user owns the data folder (the named volume mounted there inherits the ownership)
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/improbable improbable \
 && mkdir -p /data /corpora \
 && chown improbable:improbable /data
COPY --from=build /opt/venv /opt/venv
# the project itself, on top of its installed dependencies: no index, no build isolation (setuptools is in
# the venv, as a dependency of torch), no dependency resolution
COPY pyproject.toml README.md /tmp/src/
COPY improbable /tmp/src/improbable
COPY core /tmp/src/core
COPY service /tmp/src/service
COPY trainer /tmp/src/trainer
COPY worker /tmp/src/worker
COPY bot /tmp/src/bot
COPY db /tmp/src/db
RUN /opt/venv/bin/pip install --no-deps --no-index --no-build-isolation --no-cache-dir /tmp/src \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/python -c "import improbable.cli, improbable.health, core.metrics, service, db, worker.app, bot" \
 && rm -rf /tmp/src
# refuses to start a service with an empty or placeholder password, then runs its command
COPY scripts/docker-entrypoint.sh /usr/local/bin/improbable-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IMPROBABLE_DATA_DIR=/data \
    IMPROBABLE_LOG_FORMAT=json
WORKDIR /home/improbable
USER improbable
# 9100: Prometheus /metrics, /healthz, /readyz of bot and workers (IMPROBABLE_METRICS_PORT); 5555: Flower
EXPOSE 9100 5555
# run by sh, so that a checkout without the executable bit (e.g. on Windows) builds a working image
ENTRYPOINT ["/bin/sh", "/usr/local/bin/improbable-entrypoint"]
CMD ["improbable", "--help"]
