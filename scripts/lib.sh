# Shell helpers shared by scripts/dev.sh and tests/vm/run.sh. Source it
# after setting log_prefix, the word that starts every log line.

log() { printf '%s: %s\n' "${log_prefix:-neighbpf}" "$*" >&2; }

# need_root REASON: exit 2 unless running as root.
need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    log "must run as root ($1); retry with sudo"
    exit 2
  fi
}

# install_debian_packages PKG...: install those that are missing, with
# --no-install-recommends, and skip apt entirely when none is.
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
