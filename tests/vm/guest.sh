#!/usr/bin/env bash
# Run inside the test VM by tests/vm/run.sh, as root, on the guest kernel.
#
#   guest.sh SHARED_DIR [PYTEST ARGS...]
#
# Writes pytest's exit status to SHARED_DIR/status (a directory shared
# with the host) and exits with it. Without PYTEST ARGS it runs every
# integration and vm test under tests/integration and tests/vm.
set -uo pipefail

shared_dir=$1
shift
repo=$(cd "$(dirname "$0")/../.." && pwd)

# Seconds since the guest kernel started, as a measure of boot time.
cut -d' ' -f1 /proc/uptime >"$shared_dir/boot_seconds"
echo "guest: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) MiB"

# virtme-ng mounts proc, sys and debugfs but not bpffs, and pinned maps
# need it.
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi

# Tests marked vm change global kernel state (sysctls shared by every
# namespace); tests/conftest.py runs them only where this is set.
export NEIGHBPF_IN_VM=1
# tests/vm/test_kernel_features.py writes what the guest kernel supports here.
export NEIGHBPF_FEATURE_REPORT="$shared_dir/features.json"
export PYTHONDONTWRITEBYTECODE=1

if [[ $# -eq 0 ]]; then
  set -- -m "integration or vm" --durations=15 tests/integration tests/vm
fi

cd "$repo"
"$repo/.venv/bin/python" -m pytest "$@"
status=$?
echo "$status" >"$shared_dir/status"
exit "$status"
