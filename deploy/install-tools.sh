#!/usr/bin/env bash
# Debian packages the deployment checks need (deploy/ci.sh, tests/deploy/):
#   prometheus   promtool (check/test rules) and the server the rules are evaluated on
#   podman, buildah, runc, containernetworking-plugins   build and run the image
#   debootstrap  builds a Debian base image when python:3.11-slim cannot be pulled
#   postgresql   the server binaries (initdb, pg_ctl under /usr/lib/postgresql/*/bin) the state
#                store tests and bench start their own throwaway PostgreSQL with (tests/postgres.py)
#   chromium, chromium-driver   the headless browser and its WebDriver the review console's browser
#                test drives (tests/integration/test_console_browser.py, through selenium)
# kubectl (kustomize) is not packaged in Debian bookworm; it must already be on PATH.
#
# Idempotent: packages already installed are left alone and apt is not touched.
# Non-interactive. Daemons in these packages (prometheus, postgresql) are not started: the
# checks start their own, on loopback ports, with temporary storage.
set -euo pipefail

PACKAGES=(prometheus podman buildah runc containernetworking-plugins debootstrap debian-archive-keyring postgresql chromium chromium-driver)

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "deploy tools already installed: ${PACKAGES[*]}"
  exit 0
fi

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)

# policy-rc.d 101 = "do not start services": the prometheus and postgresql packages would
# otherwise start system-wide daemons (:9090, :5432) where an init system exists.
created_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
  created_policy=yes
fi
remove_policy() { [ -z "$created_policy" ] || "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; }
trap remove_policy EXIT

echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# No recommends: they pull node-exporter (another daemon), fuse-overlayfs and
# dbus pieces none of the checks use.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: $(promtool --version 2>&1 | head -1); $(podman --version)"
