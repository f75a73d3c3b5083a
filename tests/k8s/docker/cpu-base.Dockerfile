# A CPU stand-in for the PyTorch CUDA base image, for the Docker end-to-end test: Debian's python3,
# without headers or the venv module (the project Dockerfile must add them), and the CPU torch wheel
# in its system site-packages, which the image's environment (--system-site-packages) uses as it uses
# conda's torch in pytorch/pytorch. The build context holds the wheel and the CA bundle pip needs
# where a proxy re-signs TLS (PIP_CERT, inherited by the project's build).
ARG DEBIAN_IMAGE=local/debian:bookworm

FROM ${DEBIAN_IMAGE} AS torch
COPY ca-certificates.crt /etc/ssl/pip-ca.crt
COPY torch-*.whl /tmp/
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && PIP_CERT=/etc/ssl/pip-ca.crt pip3 install --no-cache-dir --break-system-packages /tmp/torch-*.whl

FROM ${DEBIAN_IMAGE}
COPY ca-certificates.crt /etc/ssl/pip-ca.crt
ENV PIP_CERT=/etc/ssl/pip-ca.crt
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=torch /usr/local /usr/local
