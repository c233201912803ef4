#!/usr/bin/env bash
# The browser app (web/) and the browser used by its tests.
#   scripts/web.sh build            npm ci + vite build into web/dist (quiet; skipped when the
#                                   build is newer than every source file and the lockfile)
#   scripts/web.sh install-browser  Debian's chromium (apt-get, when /usr/bin/chromium is missing)
#                                   and the playwright Python package in .venv. Playwright never
#                                   downloads a browser here: tests launch /usr/bin/chromium.
# Node >= 20 and npm must be on PATH for `build`; nothing is fetched at run time.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
web="$here/web"

stale() {
    # true when web/dist is missing or older than any input of the build
    [ -f "$web/dist/index.html" ] || return 0
    [ -n "$(find "$web/src" "$web/index.html" "$web/package.json" "$web/package-lock.json" \
        "$web/vite.config.ts" "$web/tsconfig.json" -newer "$web/dist/index.html" -print -quit 2>/dev/null)" ]
}

build() {
    command -v npm >/dev/null 2>&1 || { echo "web.sh: npm is missing (install Node.js >= 20)" >&2; exit 1; }
    cd "$web"
    if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
        npm ci --no-audit --no-fund --loglevel=error >/dev/null
    fi
    if stale; then
        npx --no-install tsc --noEmit
        npx --no-install vite build --logLevel error
        touch "$web/dist/index.html"
    fi
    echo "web app built in $web/dist"
}

install_browser() {
    if [ ! -x /usr/bin/chromium ]; then
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update -qq >/dev/null
        $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
    [ -x /usr/bin/chromium ] || { echo "web.sh: /usr/bin/chromium still missing" >&2; exit 1; }
    local py="${PYTHON:-$here/.venv/bin/python}"
    if ! "$py" -c "import playwright" >/dev/null 2>&1; then
        # the package only; `playwright install` (browser download) is never run
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$py" -m pip install --quiet "playwright>=1.40"
    fi
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -1)"
}

case "${1:-}" in
    build) build ;;
    install-browser) install_browser ;;
    *) echo "usage: $0 build|install-browser" >&2; exit 2 ;;
esac
