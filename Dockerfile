# syntax=docker/dockerfile:1
# chat-api image: `chat-api serve` in a virtual environment on the slim Python runtime image.
# Build:  docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" -t chat-api .
# Runs as UID/GID 10001 with a read-only root filesystem (Kubernetes mounts an emptyDir at /tmp).
# See docs/deploy.md.

# ---- build: the wheel, then a venv holding it and its pinned dependencies ------------------------
# Both stages use the same base image, so the venv's interpreter path (/usr/local/bin) is the same.
FROM python:3.11-slim-trixie AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md requirements-lock.txt ./
COPY chat_api/ chat_api/
COPY migrations/ migrations/

# The wheel alone (the project is pure Python; hatchling comes in an isolated build environment).
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# The venv has no pip of its own: the base image's pip installs into it (--python). Dependencies
# come as binary wheels only (no compiler anywhere) at the versions CI tests (the lock file). No
# extras: the embedded PostgreSQL (extra `embedded`) never enters the image.
# Bytecode is compiled here with unchecked hashes: the root filesystem is read-only at run time, so
# Python could never write it, and it must not look at source timestamps that COPY may change.
RUN python -m venv --without-pip /opt/chat-api \
    && python -m pip --python /opt/chat-api/bin/python install \
        --only-binary=:all: --no-compile -c requirements-lock.txt /wheels/chat_api-*.whl \
    && python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/chat-api/lib

# ---- runtime -----------------------------------------------------------------------------------
FROM python:3.11-slim-trixie AS runtime

ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/product-team/chat-api

LABEL org.opencontainers.image.title="chat-api" \
      org.opencontainers.image.description="Async HTTP chat API on PostgreSQL with a lossless SSE event stream" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# The base image ships its standard library without bytecode; compile it once here so that start-up
# on a read-only root filesystem does not recompile it in memory every time. A passwd entry for the
# numeric user keeps libraries that look up the home directory (asyncpg's ~/.pgpass) quiet.
RUN python -m compileall -q -j 0 --invalidation-mode unchecked-hash /usr/local/lib/python3.11 \
    && groupadd --system --gid 10001 chat-api \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin chat-api

COPY --from=build /opt/chat-api /opt/chat-api

ENV PATH=/opt/chat-api/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

# uvicorn as PID 1 handles SIGTERM itself: readiness turns 503, streams end, requests drain (20 s).
CMD ["chat-api", "serve"]
