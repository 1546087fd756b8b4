# bertserve API image: CPU torch by default, non-root, default checkpoint baked in.
#
#   docker build -t bertserve .                                   # public python:3.11-slim base
#   docker build --build-arg BASE_IMAGE=local/python:3.11-slim \
#                --build-arg TORCH_INDEX_URL= -t bertserve .      # offline build machine
#   docker build --build-arg TORCH_SPEC=torch==2.13.0 \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .  # CUDA
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The CPU wheel index keeps the image ~1 GB smaller than PyPI's default CUDA build of torch.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib

RUN python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 bert \
    && useradd --system --uid 10001 --gid bert --home-dir /app --shell /usr/sbin/nologin bert

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a source change does not reinstall torch.
COPY pyproject.toml ./
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC" \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "$TORCH_SPEC" \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY atomicio/ atomicio/
COPY tokenization/ tokenization/
COPY model/ model/
COPY training/ training/
COPY app/ app/
COPY configs/ configs/
# The bundled corpus and the publish script serve the compose `trainer` service.
COPY data/ data/
COPY deploy/ deploy/
RUN pip install --no-deps . && rm -rf build *.egg-info

# The default checkpoint; a models volume mounted over /models replaces it (see compose).
COPY checkpoints/default/ /models/default/
RUN printf 'default\n' > /models/current && chown -R bert:bert /models

USER bert
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"

# exec form: bert-serve is PID 1 and receives SIGTERM itself (graceful drain).
ENTRYPOINT ["bert-serve"]
CMD ["--checkpoint", "/models/default", "--models-root", "/models", "--host", "0.0.0.0", "--port", "8000"]
