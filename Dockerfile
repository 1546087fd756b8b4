# bertserve images, targets of one multi-stage build (CPU torch by default, non-root):
#
#   api      the server only: torch and the serving dependencies, the default checkpoint baked in
#   trainer  api + the training stack (the `train` extra: matplotlib, tensorboard), the bundled
#            corpus, the configs and deploy/train-and-publish.sh (its entrypoint)
#   lb       nginx in front of api replicas (docker-compose.scale.yml, deploy/nginx.conf)
#
#   docker build --target api -t bertserve-api .                  # public python:3.11-slim base
#   docker build --target trainer -t bertserve-trainer .
#   docker build --build-arg BASE_IMAGE=local/python:3.11-slim \
#                --build-arg TORCH_INDEX_URL= --target api -t bertserve-api .   # offline machine
#   docker build --build-arg TORCH_SPEC=torch==2.13.0 \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 --target api .  # CUDA
#
# Stages: `os` is the base image without its package caches; `lb` adds nginx to it; `builder`
# installs and trims the virtualenv (/opt/venv); `api` is `os` + /opt/venv + the checkpoint;
# `trainer` builds on `api`. The legacy builder (docker-compose 1.29) builds every stage above its
# target, so the order matters: `lb` needs nothing below it, `trainer` everything.
ARG BASE_IMAGE=python:3.11-slim

# The base image without what its package managers left behind, nor documentation: on the offline
# build machine that is a 183 MB torch wheel (/opt/wheels, what the builder installed from), apt's
# package cache and lists, and /usr/share/{doc,man,locale} (message translations; LANG is C.UTF-8);
# the public python:3.11-slim has little of these. A layer cannot delete what a lower layer holds,
# so the remaining tree is copied into one fresh layer.
FROM ${BASE_IMAGE} AS os-trimmed
RUN rm -rf /opt/wheels /var/cache/apt/archives/*.deb /var/cache/apt/*.bin /var/lib/apt/lists/* \
           /root/.cache /usr/share/doc/* /usr/share/man/* /usr/share/locale/*

FROM scratch AS os
COPY --from=os-trimmed / /
# A fresh layer keeps no ENV of the base image: the two that python:3.11-slim sets and we rely on.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8

# nginx for docker-compose.scale.yml, from Debian on the same base (no image registry is
# reachable from the offline build machine, so no nginx image either).
FROM os AS lb
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/apt/*.bin \
              /usr/share/doc/* /usr/share/man/* /etc/nginx/sites-enabled/*
COPY deploy/nginx.conf /etc/nginx/nginx.conf
RUN nginx -t
EXPOSE 8000
# SIGQUIT is nginx's graceful stop: it finishes the requests in flight, then exits.
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]

FROM ${BASE_IMAGE} AS builder
# The CPU wheel index keeps the image ~1 GB smaller than PyPI's default CUDA build of torch.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# binutils for `strip` (below); this stage is thrown away, so it costs the images nothing.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends binutils \
    && python3 -m venv /opt/venv
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so a source change does not reinstall torch.
# Only [project].dependencies: the serving set (the training stack is the `train` extra).
COPY pyproject.toml ./
RUN /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC" \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt "$TORCH_SPEC" \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY atomicio/ atomicio/
COPY tokenization/ tokenization/
COPY model/ model/
COPY training/ training/
COPY app/ app/
RUN /opt/venv/bin/pip install --no-deps .

# Trim what serving never reads (the answers are compared with an untrimmed install by
# deploy/docker_scale_smoke.py):
#   torch/include, *.a       C++ headers and static libraries, for compiling extensions or
#                            torch.compile's C++ codegen; the images have no compiler at all
#   torch/test, torch/bin/*  C++ unit-test executables, protoc and TorchScript test models;
#                            torch_shm_manager stays (torch.multiprocessing's file_system sharing)
#   symbol tables            libtorch_cpu.so and libtorch_python.so ship unstripped (~100 MB of
#                            .symtab/.strtab); the dynamic loader reads only .dynsym, so strip
#                            changes nothing but the names a debugger or profiler shows
#   pip                      nothing installs into a running image (trainer restores it)
# Bytecode (__pycache__) stays: /opt/venv is read-only to the `bert` user, so without it every
# start would compile torch's Python again (slower cold start, for ~160 MB of .pyc).
RUN site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf "$site/torch/include" "$site/torch/test" \
    && find "$site/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} + \
    && find /opt/venv -name '*.a' -delete \
    && strip --strip-unneeded "$site/torch/lib/libtorch_cpu.so" "$site/torch/lib/libtorch_python.so" \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip \
    && /opt/venv/bin/python -c "import torch, app.main, model, tokenization; print('torch', torch.__version__)"

FROM os AS api
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 bert \
    && useradd --system --uid 10001 --gid bert --home-dir /app --shell /usr/sbin/nologin bert
WORKDIR /app
COPY --from=builder /opt/venv /opt/venv

# The default checkpoint; a models volume mounted over /models replaces it (see compose).
COPY --chown=bert:bert checkpoints/default/ /models/default/
RUN printf 'default\n' > /models/current && chown bert:bert /models /models/current

USER bert
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"

# exec form: bert-serve is PID 1 and receives SIGTERM itself (graceful drain).
ENTRYPOINT ["bert-serve"]
CMD ["--checkpoint", "/models/default", "--models-root", "/models", "--host", "0.0.0.0", "--port", "8000"]

FROM api AS trainer
USER root
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib
# The `train` extra on top of the api's virtualenv (whose packages already satisfy the rest).
COPY pyproject.toml /tmp/pyproject.toml
RUN python -m ensurepip --default-pip >/dev/null \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['optional-dependencies']['train']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/pyproject.toml \
    && python -c "import matplotlib, tensorboard, training.pretrain.cli"
# The bundled corpus, the recipes and the publish script (paths as the script expects them).
COPY configs/ configs/
COPY data/ data/
COPY deploy/train-and-publish.sh deploy/
USER bert
HEALTHCHECK NONE
ENTRYPOINT ["/app/deploy/train-and-publish.sh"]
CMD ["--config", "configs/bert_tiny.yaml", "--max-steps", "200"]
