# shellcheck shell=bash
# Sourced by install.sh and uninstall.sh (after `set -euo pipefail`): their options, one-line
# errors, the project root as the current directory, and where the systemd user unit lives.

script_name=${0##*/}

fail() {
    echo "$script_name: $*" >&2
    exit 1
}

# Sets with_systemd from the command line; `usage` is the calling script's --help text.
parse_options() {
    with_systemd=true
    for option in "$@"; do
        case $option in
            --no-systemd) with_systemd=false ;;
            -h | --help) echo "$usage"; exit 0 ;;
            *) fail "unknown option '$option' (see --help)" ;;
        esac
    done
}

# Every path the scripts touch is relative to the project root, wherever they are run from.
cd "$(dirname "$(readlink -f "$0")")/.."
project_dir=$PWD

user=${USER:-$(id -un)}
# Where `systemctl --user` looks for the units a user installs.
unit_file=${XDG_CONFIG_HOME:-${HOME:?HOME is not set}/.config}/systemd/user/llamasite.service

# Checked before anything changes: without a reachable user systemd, only --no-systemd works.
require_user_systemd() {
    command -v systemctl >/dev/null || fail "systemctl not found: this machine has no systemd (use --no-systemd)"
    systemctl --user show-environment >/dev/null 2>&1 ||
        fail "cannot reach your systemd user instance: log in as $user directly (not through su or sudo), or use --no-systemd"
}
