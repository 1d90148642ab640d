#!/bin/sh
# Install flowlord under systemd from this repository (docs/install.md).
#
#   sudo packaging/install.sh [--examples] [--operator USER]
#
# --examples   also installs workflows/drop.toml, its drop directory moved from /tmp
#              (private to the service: PrivateTmp=yes) to /var/lib/flowlord/drop
# --operator   adds USER to the group flowlord: the commands and sqlite3 -readonly
#
# DESTDIR=/some/root writes every file under that root instead, and prints, without
# running them, the steps that need the real machine's root (users, groups, owners,
# systemctl): how the tests check this script. An existing config is kept.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
EXAMPLES=no
OPERATOR=
while [ $# -gt 0 ]; do
    case $1 in
        --examples) EXAMPLES=yes ;;
        --operator) OPERATOR=$2; shift ;;
        *) echo "install.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

# the steps only the real root can take: run, or (DESTDIR) printed
as_root() {
    if [ -z "$DESTDIR" ]; then
        echo "+ $*"
        "$@"
    else
        echo "not run (needs the real root): $*"
    fi
}

# 1. the service's user and group (no login, no home of its own)
if [ -n "$DESTDIR" ] || ! getent group flowlord >/dev/null; then
    as_root groupadd --system flowlord
fi
if [ -n "$DESTDIR" ] || ! getent passwd flowlord >/dev/null; then
    as_root useradd --system --gid flowlord --home-dir /var/lib/flowlord --no-create-home \
        --shell /usr/sbin/nologin flowlord
fi

# 2. flowlord in a virtualenv of its own (what running needs, no dev tools)
install -d -m 0755 "$DESTDIR/opt/flowlord"
"$PYTHON" -m venv "$DESTDIR/opt/flowlord/.venv"
"$DESTDIR/opt/flowlord/.venv/bin/pip" install --quiet --upgrade pip
"$DESTDIR/opt/flowlord/.venv/bin/pip" install --quiet "$REPO"
install -m 0644 "$REPO/README.md" "$DESTDIR/opt/flowlord/README.md"  # the unit's Documentation=

# 3. the config and the workflow directory: root's, readable by the group
install -d -m 0750 "$DESTDIR/etc/flowlord" "$DESTDIR/etc/flowlord/workflows"
if [ ! -e "$DESTDIR/etc/flowlord/flowlord.toml" ]; then
    install -m 0640 "$REPO/packaging/flowlord.toml" "$DESTDIR/etc/flowlord/flowlord.toml"
fi
as_root chown -R root:flowlord /etc/flowlord

# 4. the state directory (systemd's StateDirectory= makes it too, with these modes):
# the database, its -wal and -shm, the task logs; the drop directory, where the group
# may put files
install -d -m 0750 "$DESTDIR/var/lib/flowlord"
if [ "$EXAMPLES" = yes ]; then
    install -d -m 2770 "$DESTDIR/var/lib/flowlord/drop"
    sed 's#/tmp/flowlord-drop#/var/lib/flowlord/drop#g' "$REPO/workflows/drop.toml" \
        > "$DESTDIR/etc/flowlord/workflows/drop.toml"
    chmod 0640 "$DESTDIR/etc/flowlord/workflows/drop.toml"
fi
as_root chown -R flowlord:flowlord /var/lib/flowlord

# 5. the unit
install -d -m 0755 "$DESTDIR/etc/systemd/system"
install -m 0644 "$REPO/systemd/flowlord.service" "$DESTDIR/etc/systemd/system/flowlord.service"
as_root systemctl daemon-reload

# 6. an operator: a member of the group reads the config and the database
if [ -n "$OPERATOR" ]; then
    as_root usermod --append --groups flowlord "$OPERATOR"
fi

echo "installed; start it with: systemctl enable --now flowlord"
