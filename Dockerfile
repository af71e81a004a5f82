# llmflow: one image for the Prefect server, the Prefect worker that runs the flows, the Dask
# scheduler and workers of the data flow, and the serving endpoint (see docker-compose.yml and docs/operations.md).
#
#   docker build -t llmflow .                                  # CPU torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t llmflow:gpu .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LLMFLOW_HOME=/data/llmflow \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# libpq: the psycopg driver of the feedback store reaches PostgreSQL through it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq5 \
    && rm -rf /var/lib/apt/lists/*

# torch FIRST, from the PyTorch CPU index. Installing llmflow first would pull the default torch
# from PyPI, the CUDA build with several GB of NVIDIA libraries. pyproject.toml asks for a range
# (torch>=2.4), so the `pip install .` below sees torch satisfied and keeps this CPU build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" torch

WORKDIR /app
COPY pyproject.toml README.md ./
COPY llmflow ./llmflow
COPY model ./model
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
COPY configs ./configs
RUN pip install ".[dask]" \
    && useradd --create-home --uid 1000 llmflow \
    && mkdir -p /data/llmflow \
    && chown -R llmflow /data/llmflow

USER llmflow
# 4200: Prefect server and UI; 8000: the serving endpoint; 8080: the worker's healthcheck.
EXPOSE 4200 8000 8080
CMD ["llmflow", "--help"]
