# The training image: this project on an official PyTorch CUDA runtime image, run as a non-root user.
#
#   docker build -t pretrain-service:latest .
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:<version>-cuda<x.y>-cudnn9-runtime -t ... .
#
# Needs BuildKit (the default builder since Docker 23) for the RUN --mount lines.
# The base image brings Python and torch==2.13.0 (the version pyproject.toml pins); any base with
# `python`, `pip`, apt and that torch works. fastBPE is compiled in the build stage, so no compiler
# reaches the final image. Dependencies are installed before the source is copied: editing the code
# rebuilds only the last, small layers.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
# Wheels of every dependency but torch (the base image has it), then fastBPE, whose sdist builds only
# without build isolation and with Cython present.
RUN python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if re.match(r'torch\b', d) is None))" > /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels/deps -r /tmp/requirements.txt \
 && pip install cython wheel setuptools \
 && pip wheel --wheel-dir /wheels/deps --no-deps --no-build-isolation fastBPE==0.1.0
COPY README.md ./
COPY data_pipeline ./data_pipeline
COPY pretrain ./pretrain
COPY export ./export
RUN --mount=type=cache,target=/root/.cache/pip pip wheel --wheel-dir /wheels/project --no-deps .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="pretrain-service" \
      org.opencontainers.image.description="Transformer LM pretraining: data pipeline, DDP trainers, exports"
# The Kubernetes manifests run the pods as this user (runAsUser: 10001).
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --create-home --shell /usr/sbin/nologin app
RUN --mount=type=bind,from=build,source=/wheels/deps,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl
RUN --mount=type=bind,from=build,source=/wheels/project,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl
COPY configs /app/configs
WORKDIR /app
# PYTHONSAFEPATH: `python -m pretrain.tlm` imports the installed package, never a directory of the
# same name in the working directory (pods run in the data volume).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1
USER 10001:10001
