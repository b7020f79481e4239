#!/usr/bin/env bash
# Builds the Docker image, runs it on 127.0.0.1 and checks it serves: /healthz answers, a bundled
# example comes back as a PNG heatmap from /v1/explain, a bad upload gets a 4xx JSON error, silent
# sockets do not stall it, a malformed chunk gets a 400, and SIGTERM stops it with exit status 0.
# Uses docker when an engine answers, podman otherwise (set up by ../shared/docker/setup-podman.sh
# when podman is missing and that script exists). Exits non-zero, saying why, on any failure.
#
# Environment:
#   TORCH_PIP_ARGS  the torch index arguments for the build (default: empty, pip's own default index,
#                   since the PyTorch CPU index may be unreachable; "--index-url https://download.pytorch.org/whl/cpu"
#                   gives the Dockerfile's default)
#   IMAGE           image name (default: localhost/saliency)
#   PORT            host port on 127.0.0.1 (default: a free one)
#   READY_SECONDS   how long to wait for /healthz (default: 180)
#   EXAMPLE         the image uploaded (default: examples/star.png)
#   EXPECT_LABEL    the class the demo model must predict for it (default: star; "" skips the check)
#   RUN_ARGS        more arguments for the run command, e.g. "-e SALIENCY_WORKERS=2"
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/saliency}
TORCH_PIP_ARGS=${TORCH_PIP_ARGS-}
READY_SECONDS=${READY_SECONDS:-180}
EXAMPLE=${EXAMPLE:-examples/star.png}
EXPECT_LABEL=${EXPECT_LABEL-star}
SETUP_PODMAN=../shared/docker/setup-podman.sh

fail() { echo "docker-smoke: FAILED: $*" >&2; exit 1; }
step() { echo "docker-smoke: $*"; }

[[ -f $EXAMPLE ]] || fail "$EXAMPLE is missing (the bundled example the test uploads)"

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
else
    if [[ -f $SETUP_PODMAN ]] && { ! command -v podman >/dev/null \
            || ! podman image exists docker.io/library/python:3.11-slim; }; then
        step "setting up podman ($SETUP_PODMAN)"
        bash "$SETUP_PODMAN" || fail "$SETUP_PODMAN did not finish (it must run as root)"
    fi
    command -v podman >/dev/null || fail "neither a docker engine nor podman is available"
    engine=podman
    export BUILDAH_FORMAT=docker  # keep HEALTHCHECK, which the OCI image format drops
fi

PORT=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
container="saliency-smoke-$$"
workdir=$(mktemp -d)
cleanup() {
    "$engine" rm -f "$container" >/dev/null 2>&1 || true
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "building $IMAGE with $engine"
start=$(date +%s)
"$engine" build --network host --build-arg TORCH_PIP_ARGS="$TORCH_PIP_ARGS" -t "$IMAGE" . \
    || fail "$engine build failed (output above)"
step "built in $(($(date +%s) - start)) s"

# shellcheck disable=SC2086 # RUN_ARGS is a list of words
"$engine" run -d --name "$container" -p "127.0.0.1:$PORT:8000" ${RUN_ARGS:-} "$IMAGE" >/dev/null \
    || fail "$engine run failed (output above)"
# (podman without systemd says it cannot schedule the health check timer: harmless, it is run below.)
step "container $container on 127.0.0.1:$PORT"

show_logs() { echo "--- container logs ---" >&2; "$engine" logs "$container" >&2 || true; }

python3 - "$PORT" "$READY_SECONDS" "$EXAMPLE" "$EXPECT_LABEL" "$workdir" "$engine" "$container" <<'PY' || { show_logs; fail "the service did not behave (see above)"; }
"""Talks to the running container: health, one real explanation as PNG, one bad upload."""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

port, ready_seconds, example, expect_label, workdir, engine, container = sys.argv[1:]
ready_seconds = float(ready_seconds)
base = f"http://127.0.0.1:{port}"


def check(ok, message):
    if not ok:
        print(f"docker-smoke: {message}", file=sys.stderr)
        sys.exit(1)


def post_image(path, filename, data, content_type):
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(base + path, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


deadline = time.monotonic() + ready_seconds
while True:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
            if response.status == 200:
                break
    except (OSError, urllib.error.URLError):
        pass
    check(time.monotonic() < deadline, f"/healthz did not answer 200 within {ready_seconds:.0f} s")
    running = subprocess.run([engine, "inspect", "--format", "{{.State.Running}}", container],
                             capture_output=True, text=True).stdout.strip()
    check(running == "true", "the container stopped before /healthz answered")
    time.sleep(1)
print("docker-smoke: /healthz ok")

def get(path, accept="*/*"):
    try:
        request = urllib.request.Request(base + path, headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        check(False, f"GET {path} answered {error.code}: {error.read()[:300]!r}")


check(json.loads(get("/readyz")).get("status") == "ready", "/readyz does not say ready")
page = get("/", accept="text/html")  # as a browser asks; "/" answers JSON liveness otherwise
check(b"<html" in page.lower(), "the web page at / is not HTML (static files missing from the image?)")
print("docker-smoke: /readyz ready, web page served")

with open(example, "rb") as f:
    status, headers, body = post_image("/v1/explain?format=png", "star.png", f.read(), "image/png")
check(status == 200, f"POST {example} to /v1/explain?format=png answered {status}: {body[:300]!r}")
check(headers.get("Content-Type", "").startswith("image/png"),
      f"/v1/explain?format=png answered Content-Type {headers.get('Content-Type')!r}, not image/png")
check(body.startswith(b"\x89PNG\r\n\x1a\n"), "/v1/explain?format=png did not return PNG bytes")
with open(f"{workdir}/heatmap.png", "wb") as f:
    f.write(body)
label = headers.get("X-Saliency-Label")
check(not expect_label or label == expect_label,
      f"the model predicted {label!r} for {example}, not {expect_label!r} (are the demo weights in the image?)")
print(f"docker-smoke: /v1/explain returned a {len(body)}-byte PNG for {example} (predicted {label!r})")

status, headers, body = post_image("/v1/explain?format=png", "notes.png", b"this is text, not a picture\n", "image/png")
check(400 <= status < 500, f"a text file named .png answered {status}, not a 4xx: {body[:300]!r}")
try:
    error = json.loads(body)
except ValueError:
    error = None
check(isinstance(error, dict) and "error" in error, f"the {status} answer is not a JSON error: {body[:300]!r}")
print(f"docker-smoke: a bad upload answered {status} {error['error']!r}")

# Slow clients: more silent half-sent requests than the image has threads must not stall the service.
import socket
silent = [socket.create_connection(("127.0.0.1", int(port))) for _ in range(12)]
for s in silent:
    s.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: x\r\nContent-Typ")
started = time.monotonic()
check(json.loads(get("/healthz")).get("status") == "ok", "/healthz did not answer beside 12 silent sockets")
waited = time.monotonic() - started
check(waited < 3, f"/healthz took {waited:.1f} s beside 12 silent sockets (slow clients hold threads)")
for s in silent:
    s.close()
with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as s:
    s.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
              b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    answer = s.recv(65536)
check(answer.startswith(b"HTTP/1.1 400"), f"a malformed chunk answered {answer[:80]!r}, not 400")
print(f"docker-smoke: 12 silent sockets left /healthz at {waited * 1000:.0f} ms; a malformed chunk answered 400")
PY

user=$("$engine" exec "$container" id -u) || { show_logs; fail "cannot run a command in the container"; }
[[ $user != 0 ]] || fail "the service runs as root"
if [[ $engine == podman ]]; then
    podman healthcheck run "$container" >/dev/null || { show_logs; fail "the image's HEALTHCHECK reports unhealthy"; }
else
    docker exec "$container" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" \
        || { show_logs; fail "the image's health check command fails"; }
fi
step "runs as uid $user, health check passes"
"$engine" stop -t 30 "$container" >/dev/null || fail "$engine stop failed"
code=$("$engine" inspect --format '{{.State.ExitCode}}' "$container")
[[ $code == 0 ]] || { show_logs; fail "the service exited with $code on SIGTERM, not 0"; }
step "stops on SIGTERM with exit status 0"
step "passed"
