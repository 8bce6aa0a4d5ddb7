# One image for every bridge service; the command picks the service (`bridge replicator`,
# `bridge snapshotter`, `bridge admin`, `bridge provision`). Build from the repository root:
#   docker build -t pg-nats-bridge .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --create-home --uid 10001 bridge
WORKDIR /app

# Dependencies in their own layer, each at the version and hash requirements.lock names:
# rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY pg_nats_bridge ./pg_nats_bridge
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps .

USER bridge
# Each service serves /health on BRIDGE_PORT (compose sets it per service).
ENV BRIDGE_PORT=8080
EXPOSE 8080 9090 9091
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['BRIDGE_PORT'], timeout=2)"
CMD ["bridge", "run"]
