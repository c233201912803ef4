"""Run segloop's server with the built web app mounted (the browser tests' server process).

    python -m tests.browser.webserver --data DIR --port PORT [--dicomweb URL [--ephemeral]]

With ``--dicomweb`` the images come from that DICOMweb server (credentials, if any, in
``SEGLOOP_DICOMWEB_AUTH=user:password``, as for ``segloop serve``).

Until the app factory mounts the web app itself, this does it with `mount_web_app`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dist", type=Path, default=None)
    parser.add_argument("--dicomweb", default=None)
    parser.add_argument("--ephemeral", action="store_true")
    args = parser.parse_args()

    import uvicorn
    from starlette.routing import Route

    from segloop.server import ServerSettings, create_app
    from segloop.server.webapp import mount_web_app

    auth = os.environ.get("SEGLOOP_DICOMWEB_AUTH")
    user, _, password = (auth or "").partition(":")
    settings = ServerSettings(data=args.data, host="127.0.0.1", port=args.port, inference_threads=1, job_threads=1,
                              max_running_jobs=1, dicomweb_url=args.dicomweb,
                              dicomweb_auth=(user, password) if auth else None, ephemeral=args.ephemeral)
    app = create_app(settings)
    if not any(isinstance(r, Route) and r.path == "/{path:path}" for r in app.router.routes):
        mount_web_app(app, args.dist)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
