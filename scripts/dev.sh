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

log_prefix=dev.sh
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

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
  need_root "BPF, XDP and network namespaces need it"
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
