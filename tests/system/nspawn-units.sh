#!/usr/bin/env bash
# The systemd units under a real systemd: this machine's own root as a throw-away
# container (systemd-nspawn on an overlay whose writable layer is a tmpfs, in a private
# mount namespace), so neither the host's files nor its network are touched.
#
#   nspawn-units.sh REPO OUTDIR
#
# 1. in the container, without booting (host network: pip needs PyPI), `install.sh`;
#    the host's mail and other daemons are masked in the container;
# 2. the container boots systemd (--private-network: only its own loopback) and runs
#    mailward-nspawn-check.service, which starts the units, reloads, stops them and
#    writes what it saw to OUTDIR (bound in); then it powers off.
# Needs root, systemd-nspawn (Debian: systemd-container) and overlayfs.
set -euo pipefail
repo="$(cd "$1" && pwd)"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
top="$(mktemp -d /tmp/mailward-nspawn-XXXXXX)"
mkdir -p "$top/rw" "$top/root"

inner() {
  mount -t tmpfs -o mode=0755 tmpfs "$top/rw"
  mkdir "$top/rw/upper" "$top/rw/work"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$top/rw/upper,workdir=$top/rw/work" "$top/root"
  root="$top/root"
  # The host's daemons stay off in the container (masked), and so does the console.
  for unit in "$root"/etc/systemd/system/multi-user.target.wants/*.service \
              getty@tty1.service systemd-timesyncd.service; do
    ln -sfn /dev/null "$root/etc/systemd/system/$(basename "$unit")"
  done
  # Step 1: install, exactly as `make install` does on a host.  The checkout is bound in:
  # nspawn mounts a fresh tmpfs on /tmp, which would hide a clone that lives there (CI).
  systemd-nspawn -q -D "$root" --register=no --keep-unit --as-pid2 --bind="$repo" \
    bash -c "cd '$repo' && bash deploy/scripts/install.sh" >"$out/install.log" 2>&1
  cat >"$root/etc/mailward/mailward.toml" <<'TOML'
[general]
authserv_id = "mx.example.com"
[dns]
nameservers = ["127.0.0.1"]
[milter]
socket = "unix:/run/mailward/milter.sock"
[policyd]
socket = "unix:/run/mailward/policyd.sock"
[metrics]
listen = ""
policyd_listen = ""
TOML
  install -m 0755 "$repo/tests/system/nspawn-check.sh" "$root/usr/local/sbin/mailward-nspawn-check"
  cat >"$root/etc/systemd/system/mailward-nspawn-check.service" <<'UNIT'
[Unit]
Description=Check the Mailward units, then power off
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/mailward-nspawn-check /out
ExecStopPost=/bin/systemctl --no-block poweroff
[Install]
WantedBy=multi-user.target
UNIT
  ln -sfn ../mailward-nspawn-check.service \
    "$root/etc/systemd/system/multi-user.target.wants/mailward-nspawn-check.service"
  # Step 2: boot.
  timeout 300 systemd-nspawn -q -D "$root" --register=no --keep-unit --private-network \
    --bind="$out:/out" --boot >"$out/boot.log" 2>&1 || echo "nspawn exited $?" >>"$out/boot.log"
}

export -f inner
export top repo out
status=0
unshare --mount --propagation private bash -c 'set -euo pipefail; inner' || status=$?
rm -rf "$top"
exit "$status"
