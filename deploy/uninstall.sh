#!/usr/bin/env bash
# Undo deploy/install.sh: stop and remove the systemd user unit, the .venv and the static files.
# The data stays: models/, the database, config.json, .secret_key and .admin_token.
set -euo pipefail

usage="Usage: deploy/uninstall.sh [--no-systemd]

Stops and disables the systemd user service llamasite, removes its unit file, .venv and
staticfiles/. Keeps models/, the database (db.sqlite3), config.json, .secret_key and
.admin_token, so that deploy/install.sh brings the same server back.

  --no-systemd  for machines without a user systemd: never call systemctl
  -h, --help    show this help"

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$(readlink -f "$0")")/common.sh"
parse_options "$@"
if $with_systemd; then
    require_user_systemd
fi

stop_service() {
    [ -e "$unit_file" ] || return 0
    systemctl --user disable --now llamasite || fail "systemctl --user disable --now llamasite failed (see above)"
}

remove() {
    local path
    for path in "$@"; do
        [ -e "$path" ] || continue
        rm -rf -- "$path"
        echo "removed $path"
    done
}

if $with_systemd; then
    stop_service
fi
remove "$unit_file"
if $with_systemd; then
    systemctl --user daemon-reload
fi
remove "$project_dir/.venv" "$project_dir/staticfiles"
echo "kept: models/, the database, config.json, .secret_key, .admin_token"
