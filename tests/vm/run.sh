#!/usr/bin/env bash
# Run neighbpf's integration suite inside a VM that boots Debian 12's 6.1
# kernel (linux-image-amd64) on a read-only snapshot of this machine's
# root filesystem, through virtme-ng and QEMU.
#
#   tests/vm/run.sh [PYTEST ARGS...]
#
# Without arguments the guest runs tests/vm/guest.sh's default selection.
# Arguments replace it and go to pytest unchanged, for example
#   tests/vm/run.sh tests/vm/test_vm_smoke.py -x
#
# Environment:
#   NEIGHBPF_VM_KVM=0|1        0 forces software emulation, 1 forces KVM;
#                              unset: KVM only if /dev/kvm exists and a
#                              probe boot under KVM succeeds
#   NEIGHBPF_VM_MEMORY=3G      guest memory (QEMU size syntax)
#   NEIGHBPF_VM_CPUS=2         guest CPUs
#   NEIGHBPF_VM_TIMEOUT=2400   seconds before the whole VM run is stopped
#
# Exits with pytest's status from inside the guest, 2 when the host is not
# set up (not root, no .venv), and 124 when the VM run timed out.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
vm_venv="$repo/.venv-vm"
virtme_ng_version=1.42
memory=${NEIGHBPF_VM_MEMORY:-3G}
cpus=${NEIGHBPF_VM_CPUS:-2}
timeout_s=${NEIGHBPF_VM_TIMEOUT:-2400}

# qemu-system-x86 runs the guest. linux-image-amd64 installs Debian 12's
# 6.1 kernel with its modules, because veth, 9p and virtio are modules
# there. linux-headers-amd64 is that kernel's build tree for bcc.
# busybox-static is the shell of virtme-ng's initramfs. ruby and vagrant
# check the Vagrantfile.
debian_packages=(
  qemu-system-x86 linux-image-amd64 linux-headers-amd64 kmod
  busybox-static iproute2 python3-venv ruby vagrant
)

log_prefix=vm
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

build_vm_venv() {
  # virtme-ng lives in its own virtualenv so that the project's .venv stays
  # exactly what scripts/dev.sh setup builds.
  if [[ -x "$vm_venv/bin/vng" ]] && "$vm_venv/bin/vng" --version 2>/dev/null | grep -qx "virtme-ng $virtme_ng_version"; then
    return 0
  fi
  log "installing virtme-ng $virtme_ng_version into $vm_venv"
  /usr/bin/python3 -m venv "$vm_venv"
  "$vm_venv/bin/pip" install -q --disable-pip-version-check "virtme-ng==$virtme_ng_version"
}

find_guest_kernel() {
  # Newest Debian 6.1 image; version sort keeps 6.1.0-57 above 6.1.0-9.
  local image
  image=$(ls -1 /boot/vmlinuz-6.1* 2>/dev/null | sort -V | tail -n 1)
  if [[ -z "$image" ]]; then
    log "no /boot/vmlinuz-6.1* found; install it with 'apt-get install --no-install-recommends linux-image-amd64'"
    exit 2
  fi
  echo "$image"
}

ensure_guest_headers() {
  # linux-headers-amd64 and linux-image-amd64 come from the same source
  # package, but a partial upgrade can leave them at different ABI
  # versions. bcc in the guest needs the headers of the guest's release.
  local release=$1
  if [[ ! -d "/lib/modules/$release/build/include" ]]; then
    install_debian_packages "linux-headers-$release"
  fi
}

probe_kvm() {
  # Some hosts expose /dev/kvm yet cannot run a normal guest (nested
  # virtualization that rejects MSR writes, for one). A short probe boot
  # decides.
  local kernel=$1
  [[ -e /dev/kvm ]] || return 1
  timeout 90 "$vm_venv/bin/vng" --run "$kernel" --user root --cpus 1 --memory 512M \
    --exec true >/dev/null 2>&1
}

choose_accel() {
  local kernel=$1
  case "${NEIGHBPF_VM_KVM:-}" in
    0) echo "--disable-kvm" ;;
    1) echo "" ;;
    "")
      if probe_kvm "$kernel"; then
        echo ""
      else
        echo "--disable-kvm"
      fi
      ;;
    *)
      log "invalid NEIGHBPF_VM_KVM='${NEIGHBPF_VM_KVM}'; use 0 (emulation), 1 (KVM) or leave it unset"
      exit 2
      ;;
  esac
}

main() {
  need_root "apt-get, and the guest runs the root-only tests"
  install_debian_packages "${debian_packages[@]}"
  if [[ ! -x "$repo/.venv/bin/python" ]]; then
    log "$repo/.venv is missing; run 'bash scripts/dev.sh setup' first"
    exit 2
  fi
  build_vm_venv
  # vng starts virtme-run and its other helpers by name, through PATH.
  export PATH="$vm_venv/bin:$PATH"

  bash "$repo/tests/vm/check-vagrantfile.sh"

  local kernel release accel
  kernel=$(find_guest_kernel)
  release=${kernel#/boot/vmlinuz-}
  ensure_guest_headers "$release"
  accel=$(choose_accel "$kernel")
  local accel_name=KVM
  [[ -n "$accel" ]] && accel_name="software emulation"
  log "guest kernel $release, $accel_name, $cpus CPUs, $memory memory"

  # The guest writes pytest's status here. virtme-ng passes the guest's
  # exit status on too, but only the file separates a test failure from a
  # VM that crashed or never booted.
  local shared_dir
  shared_dir=$(mktemp -d /tmp/neighbpf-vm.XXXXXX)
  trap 'rm -rf "$shared_dir"' EXIT

  local guest_cmd
  guest_cmd=$(printf '%q ' bash "$repo/tests/vm/guest.sh" "$shared_dir" "$@")

  local started=$SECONDS vng_status=0
  # --overlay-rwdir lets pytest write caches in the repository inside the
  # guest while the host's copy stays untouched. When standard output is a
  # file, the guest console's writes and this script's overwrite each
  # other (seen with virtme-ng 1.42), so the output goes through cat. With
  # pipefail, the pipeline's status is that of timeout and vng.
  # shellcheck disable=SC2086
  timeout --kill-after=30 "$timeout_s" "$vm_venv/bin/vng" --run "$kernel" $accel \
    --user root --cpus "$cpus" --memory "$memory" \
    --overlay-rwdir "$repo" --rwdir "$shared_dir" --cwd "$repo" \
    --exec "$guest_cmd" </dev/null 2>&1 | cat || vng_status=$?
  log "VM run took $((SECONDS - started)) s"

  if [[ $vng_status -eq 124 ]]; then
    log "VM run timed out after ${timeout_s} s; raise NEIGHBPF_VM_TIMEOUT or select fewer tests"
    exit 124
  fi
  if [[ ! -s "$shared_dir/status" ]]; then
    log "the guest wrote no test status (virtme-ng exited $vng_status); the VM failed to boot or the guest script crashed, see the output above"
    exit 1
  fi
  local status
  status=$(cat "$shared_dir/status")
  [[ -f "$shared_dir/boot_seconds" ]] && log "guest reached its test script $(cat "$shared_dir/boot_seconds") s after the VM started"
  if [[ -s "$shared_dir/features.json" ]]; then
    log "guest kernel features: $(cat "$shared_dir/features.json")"
  fi
  log "pytest in the guest exited $status"
  exit "$status"
}

main "$@"
