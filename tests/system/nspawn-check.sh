#!/usr/bin/env bash
# Runs inside the booted container (mailward-nspawn-check.service): drive the units
# through start, reload and stop; every result as KEY=VALUE in $1/result.
set -u
out="$1"
result="$out/result"
: >"$result"
say() { echo "$1=$2" >>"$result"; }
for unit in mailward-milter mailward-policyd; do
  systemctl start "$unit.service"; say "$unit.start" "$?"
  say "$unit.active" "$(systemctl is-active "$unit.service")"
  say "$unit.enabled" "$(systemctl is-enabled "$unit.service")"
done
say milter.socket "$(stat -c '%a %U %G' /run/mailward/milter.sock 2>&1)"
say policyd.socket "$(stat -c '%a %U %G' /run/mailward/policyd.sock 2>&1)"
pid_before="$(systemctl show -p MainPID --value mailward-milter.service)"
systemctl reload mailward-milter.service; say milter.reload "$?"
say milter.same_pid_after_reload "$([ "$pid_before" = "$(systemctl show -p MainPID --value mailward-milter.service)" ] && echo yes || echo no)"
say milter.active_after_reload "$(systemctl is-active mailward-milter.service)"
say milter.user "$(ps -o user= -p "$pid_before" 2>&1)"
for unit in mailward-milter mailward-policyd; do
  systemd-analyze security --no-pager "$unit.service" >"$out/$unit.security" 2>&1
  say "$unit.exposure" "$(grep -o 'Overall exposure level for [^:]*: [0-9.]*' "$out/$unit.security" | awk '{print $NF}')"
done
for unit in mailward-milter mailward-policyd; do
  systemctl stop "$unit.service"; say "$unit.stop" "$?"
  say "$unit.result" "$(systemctl show -p Result --value "$unit.service")"
  journalctl -b --no-pager -u "$unit.service" >"$out/$unit.journal" 2>&1
done
say done yes
