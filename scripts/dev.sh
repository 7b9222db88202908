#!/usr/bin/env bash
# Set up a Debian 12 machine for neighbpf and run its main commands.
#
#   scripts/dev.sh setup     install Debian packages, mount bpffs, build .venv
#   scripts/dev.sh demo      setup, then run the lab (neighbpf demo)
#   scripts/dev.sh test      setup, then run the unit and integration tests
#   scripts/dev.sh test-vm   setup, then run the integration tests in a 6.1 VM
#   scripts/dev.sh ci        test, then test-vm (what .ci/run calls)
#
# Every step checks first and does nothing when its work is already done,
# so a second run takes about a second.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv="$repo/.venv"
# bcc's Python bindings live in Debian's system interpreter, not in any
# other python3 that may come first on PATH.
system_python=/usr/bin/python3

debian_packages=(
  python3-bpfcc python3-venv python3-pip
  linux-headers-amd64 iproute2 iputils-ping ethtool kmod
)

log() { printf 'dev.sh: %s\n' "$*" >&2; }

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (BPF, XDP and network namespaces need it); retry with sudo"
    exit 2
  fi
}

install_debian_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

mount_bpffs() {
  # systemd mounts bpffs at boot on most hosts; minimal machines and
  # containers may not, and pinned maps need it.
  if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
    log "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
  fi
}

build_venv() {
  local stamp="$venv/.neighbpf-stamp" want
  want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
  if [[ -x "$venv/bin/neighbpf" && -f "$stamp" && $(cat "$stamp") == "$want" ]]; then
    return 0
  fi
  log "building virtualenv at $venv"
  "$system_python" -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$repo[test]"
  echo "$want" >"$stamp"
}

setup() {
  need_root
  install_debian_packages "${debian_packages[@]}"
  mount_bpffs
  build_venv
}

run_pytest() {
  # pytest exits 5 when it collected no test; that is a failure here too.
  "$venv/bin/python" -m pytest "$@"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$venv/bin/neighbpf" demo "$@" ;;
  test) setup; cd "$repo"; run_pytest tests/unit tests/integration "$@" ;;
  test-vm) setup; exec "$repo/tests/vm/run.sh" "$@" ;;
  ci)
    setup
    cd "$repo"
    run_pytest tests/unit tests/integration
    "$repo/tests/vm/run.sh"
    ;;
  *)
    log "unknown command '${cmd}'; use one of: setup, demo, test, test-vm, ci"
    exit 2
    ;;
esac
