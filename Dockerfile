# Throttler service image: the API (`throttler serve`) and workers (`throttler worker`).
#
#   docker build -t throttler .
#   docker run --rm -p 127.0.0.1:8080:8080 -e REDIS_URL=redis://redis:6379/0 throttler
#
# Settings are environment variables (see README.md and `throttler serve --help`). The image
# has no embedded Redis: REDIS_URL must point at one.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs to build (the rest is excluded by .dockerignore too).
COPY pyproject.toml README.md LICENSE ./
COPY api ./api
COPY core ./core
COPY schemas ./schemas
COPY throttler ./throttler
COPY workers ./workers
RUN pip install . \
    && rm -rf /app/build /app/*.egg-info

# Run as an unprivileged user with no home and no shell.
RUN groupadd --system --gid 10001 throttler \
    && useradd --system --uid 10001 --gid throttler --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin throttler
USER 10001:10001

# In a container the service must listen on every interface: publish the ports on
# 127.0.0.1 of the host (docker run -p 127.0.0.1:8080:8080) to keep them local.
ENV BIND_ADDRESS=0.0.0.0:8080 \
    WORKER_METRICS_HOST=0.0.0.0

# 8080: the HTTP API (and /metrics); 9464: a `throttler worker`'s metrics.
EXPOSE 8080 9464

# The API's liveness (a worker container overrides it with `throttler worker --check`).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('BIND_ADDRESS', '0.0.0.0:8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2)"]

# Workers run separately (`throttler worker`), so the API runs without its in-process one.
CMD ["throttler", "serve", "--no-worker"]
