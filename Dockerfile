# ingrain-server for CPU hosts: ONNX Runtime and OpenVINO, no torch (serving only; build models
# with ingrain-build elsewhere, or in the Kubernetes Job, and mount or fetch the engines).
#   docker build -t ingrain-server:cpu .
#   docker run --read-only --tmpfs /tmp -p 8686:8686 -p 8687:8687 \
#     -v "$PWD/engines:/engines:ro" ingrain-server:cpu --preload sentence-transformers/all-MiniLM-L6-v2
# Python 3.11: the version .ci/run installs this same script with.
FROM python:3.11-slim-bookworm AS install

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md cli.py ./
COPY api ./api
COPY builder ./builder
COPY runtime ./runtime
COPY scripts/install-cpu.sh ./scripts/install-cpu.sh

# The same install .ci/run performs (scripts/install-cpu.sh), into a venv copied below.
RUN python -m venv /opt/ingrain \
    && bash scripts/install-cpu.sh /opt/ingrain/bin/pip

FROM python:3.11-slim-bookworm

# Read-only root friendly: no bytecode writes, and everything the server writes (its run
# directory: metrics files and the loaded-model set; gunicorn's heartbeat files) goes to TMPDIR,
# which is the only path that must be writable (a tmpfs or emptyDir).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp \
    PATH=/opt/ingrain/bin:$PATH \
    INGRAIN_ENGINES=/engines

COPY --from=install /opt/ingrain /opt/ingrain
RUN useradd --no-create-home --home-dir /tmp --shell /usr/sbin/nologin --uid 10001 ingrain \
    && mkdir -p /engines \
    && chown ingrain:ingrain /engines

USER 10001
VOLUME ["/engines"]
EXPOSE 8686 8687

# /ready: 200 once every model this server must serve is loaded and warmed up (see docs/http-api.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8686/ready', timeout=4)"]

ENTRYPOINT ["ingrain-serve", "--host", "0.0.0.0", "--engines", "/engines"]
CMD ["--workers", "1"]
