"""``segloop serve``: run the REST API server (uvicorn) on a data folder."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segloop.cli.common import CommandError, add_data_arg

if TYPE_CHECKING:
    from segloop.server import ServerSettings


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 2G)") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the REST API server on a data folder",
        description=(
            "Serve the segloop REST API (/api/v1, OpenAPI at /api/v1/openapi.json) on DIR. Bound to "
            "127.0.0.1 it may run without authentication; any other address needs --auth FILE."
        ),
    )
    add_data_arg(p, required=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--auth", type=Path, metavar="FILE", help="auth config JSON (users with roles, API tokens)")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="TLS certificate (with --tls-key: HTTPS)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="TLS private key")
    p.add_argument("--max-upload", type=_size, default="2G", metavar="SIZE", help="largest upload body (default 2G)")
    p.add_argument("--inference-workers", type=int, default=1, metavar="N", help="inference threads (default 1)")
    p.add_argument("--inference-queue", type=int, default=4, metavar="N",
                   help="inference requests that may wait before 429 (default 4)")
    p.add_argument("--inference-threads", type=int, metavar="N", help="torch threads of the server process")
    p.add_argument("--inference-nice", type=int, metavar="N",
                   help="nice value of the inference threads (0-19; default 5, or SEGLOOP_INFERENCE_NICE)")
    p.add_argument("--no-mirror", dest="mirror", action="store_false",
                   help="automatic results from one network pass instead of a plain and a mirrored one (test-time "
                        "mirroring along the axes the model's training flipped: about half the time, a little less "
                        "accurate; the server's infer and session starts)")
    p.add_argument("--session-idle", type=float, default=900.0, metavar="SECONDS",
                   help="close interactive sessions idle this long (default 900)")
    p.add_argument("--max-sessions", type=int, default=8, metavar="N", help="open interactive sessions (default 8)")
    p.add_argument("--jobs", default="2", metavar="N|ray|ray://HOST:PORT",
                   help="N: background jobs running at once in local child processes (default 2); 0 with a server "
                        "database shared by several servers: this one runs none and leaves them to the others. "
                        "'ray': jobs run as tasks on a local Ray started by segloop; 'ray://HOST:PORT': on an "
                        "existing Ray cluster (its Ray Client port), GPUs where it has them. Ray needs "
                        "pip install 'segloop[ray]' and a data folder every node sees at the same path "
                        "(docs/deploy.md)")
    p.add_argument("--job-mode", choices=("process", "thread"),
                   help="with --jobs N: run jobs in child processes (default) or threads")
    p.add_argument("--job-threads", type=int, metavar="N",
                   help="torch threads per job (default: cores - 1; with --jobs ray: the CPUs a job's Ray task "
                        "reserves, default 1)")
    p.add_argument("--job-priority", choices=("idle", "nice"),
                   help="CPU priority of training and scoring jobs: 'idle' (Linux SCHED_IDLE on top of nice 10: "
                        "they use only CPU the server leaves idle, so clicks stay fast) or 'nice' (nice 10 only: "
                        "jobs still progress on a machine kept busy by other work). Default idle, or the "
                        "SEGLOOP_JOB_IDLE_CLASS environment variable (0 = nice)")
    p.add_argument("--score-sync-passes", type=int, metavar="N",
                   help="GET /next scores unscored images itself when that costs at most N forward passes, "
                        "else starts a scoring job (0: always a job). Default 16, or SEGLOOP_SCORE_SYNC_PASSES")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dicomweb", metavar="URL",
                   help="images come from this DICOMweb server (QIDO-RS/WADO-RS/STOW-RS, e.g. Orthanc's "
                        "http://host:8042/dicom-web); labels, models and jobs stay in --data")
    p.add_argument("--dicomweb-auth", metavar="USER:PASSWORD",
                   help="HTTP basic credentials for --dicomweb (or set SEGLOOP_DICOMWEB_AUTH)")
    p.add_argument("--dicomweb-filter", action="append", default=[], metavar="KEY=VALUE",
                   help="list only matching series: modality=CT, study_date=YYYYMMDD[-YYYYMMDD], "
                        "description=TEXT (repeatable)")
    p.add_argument("--dicomweb-cache", type=_size, default="2G", metavar="SIZE",
                   help="local space for fetched, unlabelled series before the least recently used go (default 2G)")
    p.add_argument("--dicomweb-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="seconds the PACS may stay silent before a call fails with 504 (default 10; a "
                        "refused connection fails at once, retried once)")
    p.add_argument("--ephemeral", action="store_true",
                   help="with --dicomweb: delete images fetched from the PACS (and their labels) from local "
                        "disk when their last interactive session ends, when left unused, when released and "
                        "at stop; an image with a label revision not yet sent to the PACS is kept (docs/pacs.md)")
    p.add_argument("--public-url", metavar="URL",
                   help="with a server database (--db postgresql://...) shared by several servers: where clients "
                        "reach this one (behind a reverse proxy); the others answer requests for its interactive "
                        "sessions with 421 and this URL. Default: http(s)://HOST:PORT (docs/deploy.md)")
    p.add_argument("--stale-after", type=float, metavar="SECONDS",
                   help="with a server database: a server not heard from this long is taken for dead and its "
                        "running jobs are marked interrupted (default 30, or SEGLOOP_CLUSTER_STALE_SECONDS)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--hash-password", action="store_true",
                   help="read a password (prompt or stdin) and print its scrypt hash for the auth file, then exit")
    p.add_argument("--new-token", metavar="ROLE", choices=("annotator", "reviewer", "admin"),
                   help="print a new API token and its auth-file entry, then exit")
    p.set_defaults(func=cmd_serve)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The `ServerSettings` that ``segloop serve`` ARGS describe (checked by `create_app`, not here).

    Flags left unset keep the settings' defaults, which some read from the environment
    (``SEGLOOP_JOB_IDLE_CLASS``, ``SEGLOOP_SCORE_SYNC_PASSES``).
    """
    from segloop.server import ServerSettings

    auth_text = args.dicomweb_auth or os.environ.get("SEGLOOP_DICOMWEB_AUTH") or ""
    dicomweb_auth = None
    if auth_text:
        user, sep, password = auth_text.partition(":")
        if not sep or not user:
            raise CommandError("--dicomweb-auth must be USER:PASSWORD")
        dicomweb_auth = (user, password)
    if (dicomweb_auth or args.dicomweb_filter) and not args.dicomweb:
        raise CommandError("--dicomweb-auth/--dicomweb-filter need --dicomweb URL")
    from segloop.store.dicomweb_store import parse_filters
    from segloop.store.errors import ValidationError

    try:
        filters = parse_filters(args.dicomweb_filter)
    except ValidationError as exc:
        raise CommandError(str(exc)) from exc

    from segloop.server.settings import SettingsError, parse_jobs_option

    try:
        job_mode, max_running_jobs = parse_jobs_option(str(args.jobs))
    except SettingsError as exc:
        raise CommandError(str(exc)) from exc
    if job_mode is not None and args.job_mode is not None:
        raise CommandError(f"--job-mode {args.job_mode} does not go with --jobs {args.jobs} (jobs run on Ray)")
    job_mode = job_mode or args.job_mode or "process"

    optional: dict[str, Any] = {}
    if args.job_priority is not None:
        optional["job_idle_class"] = args.job_priority == "idle"
    if args.inference_nice is not None:
        optional["inference_nice"] = args.inference_nice
    if args.score_sync_passes is not None:
        optional["score_sync_passes"] = args.score_sync_passes
    if args.stale_after is not None:
        optional["cluster_stale_seconds"] = args.stale_after
    return ServerSettings(
        data=args.data,
        host=args.host,
        port=args.port,
        auth_file=args.auth,
        max_upload_bytes=args.max_upload,
        inference_workers=args.inference_workers,
        inference_queue=args.inference_queue,
        inference_threads=args.inference_threads,
        session_idle_seconds=args.session_idle,
        max_sessions=args.max_sessions,
        job_mode=job_mode,
        max_running_jobs=max_running_jobs,
        job_threads=args.job_threads,
        device=args.device,
        mirror=args.mirror,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        dicomweb_url=args.dicomweb,
        dicomweb_auth=dicomweb_auth,
        dicomweb_filters=filters,
        dicomweb_cache_bytes=args.dicomweb_cache,
        dicomweb_timeout=args.dicomweb_timeout,
        ephemeral=args.ephemeral,
        public_url=args.public_url,
        **optional,
    )


def check_pacs(store: Any) -> None:
    """Ask the PACS once at start and say what it answered. Credentials it refuses stop the
    start (nothing from the PACS would work); an unreachable PACS is a warning (segloop serves
    local images meanwhile and reconnects by itself)."""
    state = store.source.link.check()
    if state.get("reachable"):
        print(f"PACS {store.source.url}: reachable, credentials accepted", file=sys.stderr, flush=True)
        return
    if state.get("code") == "pacs_auth":
        raise CommandError(f"{state['error']} (segloop did not start)")
    print(f"warning: {state.get('error')}; starting anyway: local images work, and PACS calls answer "
          "502/503/504 until the PACS is back (no restart needed)", file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from segloop.server.auth import hash_password, new_token

    if args.hash_password:
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if not password:
            raise CommandError("empty password")
        print(hash_password(password))
        return 0
    if args.new_token:
        token, digest = new_token()
        print(f"token (give it to the client; it is not stored): {token}")
        print("auth file entry (under \"tokens\"):")
        print(json.dumps({"name": "token-name", "role": args.new_token, "sha256": digest}))
        return 0
    if args.data is None:
        raise CommandError("--data DIR is required")

    from segloop.openmp import prefer_passive_openmp

    prefer_passive_openmp()  # before torch loads (see its docstring): clicks stay fast on a busy machine
    import uvicorn

    from segloop.server import SettingsError, create_app

    settings = settings_from_args(args)
    try:
        app = create_app(settings)
    except SettingsError as exc:
        raise CommandError(str(exc)) from exc
    auth = "open (loopback only)" if settings.open else "required"
    print(f"segloop {settings.url}/api/v1  data: {settings.data}  auth: {auth}", file=sys.stderr, flush=True)
    if app.state.segloop.cluster is not None:
        print(f"server database: shared with any other server on it; this one is {settings.advertised_url}",
              file=sys.stderr, flush=True)
    if settings.dicomweb_url:
        mode = " (ephemeral: fetched images leave the disk when their sessions end; unsent labels are kept)" if settings.ephemeral else ""
        print(f"images from DICOMweb {settings.dicomweb_url}{mode}", file=sys.stderr, flush=True)
        check_pacs(app.state.segloop.store)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=10,
    )
    return 0
