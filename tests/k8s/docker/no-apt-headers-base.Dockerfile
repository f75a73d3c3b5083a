# A base whose Python has no headers and whose apt cannot add them (no package sources left), but which
# has g++: the project Dockerfile must stop at its first step with its one-line reason.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /etc/apt/sources.list /etc/apt/sources.list.d /var/lib/apt/lists/*
