#!/usr/bin/env bash
# Install Mailward on a Debian 12/13 host next to its Postfix and Dovecot.
#
#   make install            (or: sudo bash deploy/scripts/install.sh)
#
# What it does (the README's "Installing" section lists the same steps):
#   1. a virtualenv in /opt/mailward with Mailward in it (Debian's Python is "externally
#      managed", PEP 668: no pip into the system), the command linked to
#      /usr/local/bin/mailward, the README in /opt/mailward/share/doc/mailward;
#   2. the mailward system user (sysusers.d) and its directories (tmpfiles.d):
#      /etc/mailward 0750 root:mailward, /etc/mailward/keys 0700 mailward,
#      /var/lib/mailward and /run/mailward;
#   3. /etc/mailward/mailward.toml (0640) from deploy/mailward.example.toml, only if there
#      is none (an existing configuration is never overwritten);
#   4. the systemd units into /etc/systemd/system, enabled (not started: configure first).
#
# Environment: DESTDIR (stage everything under this root instead of /: the tests do; the
# virtualenv is then not relocatable), PREFIX (default /opt/mailward), PYTHON (python3),
# PIP_ARGS (extra pip arguments, e.g. a wheel directory with --find-links).
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
destdir="${DESTDIR:-}"
prefix="${PREFIX:-/opt/mailward}"
python="${PYTHON:-python3}"
root="${destdir:-/}"

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it creates a system user and writes /etc)" >&2
  exit 1
fi
for tool in systemd-sysusers systemd-tmpfiles; do
  command -v "$tool" >/dev/null || { echo "install.sh: $tool is missing" >&2; exit 1; }
done
if ! getent -s files group postfix >/dev/null 2>&1 && [ ! -e "$destdir/etc/group" ]; then
  echo "install.sh: no group postfix: install Postfix first" >&2
  exit 1
fi

echo "1/4 virtualenv $prefix"
venv="$destdir$prefix"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# shellcheck disable=SC2086  # PIP_ARGS is a list of words
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ${PIP_ARGS:-} "$src"
install -d -m 0755 "$venv/share/doc/mailward" "$venv/share/mailward"
install -m 0644 "$src/README.md" "$venv/share/doc/mailward/README.md"
install -m 0644 "$src/deploy/mailward.example.toml" "$venv/share/mailward/mailward.example.toml"
install -d -m 0755 "$destdir/usr/local/bin"
ln -sfn "$prefix/bin/mailward" "$destdir/usr/local/bin/mailward"

echo "2/4 user mailward and its directories"
install -D -m 0644 "$src/deploy/sysusers.d/mailward.conf" "$destdir/usr/lib/sysusers.d/mailward.conf"
install -D -m 0644 "$src/deploy/tmpfiles.d/mailward.conf" "$destdir/usr/lib/tmpfiles.d/mailward.conf"
systemd-sysusers --root="$root" "$destdir/usr/lib/sysusers.d/mailward.conf"

echo "3/4 configuration /etc/mailward/mailward.toml"
install -d -m 0750 "$destdir/etc/mailward"
if [ ! -e "$destdir/etc/mailward/mailward.toml" ]; then
  install -m 0640 "$src/deploy/mailward.example.toml" "$destdir/etc/mailward/mailward.toml"
else
  echo "    kept the existing $destdir/etc/mailward/mailward.toml"
fi
# Owners and modes of /etc/mailward, its keys directory, /var/lib/mailward, /run/mailward.
systemd-tmpfiles --create --root="$root" "$destdir/usr/lib/tmpfiles.d/mailward.conf"

echo "4/4 systemd units"
install -d -m 0755 "$destdir/etc/systemd/system"
for unit in "$src"/deploy/systemd/mailward-*.service "$src"/deploy/systemd/mailward-*.timer; do
  [ -e "$unit" ] || continue
  install -m 0644 "$unit" "$destdir/etc/systemd/system/$(basename "$unit")"
done
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable mailward-milter.service mailward-policyd.service
  echo "enabled; after editing /etc/mailward/mailward.toml:"
  echo "  mailward check-config -c /etc/mailward/mailward.toml"
  echo "  systemctl start mailward-milter mailward-policyd"
else
  systemctl --root="$root" enable mailward-milter.service mailward-policyd.service
fi
