# The training image: this project on an official PyTorch CUDA runtime image, run as a non-root user.
#
#   docker build -t pretrain-service:latest .
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:<version>-cuda<x.y>-cudnn9-runtime -t ... .
#
# Builds with BuildKit and with the legacy builder alike (no RUN --mount). The base image brings
# `python3` and torch==2.13.0 (the version pyproject.toml pins) and apt; the build adds what fastBPE's
# compilation needs when the base lacks it (g++, and on a Debian python3, python3-dev and python3-venv)
# and stops with one line if this Python still has no headers. Everything else is installed into a
# virtual environment that sees the base's torch; only that environment reaches the final image, so
# no compiler or header does. Dependencies are installed before the source is copied: editing the
# code rebuilds only the last, small layers. tests/k8s/test_docker_image.py builds it with the legacy
# builder on a Debian base without headers and runs the Kubernetes jobs' pods from it.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml /src/
RUN probe='import ensurepip, pathlib, sys, sysconfig; sys.exit(not pathlib.Path(sysconfig.get_paths()["include"], "Python.h").is_file())'; \
    apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && { python3 -c "$probe" 2>/dev/null || apt-get install -y --no-install-recommends python3-dev python3-venv || true; } \
 && rm -rf /var/lib/apt/lists/* \
 && { python3 -c "$probe" 2>/dev/null || { echo "error: $(command -v python3) in BASE_IMAGE has no Python.h (or no venv module) and apt could not add them (python3-dev, python3-venv): use a base whose Python has its headers" >&2; exit 1; }; }
# --system-site-packages: the environment uses the base image's torch instead of installing another.
# The environment gets its own torchrun: the base's runs the base's Python, and the ranks it starts
# (with its interpreter) could not import this project, which only the environment has.
RUN python3 -m venv --system-site-packages /opt/venv \
 && printf '#!/opt/venv/bin/python\nimport sys\nfrom torch.distributed.run import main\nsys.exit(main())\n' > /opt/venv/bin/torchrun \
 && chmod 755 /opt/venv/bin/torchrun
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Every dependency but torch, then fastBPE, whose sdist builds only without build isolation and with
# Cython present.
RUN python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if re.match(r'torch\b', d) is None))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install cython wheel setuptools \
 && pip install --no-build-isolation fastBPE==0.1.0 \
 && pip uninstall -y cython
COPY README.md ./
COPY data_pipeline ./data_pipeline
COPY pretrain ./pretrain
COPY export ./export
RUN pip install --no-deps .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="pretrain-service" \
      org.opencontainers.image.description="Transformer LM pretraining: data pipeline, DDP trainers, exports"
# The Kubernetes manifests run the pods as this user (runAsUser: 10001).
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
COPY configs /app/configs
WORKDIR /app
# PYTHONSAFEPATH: `python -m pretrain.tlm` imports the installed package, never a directory of the
# same name in the working directory (pods run in the data volume).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1
USER 10001:10001
