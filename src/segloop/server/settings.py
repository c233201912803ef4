"""Server settings (one dataclass; the CLI fills it from its flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from segloop.server.auth import AuthConfig, AuthConfigError, is_loopback


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {text!r}") from None


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {text!r}") from None


class SettingsError(ValueError):
    """Settings that cannot work together (e.g. a public address without auth)."""


# jobs a server hands to a Ray cluster at once: the cluster's resources decide how many run, the
# others wait in Ray's queue ("waiting for a Ray worker") and can be cancelled there
RAY_MAX_JOBS = 16


def parse_jobs_option(text: str) -> tuple[str | None, int]:
    """``--jobs``: ``N`` (jobs running at once in local child processes; 0: none here),
    ``ray`` (jobs as tasks on a local Ray that segloop starts) or ``ray://HOST:PORT`` (on an
    existing Ray cluster, through its Ray Client port). Returns (the job mode, or None to keep
    ``--job-mode``'s; the jobs running at once). Raises `SettingsError`."""
    from segloop.jobs.executors import is_ray_mode, ray_address

    t = text.strip()
    if t.lstrip("-").isdigit():
        n = int(t)
        if n < 0:
            raise SettingsError("--jobs must be >= 0")
        return None, n
    if is_ray_mode(t):
        try:
            ray_address(t)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        return t.rstrip("/"), RAY_MAX_JOBS
    raise SettingsError(f"--jobs takes a number, 'ray' or 'ray://HOST:PORT', not {text!r}")


@dataclass
class ServerSettings:
    """Everything `create_app` needs.

    Attributes:
        data: the data folder (store + ``jobs.db``), created when missing.
        host, port: where uvicorn binds; ``host`` also decides whether auth is required.
        auth_file / auth: the auth configuration (file path, or an already loaded config).
        max_upload_bytes: largest accepted request body for uploads (images, labels); larger → 413.
        inference_workers: threads running inference/clicks/evaluations in the server process.
        inference_queue: requests allowed to wait for a worker; beyond that → 429 + Retry-After.
        inference_threads: torch intra-op threads of the server process (None: all cores).
        inference_nice: nice value of the inference pool's threads (and the torch threads they
            start), so list and volume requests stay fast during inference. Default 5, or the
            ``SEGLOOP_INFERENCE_NICE`` environment variable. With other busy processes on the
            machine (a browser rendering the viewer, training), nice 10 left a click a tenth of a
            contended core; nice 5 about a quarter, and list/volume latency during back-to-back
            clicks stayed as at nice 10 (benchmarks/results/click-priority.json). ``segloop serve``
            also makes OpenMP threads sleep instead of spin when they wait
            (`prefer_passive_openmp`): spinning low-priority threads starve their partners, a
            click took ~5x the time and ~7x the CPU.
        session_idle_seconds: an interactive session unused this long is closed.
        max_sessions: open interactive sessions at most; one more → 429.
        job_mode: "process" (each job in a spawned child process), "thread", "ray" (each job a
            task on a local Ray that segloop starts) or "ray://HOST:PORT" (on an existing Ray
            cluster; `segloop.jobs.ray_executor`, docs/deploy.md). Ray needs ``segloop[ray]``.
        max_running_jobs: background jobs running at once (others wait queued). 0 (only with a
            server database shared by several servers): this server runs none, the others do.
            With Ray: jobs handed to the cluster at once (`RAY_MAX_JOBS` from ``--jobs ray``).
        job_threads: torch threads of a job's child process (None: cores - 1, at least 1); with
            Ray, the CPUs a job's task reserves and its torch threads (None: 1).
        job_idle_class: training and scoring processes run in Linux's ``SCHED_IDLE`` class (on
            top of nice 10): they take CPU only when the server leaves it idle, so requests and
            clicks stay fast during training. On a machine shared with other busy work they then
            get very little CPU; False leaves them at nice 10 (about a tenth of a contended core).
            Default on, or the ``SEGLOOP_JOB_IDLE_CLASS`` environment variable (0 = off).
        device: torch device for inference and jobs (None: CUDA when available).
        mirror: automatic results of the inference pool (infer, session starts) with test-time
            mirroring (`segloop.ml.predictor.Predictor.mirror_axes`); False: one network pass.
        score_sync_passes: `GET /next` scores the images that lack a cached score itself (in the
            inference pool) when that costs at most this many forward passes, and starts a
            ``score`` job otherwise (see `segloop.server.scoring`); 0: always a job. Default 16,
            or the ``SEGLOOP_SCORE_SYNC_PASSES`` environment variable.
        volume_cache_bytes: image files (gzip NIfTI) kept in memory for volume fetches
            (`segloop.server.filecache`); 0 disables it.
        gil_switch_interval: seconds a thread may hold the GIL while another waits for it
            (`sys.setswitchinterval`; Python's default is 0.005). Inference threads release and
            re-take the GIL around every torch op, and a waiting event loop only gets it when
            this interval forces a hand-over: each request then pays up to this much per GIL
            wait. None leaves Python's default.
        tls_cert, tls_key: serve HTTPS with this certificate and key.
        dicomweb_url / dicomweb_auth / dicomweb_filters / dicomweb_cache_bytes: images come
            from this DICOMweb server (QIDO filters; fetched series cache bound), everything
            else stays in ``data`` (`segloop.store.dicomweb_store`).
        dicomweb_timeout: seconds the PACS may stay silent before a call fails (504).
        ephemeral: with ``dicomweb_url``: images fetched from the PACS (and their labels) are
            deleted from local disk when released and when the server stops.
        public_url: where clients reach this server (``https://annotate-2.lab.example``) when it
            is behind a reverse proxy; with a server database the others send the clients of
            this server's interactive sessions there (421). Default: ``url`` (with the host
            name for a wildcard bind address).
        cluster_stale_seconds: with a server database (several servers on one store): a server
            not heard from this long is taken for dead and its running jobs are marked
            interrupted (`segloop.jobs.relay`). Default 30, or ``SEGLOOP_CLUSTER_STALE_SECONDS``.
    """

    data: Path
    host: str = "127.0.0.1"
    port: int = 8000
    auth_file: Path | None = None
    auth: AuthConfig | None = None
    max_upload_bytes: int = 2 * 1024**3
    inference_workers: int = 1
    inference_queue: int = 4
    inference_threads: int | None = None
    inference_nice: int = field(default_factory=lambda: _env_int("SEGLOOP_INFERENCE_NICE", 5))
    session_idle_seconds: float = 900.0
    max_sessions: int = 8
    job_mode: str = "process"
    max_running_jobs: int = 2
    job_threads: int | None = None
    job_idle_class: bool = field(default_factory=lambda: _env_int("SEGLOOP_JOB_IDLE_CLASS", 1) != 0)
    device: str | None = None
    mirror: bool = True
    score_sync_passes: int = field(default_factory=lambda: _env_int("SEGLOOP_SCORE_SYNC_PASSES", 16))
    volume_cache_bytes: int = 256 * 1024**2
    gil_switch_interval: float | None = 0.001
    tls_cert: Path | None = None
    tls_key: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # --- DICOMweb image source (issue 7) ---
    dicomweb_url: str | None = None
    dicomweb_auth: tuple[str, str] | None = None
    dicomweb_filters: dict[str, str] = field(default_factory=dict)
    dicomweb_cache_bytes: int = 2 * 1024**3
    dicomweb_timeout: float = 10.0
    ephemeral: bool = False
    # --- several servers on one server database (issue 14, docs/deploy.md) ---
    public_url: str | None = None
    cluster_stale_seconds: float = field(default_factory=lambda: _env_float("SEGLOOP_CLUSTER_STALE_SECONDS", 30.0))

    def resolve(self) -> ServerSettings:
        """Load the auth file and check the combination; raises `SettingsError`."""
        self.data = Path(self.data)
        if self.auth is None and self.auth_file is not None:
            try:
                self.auth = AuthConfig.load(self.auth_file)
            except AuthConfigError as exc:
                raise SettingsError(str(exc)) from exc
        if self.auth is None and not is_loopback(self.host):
            raise SettingsError(
                f"refusing to listen on {self.host} without authentication: pass --auth FILE "
                "(users with roles and/or API tokens), or bind to 127.0.0.1"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("TLS needs both --tls-cert and --tls-key")
        for p in (self.tls_cert, self.tls_key):
            if p is not None and not Path(p).is_file():
                raise SettingsError(f"{p}: TLS file does not exist")
        if self.max_upload_bytes < 1:
            raise SettingsError("max upload size must be positive")
        if self.inference_workers < 1 or self.inference_queue < 0:
            raise SettingsError("inference workers must be >= 1 and the queue >= 0")
        if not 0 <= self.inference_nice <= 19:
            raise SettingsError("inference nice must be between 0 and 19")
        if self.inference_threads is not None and self.inference_threads < 1:
            raise SettingsError("inference threads must be >= 1")
        if self.gil_switch_interval is not None and not 1e-6 <= self.gil_switch_interval <= 1.0:
            raise SettingsError("gil_switch_interval must be between 1e-6 and 1 second")
        if self.score_sync_passes < 0:
            raise SettingsError("score_sync_passes must be >= 0")
        if self.max_running_jobs < 0:
            raise SettingsError("--jobs must be >= 0")
        if self.max_running_jobs == 0:
            from segloop.store.database import configured_url, is_sqlite

            url = configured_url()
            if url is None or is_sqlite(url):
                raise SettingsError(
                    "--jobs 0 leaves background jobs to other servers on the same server database "
                    "(--db postgresql://...); with SQLite nobody would run them"
                )
        from segloop.jobs.executors import is_ray_mode, ray_address

        if is_ray_mode(self.job_mode):
            import importlib.util

            from segloop.jobs.ray_executor import INSTALL_HINT

            try:
                ray_address(self.job_mode)
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
            if importlib.util.find_spec("ray") is None:
                raise SettingsError(f"--jobs {self.job_mode} needs Ray: {INSTALL_HINT}")
        elif self.job_mode not in ("process", "thread"):
            raise SettingsError("job mode must be 'process', 'thread', 'ray' or 'ray://HOST:PORT'")
        if self.ephemeral and not self.dicomweb_url:
            raise SettingsError("--ephemeral needs --dicomweb URL (it applies to images fetched from a PACS)")
        if self.dicomweb_url and not self.dicomweb_url.startswith(("http://", "https://")):
            raise SettingsError(f"--dicomweb {self.dicomweb_url!r} must be an http:// or https:// URL")
        if not 0 < self.dicomweb_timeout <= 3600:
            raise SettingsError(f"--dicomweb-timeout must be between 0 and 3600 seconds, got {self.dicomweb_timeout}")
        if self.public_url is not None:
            self.public_url = self.public_url.strip().rstrip("/")
            if not self.public_url.startswith(("http://", "https://")):
                raise SettingsError(f"--public-url {self.public_url!r} must be an http:// or https:// URL")
        if not 1.0 <= self.cluster_stale_seconds <= 3600:
            raise SettingsError(
                f"the stale time of a server must be between 1 and 3600 seconds, got {self.cluster_stale_seconds}"
            )
        return self

    @property
    def open(self) -> bool:
        return self.auth is None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def advertised_url(self) -> str:
        """The URL other servers give the clients of this one (``public_url``, else ``url`` with
        this machine's name in place of a wildcard bind address)."""
        if self.public_url:
            return self.public_url
        if self.host in ("0.0.0.0", "::", ""):
            import socket

            name = socket.gethostname()  # not getfqdn(): a DNS lookup may hang where there is no DNS
            host = f"[{name}]" if ":" in name else name
            return f"{self.scheme}://{host}:{self.port}"
        return self.url

    @staticmethod
    def default_job_threads() -> int:
        return max(1, (os.cpu_count() or 1) - 1)
