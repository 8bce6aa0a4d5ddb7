# One image for every bridge service; the command picks the service (`bridge replicator`,
# `bridge snapshotter`, `bridge admin`, `bridge provision`). Build from the repository root:
#   docker build -t pg-nats-bridge .

# The build stage compiles the hot path (shared/compiled/_rows.pyx) into a wheel with the
# Cython and setuptools requirements-build.lock names; the image below installs that wheel and
# ships no compiler. BRIDGE_REQUIRE_COMPILED makes a failed compile fail the build.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 BRIDGE_REQUIRE_COMPILED=1
# gcc, and Python's headers where the image has none of its own.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
    $(python -c "import os, sysconfig; print('' if os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else 'python3-dev')") \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements-build.lock ./
RUN pip install --require-hashes -r requirements-build.lock
COPY pyproject.toml setup.py README.md ./
COPY pg_nats_bridge ./pg_nats_bridge
COPY shared ./shared
COPY services ./services
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m zipfile -l /wheels/*.whl | grep -q "shared/compiled/_rows.*\.so"

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --create-home --uid 10001 bridge
WORKDIR /app

# Dependencies in their own layer, each at the version and hash requirements.lock names:
# rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY --from=build /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels

USER bridge
# Each service serves /health on BRIDGE_PORT (compose sets it per service).
ENV BRIDGE_PORT=8080
EXPOSE 8080 9090 9091
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['BRIDGE_PORT'], timeout=2)"
CMD ["bridge", "run"]
