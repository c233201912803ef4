#!/usr/bin/env bash
# Orthanc for segloop's PACS tests.
#   scripts/orthanc.sh install   install Debian orthanc, orthanc-dicomweb, dicom3tools if missing
#                                (idempotent, quiet; needs root or passwordless apt)
#   scripts/orthanc.sh start DIR start Orthanc on a free loopback port with its own storage and
#                                config in DIR (auth on, user segloop-test); prints URL USER PASSWORD
#   scripts/orthanc.sh stop DIR  stop the Orthanc started in DIR and remove DIR
# The pytest suite (tests/pacs) starts and stops its own Orthanc with tests/pacs/orthanc.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_packages() {
    local missing=()
    command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
    ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1 \
        || ls /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1 || missing+=(orthanc-dicomweb)
    command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
    echo "${missing[@]:-}"
}

install() {
    local missing
    missing="$(need_packages)"
    [ -z "${missing// /}" ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # Debian's package may try to start a system Orthanc (port 8042); the tests never use it.
    missing="$(need_packages)"
    if [ -n "${missing// /}" ]; then
        echo "orthanc.sh: still missing after apt-get install: $missing" >&2
        exit 1
    fi
}

start() {
    local dir="${1:?usage: orthanc.sh start DIR}"
    mkdir -p "$dir"
    python="${PYTHON:-$here/.venv/bin/python}"
    "$python" - "$dir" <<'PY'
import json, sys, pathlib
sys.path.insert(0, ".")
from tests.pacs.orthanc import OrthancServer
server = OrthancServer(folder=pathlib.Path(sys.argv[1]).resolve())
server.start()
(server.folder / "server.json").write_text(json.dumps({"pid": server.process.pid, "url": server.url, "user": server.user, "password": server.password}))
print(server.url, server.user, server.password)
PY
}

stop() {
    local dir="${1:?usage: orthanc.sh stop DIR}"
    if [ -f "$dir/server.json" ]; then
        pid="$("${PYTHON:-$here/.venv/bin/python}" -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$dir/server.json")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    install) install ;;
    start) cd "$here" && start "$@" ;;
    stop) stop "$@" ;;
    *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
