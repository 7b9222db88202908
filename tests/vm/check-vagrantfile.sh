#!/usr/bin/env bash
# Check vagrant/Vagrantfile without booting a box: first its Ruby syntax,
# then Vagrant's own validation of every setting name and value. The
# provider blocks (libvirt, VirtualBox) are skipped, because checking them
# needs the provider installed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
vagrantfile="$repo/vagrant/Vagrantfile"

fail() {
  echo "check-vagrantfile: $*" >&2
  exit 2
}

[[ -f "$vagrantfile" ]] || fail "$vagrantfile not found"
command -v ruby >/dev/null || fail "ruby not found; install it with 'apt-get install --no-install-recommends ruby'"
command -v vagrant >/dev/null || fail "vagrant not found; install it with 'apt-get install --no-install-recommends vagrant'"

# ruby -c prints the first syntax error with its line number.
ruby -c "$vagrantfile" >/dev/null

# Vagrant keeps machine state in .vagrant/ beside the Vagrantfile and its
# own data in ~/.vagrant.d; both go to a temporary directory instead.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
if ! (cd "$repo/vagrant" && VAGRANT_DOTFILE_PATH="$scratch/dot" VAGRANT_HOME="$scratch/home" \
      vagrant validate --ignore-provider >"$scratch/out" 2>&1); then
  cat "$scratch/out" >&2
  fail "$vagrantfile is invalid (see Vagrant's message above)"
fi
echo "check-vagrantfile: $vagrantfile is valid (ruby -c, vagrant validate --ignore-provider)" >&2
