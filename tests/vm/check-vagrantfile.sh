#!/usr/bin/env bash
# Check that vagrant/Vagrantfile is valid Ruby. This catches syntax errors
# only, not unknown Vagrant settings.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
vagrantfile="$repo/vagrant/Vagrantfile"

if ! command -v ruby >/dev/null; then
  echo "check-vagrantfile: ruby not found; install it with 'apt-get install --no-install-recommends ruby'" >&2
  exit 2
fi
if [[ ! -f "$vagrantfile" ]]; then
  echo "check-vagrantfile: $vagrantfile not found" >&2
  exit 1
fi
# ruby -c prints "Syntax OK" or the first syntax error with its line.
ruby -c "$vagrantfile" >/dev/null
echo "check-vagrantfile: $vagrantfile: syntax OK" >&2
