# The image a cluster runs studies in: every Ray node (KubeRay's head and workers, see
# docs/cluster.md) starts from it, and Ray Jobs run `python -m tuner run` with its `python`.
#   docker build -t REGISTRY/tuner:0.1.0 . && docker push REGISTRY/tuner:0.1.0
#
# Every package comes at the version requirements.lock pins, the lock `make test` installs from.
# CUDA: PyPI's torch wheel for Linux x86_64 is a CUDA build; torch 2.13.0's is CUDA 13.0 (it
# requires cuda-toolkit==13.0.3 and cuDNN 9 as pip packages, pinned exactly by torch itself),
# so the base is CUDA 13.0's runtime. The lock pins torch==2.13.0: on this project's CPU-only
# machines that resolves to the local 2.13.0+cpu wheel, here (PyPI only) to the CUDA 13.0 one.
# Changing the torch pin means checking which CUDA its PyPI wheel needs (tests/test_dockerfile.py).
#
# The base should be pinned by digest, so that a re-pushed tag cannot change what is built:
#   FROM nvidia/cuda:${CUDA}-runtime-ubuntu24.04@sha256:<digest>
# with the digest that `docker buildx imagetools inspect nvidia/cuda:13.0.0-runtime-ubuntu24.04`
# prints (the multi-platform index's "Digest:"), read from the registry, never copied from
# elsewhere. It is not pinned yet: the machines this project is built on cannot reach a registry
# to read it (tests/test_dockerfile.py accepts the tag alone or the tag with a sha256 digest).
ARG CUDA=13.0.0
FROM nvidia/cuda:${CUDA}-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# wget: KubeRay's health probes call it in the Ray containers
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv wget ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# `python`, `ray` and `tuner` first on PATH, for `ray start` and for Ray Jobs' entrypoints
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/tuner
COPY pyproject.toml requirements.lock README.md ./
COPY tuner tuner
COPY trainables trainables
COPY search_spaces search_spaces
COPY dashboards dashboards
# the `cluster` extra: the PostgreSQL driver and boto3 for S3
RUN pip install -c requirements.lock '.[cluster]' \
    && python -c "import torch, ray, tuner; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Ray, its jobs and the trials run as an unprivileged user, not root: a job runs whatever code it
# was sent, and the installed packages (root's, in /opt/venv) stay read-only to it. Numeric, so
# that Kubernetes' `runAsNonRoot: true` can check it (the base's `ubuntu` user has uid 1000).
RUN useradd --create-home --uid 1001 --user-group --shell /bin/bash tuner
USER 1001:1001
WORKDIR /home/tuner
