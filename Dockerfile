# syntax=docker/dockerfile:1
#
# The Rakshit Pay image: the project and its `ml` extra installed from pyproject.toml, with
# `rakshit` on PATH; every service in docker-compose.yml runs from it.
#
#   docker build -t rakshit-pay:local .
#   docker run --rm rakshit-pay:local rakshit --help
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=kafka:9092 rakshit-pay:local rakshit worker
#
# There is no ENTRYPOINT: the command names the program (docker-compose.yml's commands are
# lists starting with "rakshit"), so `docker run ... rakshit-pay:local bash` also works.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# build: a virtualenv at /opt/venv holding the project and its dependencies.
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A C toolchain for dependencies PyPI has no wheel for on some platforms (faust-streaming has
# none for aarch64; without a compiler it would install without its Cython speedups). Only this
# stage has it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, read from pyproject.toml alone, so a code change does not reinstall
# numpy, pyarrow and friends: the core dependencies and the `ml` extra, since the worker and the
# API import LightGBM and river (and pandas with them) when they start. tests/test_image.py
# builds this environment from these lines without Docker and imports what each service loads.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['ml'], sep=chr(10))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the project itself (.dockerignore keeps .venv, .git, .rakshit, artifacts and caches out),
# and a build that fails here if a service's modules cannot be imported.
COPY . .
RUN pip install . \
 && rakshit --help > /dev/null \
 && cd / && python -c "import streams.admin, streams.worker.app, streams.api.server, streams.simulator.producer"

# ---------------------------------------------------------------------------------------------
# runtime: the virtualenv on a clean slim image, run as an unprivileged user.
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAKSHIT_HOME=/var/lib/rakshit

# RAKSHIT_HOME holds the worker's Faust state; the default (next to the sources) would land in
# site-packages here.
RUN groupadd --system --gid 10001 rakshit \
 && useradd --system --uid 10001 --gid rakshit --create-home --home-dir /home/rakshit rakshit \
 && mkdir -p /var/lib/rakshit \
 && chown rakshit:rakshit /var/lib/rakshit

# LightGBM's wheel links the system's OpenMP runtime (libgomp.so.1), which the slim image lacks
# (the build stage has it through build-essential); tests/test_image.py checks that every system
# library the services load is in the slim image or installed here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv

USER rakshit
WORKDIR /home/rakshit

# The worker's Prometheus metrics (RAKSHIT_METRICS_PORT).
EXPOSE 9108

CMD ["rakshit", "--help"]
