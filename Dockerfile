# The saliency HTTP service: gunicorn (waitress workers) serving saliency.api.wsgi:app on port 8000.
#   docker build -t saliency .                   # CPU-only torch (default)
#   docker run --rm -p 127.0.0.1:8000:8000 saliency
# Build arguments (see README, "Docker"):
#   BASE               base image (a Debian-based Python 3.10+ with python3 -m venv)
#   TORCH_PIP_ARGS     pip arguments that choose the torch wheels: the CPU index by default,
#                      "--index-url https://download.pytorch.org/whl/cu128" for CUDA,
#                      "" (empty) for pip's own default index (CUDA wheels on Linux x86-64)
#   TORCH_PACKAGES     the torch distributions to install first (versions allowed, e.g. "torch==2.10.*")
#   TORCHVISION_WEIGHTS  space-separated torchvision model names whose ImageNet weights are baked in
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch

RUN python3 -m venv /opt/venv \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/saliency \
        --shell /usr/sbin/nologin saliency \
 && mkdir -p /opt/torch \
 && chown saliency:saliency /opt/torch

# torch first, alone: the largest layer, rebuilt only when these arguments change.
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG TORCH_PACKAGES="torch torchvision"
# SC2086: both arguments are lists of words and must be split. DL3013: versions are chosen by
# TORCH_PACKAGES and by the ranges in pyproject.toml, not pinned twice here.
# hadolint ignore=SC2086,DL3013
RUN pip install $TORCH_PIP_ARGS $TORCH_PACKAGES

# The other dependencies, read from pyproject.toml: rebuilt only when pyproject.toml changes.
COPY pyproject.toml /src/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb')); \
print('\n'.join(p['project']['dependencies'] + p['build-system']['requires']))" >/tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Optional: pretrained torchvision weights inside the image (needs network at build time only).
ARG TORCHVISION_WEIGHTS=""
RUN for name in $TORCHVISION_WEIGHTS; do \
        python -c "import sys, torchvision; torchvision.models.get_model_weights(sys.argv[1]).DEFAULT.get_state_dict(progress=False)" "$name" \
        || exit 1; \
    done \
 && chown -R saliency:saliency /opt/torch

# The package itself, last: a code change rebuilds only these two small layers.
COPY . /src
RUN pip install --no-deps --no-build-isolation /src \
 && rm -rf /src/build

# The saliency user made above (a home for gunicorn's control socket and matplotlib's cache).
USER 10001:10001
WORKDIR /home/saliency
ENV SALIENCY_MODEL=demo \
    SALIENCY_WORKERS=1 \
    SALIENCY_THREADS=4 \
    SALIENCY_TIMEOUT=120
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# A shell only to read the SALIENCY_* numbers; exec hands PID 1 (and signals) to gunicorn. The
# waitress worker reads whole requests before a thread sees them (slow clients hold no thread) and
# drops late ones (SALIENCY_HEADER_TIMEOUT, SALIENCY_BODY_TIMEOUT). On SIGTERM requests in flight
# get SALIENCY_GRACEFUL_TIMEOUT (default: SALIENCY_TIMEOUT) seconds: stop with docker stop -t 130.
CMD ["/bin/sh", "-c", "exec gunicorn --bind 0.0.0.0:8000 --worker-class saliency.api.worker.WaitressWorker --workers \"$SALIENCY_WORKERS\" --threads \"$SALIENCY_THREADS\" --timeout \"$SALIENCY_TIMEOUT\" --graceful-timeout \"${SALIENCY_GRACEFUL_TIMEOUT:-$SALIENCY_TIMEOUT}\" --access-logfile - saliency.api.wsgi:app"]
