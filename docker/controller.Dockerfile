# syntax=docker/dockerfile:1
# The controller image: the FastAPI controller (`hyctas controller`) and the schema migration
# step (`hyctas db upgrade`). Slim: Python 3.11 and the CPU build of torch, no CUDA (the
# package imports torch, the controller never runs a network on a GPU).
#
# Build from the repository root (docker/controller.Dockerfile.dockerignore applies):
#   docker build -f docker/controller.Dockerfile -t localhost/hyctas-controller:dev .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# uid/gid 1000 in both images: they share the artifact volume (/var/lib/hyctas).
RUN groupadd --gid 1000 hyctas \
    && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin hyctas \
    && python -m venv /opt/venv \
    && mkdir -p /var/lib/hyctas/artifacts /var/lib/hyctas/data \
    && chown -R hyctas:hyctas /var/lib/hyctas

# 1. torch first, pinned, CPU build: the Linux wheel on PyPI is the multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# 2. Every other dependency of '.[services,export]', exactly as docker/requirements.lock pins it
#    (hashes checked, nothing resolved): this layer stays cached until the lock changes, and a
#    release made overnight never changes an image. `make lock` writes the lock.
WORKDIR /app
COPY docker/requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

# 3. The source, installed without dependencies (all of them are in the layer above; setuptools,
#    the build backend, too), then checked for consistency.
COPY pyproject.toml README.md ./
COPY hyctas_core ./hyctas_core
COPY services ./services
COPY hyctas_cli ./hyctas_cli
RUN pip install --no-deps --no-build-isolation . && pip check && rm -rf build

USER hyctas
WORKDIR /home/hyctas
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["hyctas", "controller", "--host", "0.0.0.0", "--port", "8000"]
