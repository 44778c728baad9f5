# Stowage: one image for every role. The default command serves the HTTP API; the same image
# runs `stowage worker` and `stowage migrate` (see docker-compose.yml).
#
#   docker build -t stowage .
#   docker run --rm -p 8000:8000 -e STOWAGE_DATABASE_URL=... -e STOWAGE_REDIS_URL=... stowage
#
# Both stages use the same base image: the venv copied from the builder points at its
# interpreter (/usr/local/bin/python3.11).

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the project itself, non-editable (runtime dependencies only, no test extra). The wheel
# carries the dashboard's files and the SQL migrations; `stowage check` loads every module, the
# API, each template, static file and migration, so an incomplete install fails the build.
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install . \
 && cd / && stowage check


FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 stowage \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin stowage

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Filesystem storage (the default STOWAGE_CACHE_URL/STORE_URL, file://./var/...) lives here;
# mount a volume on /app/var to keep it.
RUN mkdir -p /app/var \
 && chown 10001:10001 /app/var

USER 10001:10001

EXPOSE 8000

# No curl in the image: the venv's Python does the request.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["stowage", "serve", "--host", "0.0.0.0", "--port", "8000"]
