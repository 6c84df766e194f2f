# syntax=docker/dockerfile:1
# The worker image: CUDA base, the CUDA build of torch 2.13.0, Ray. One image for three roles:
#   - `hyctas worker` (default command): claims jobs from Redis and drives Ray actors;
#   - the Ray head (`ray start --head`), which also runs Ray Serve (HTTP on port 8000);
#   - a Ray GPU worker (`ray start --address=HEAD:6379`), locally or under KubeRay.
# KubeRay replaces the command with its own `ray start`, run through /bin/bash, and probes the
# node with wget: both are installed below.
#
# Build from the repository root (docker/worker.Dockerfile.dockerignore applies):
#   docker build -f docker/worker.Dockerfile -t localhost/hyctas-ray:dev .
# A CPU-only variant (a laptop): --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

# The PyTorch index whose CUDA build matches the base image (cu128: CUDA 12.8).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python 3.11 from Ubuntu 22.04 (universe); bash and wget for KubeRay's command and probes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates wget bash \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 hyctas \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash hyctas \
    && python3.11 -m venv /opt/venv \
    && echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/hyctas-venv.sh \
    && mkdir -p /var/lib/hyctas/artifacts /var/lib/hyctas/data \
    && chown -R hyctas:hyctas /var/lib/hyctas

# 1. torch first, pinned, the CUDA build from the PyTorch index.
RUN pip install --index-url ${TORCH_INDEX_URL} torch==2.13.0

# 2. Every other dependency of '.[services,export]' (Ray Serve and Tune, ONNX Runtime for
#    serving), exactly as docker/requirements.lock pins it (hashes checked, nothing resolved):
#    cached until the lock changes. The lock pins Ray, so the Ray nodes and `hyctas worker` (a Ray
#    client) always run the same version, the one `rayVersion` in deploy/k8s names.
WORKDIR /app
COPY docker/requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

# 3. The source, installed without dependencies, then checked for consistency.
COPY pyproject.toml README.md ./
COPY hyctas_core ./hyctas_core
COPY services ./services
COPY hyctas_cli ./hyctas_cli
RUN pip install --no-deps --no-build-isolation . && pip check && rm -rf build

USER hyctas
WORKDIR /home/hyctas
# 9101 worker metrics; Ray: 6379 GCS, 10001 client, 8265 dashboard, 8080 metrics, 8000 Serve.
EXPOSE 9101 6379 10001 8265 8080 8000
# The check of the default role (`hyctas worker`); the Ray roles override it (docker-compose.yml).
HEALTHCHECK --interval=20s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9101/metrics', timeout=4)"]
CMD ["hyctas", "worker"]
