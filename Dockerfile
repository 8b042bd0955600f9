# cdc-bridge: the daemon in a small image.
#
#   docker build -t cdc-bridge .
#   docker run --rm -v $PWD/config.yaml:/etc/cdc-bridge/config.yaml:ro \
#       -e CDC_BRIDGE_DSN=postgresql://... -p 8080:8080 cdc-bridge
#
# The config is mounted, not baked in: the same image runs every environment. In a
# container, set http.listen to 0.0.0.0:8080 so probes and Prometheus can reach it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CDC_BRIDGE_HEALTH_URL=http://127.0.0.1:8080/healthz

# A fixed uid, so Kubernetes' runAsNonRoot and file permissions can name it.
RUN groupadd --system --gid 10001 cdc-bridge \
    && useradd --system --uid 10001 --gid cdc-bridge --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin cdc-bridge

WORKDIR /opt/cdc-bridge
# Only what `pip install .` needs (see .dockerignore): tests and tooling stay out.
# (setup.py compiles the hot path with mypyc where a C compiler is; this slim image has
# none, so the install is pure Python: the same code, slower per event.)
COPY pyproject.toml setup.py README.md ./
COPY cdc_bridge ./cdc_bridge
# psycopg[binary] ships libpq in its wheel: no compiler or libpq-dev needed.
RUN pip install . && rm -rf build ./*.egg-info \
    && mkdir -p /etc/cdc-bridge

USER cdc-bridge
EXPOSE 8080

# /healthz answers from the bridge's own event loop, so an answer proves the loop turns.
# python -c urllib: the slim image has no curl or wget, and we add nothing for a probe.
# A non-2xx answer or no answer raises, so the exit code is 1; proxies are bypassed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(os.environ['CDC_BRIDGE_HEALTH_URL'], timeout=4)"]

ENTRYPOINT ["cdc-bridge"]
CMD ["run", "--config", "/etc/cdc-bridge/config.yaml"]
