#!/usr/bin/env bash
# Install llamasite from this checkout for the current user and run it as a systemd user service.
# Each step is skipped when already done, so running the script again changes nothing.
set -euo pipefail

usage="Usage: deploy/install.sh [--no-systemd]

Sets up this checkout: .venv with the requirements, the default model in models/, the migrated
database, the static files, config.json (only if missing), and the systemd user unit
llamasite.service, which it enables and starts. Running it again changes nothing.

  --no-systemd  for machines without a user systemd: write the unit file but never call
                systemctl; print how to start the server by hand instead
  -h, --help    show this help"

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$(readlink -f "$0")")/common.sh"
parse_options "$@"

# The unit names the project by its path; systemd would need these characters escaped or quoted.
[[ $project_dir =~ ^[[:alnum:]/._+@-]+$ ]] ||
    fail "the project path '$project_dir' has characters a systemd unit cannot take as they are; move the project (e.g. to ~/llamasite)"
command -v make >/dev/null || fail "make is not installed (Debian: sudo apt-get install make)"
command -v "${PYTHON:-python3}" >/dev/null || fail "${PYTHON:-python3} is not installed (Debian: sudo apt-get install python3 python3-venv)"
if $with_systemd; then
    require_user_systemd
fi

write_default_config() {
    [ -e config.json ] && return 0
    cat >config.json <<'EOF'
{
  "server": {"host": "127.0.0.1", "port": 8080},
  "model_manager": {"models_directory": "./models"}
}
EOF
    echo "wrote $project_dir/config.json"
}

# The Makefile's stamps in .venv make a rerun rebuild nothing.
set_up_project() {
    make --no-print-directory setup model migrate || fail "make setup model migrate failed (see above)"
    .venv/bin/python manage.py collectstatic --noinput || fail "manage.py collectstatic failed (see above)"
}

# Writes the unit with this project's path in place of %h/llamasite; an unchanged file is left
# alone, so that a rerun does not touch it.
install_unit() {
    local rendered
    rendered=$(sed "s|%h/llamasite|$project_dir|g" deploy/llamasite.service)
    if [ -f "$unit_file" ] && [ "$(cat "$unit_file")" = "$rendered" ]; then
        echo "unit up to date: $unit_file"
        return
    fi
    mkdir -p "$(dirname "$unit_file")"
    printf '%s\n' "$rendered" >"$unit_file"
    echo "wrote $unit_file"
}

start_service() {
    systemctl --user daemon-reload
    systemctl --user enable --now llamasite || fail "systemctl --user enable --now llamasite failed (see above)"
    echo "llamasite is running: systemctl --user status llamasite; logs: journalctl --user -u llamasite -f"
    echo "after an update, restart it: systemctl --user restart llamasite"
    if [ ! -e "/var/lib/systemd/linger/$user" ]; then
        echo "to keep it running without a login session (and start it at boot): loginctl enable-linger $user"
    fi
}

print_manual_start() {
    echo "--no-systemd: the unit is not enabled. Start the server by hand:"
    echo "  cd $project_dir && .venv/bin/python manage.py serve"
}

write_default_config
set_up_project
install_unit
if $with_systemd; then
    start_service
else
    print_manual_start
fi
