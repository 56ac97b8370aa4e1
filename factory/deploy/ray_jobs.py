"""Factory runs as Ray jobs on a cluster, through Ray's Jobs API (``JobSubmissionClient``).

``submit`` validates the spec here, before anything is uploaded, then asks the cluster's job
server to run ``python -m factory.cli.main run JOB --run-id ID`` in an uploaded copy of the working
directory. The submission id *is* the run id, so every other call takes the run id.

Ray reports the entrypoint's exit code: 0 is SUCCEEDED, anything else FAILED, including the
factory's exit code 1 (the run committed, but some rows failed or were rejected); ``status``
carries ``exit_code`` so a caller can tell a partial run from a run that did not finish.

Authentication: where the cluster has Ray token authentication on, requests carry
``Authorization: Bearer <token>``. The token is Ray's own: ``RAY_AUTH_TOKEN``, else the file
named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (Ray's loader reads them). Like
Ray's own clients it is sent to any address when ``RAY_AUTH_MODE=token``; like ``ray.init()``
finding a local cluster, it is also sent to a loopback address unless ``RAY_AUTH_MODE=disabled``.
It never goes into the job's metadata, runtime env, entrypoint, log lines or error messages.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from factory.core import settings

if TYPE_CHECKING:
    from factory.spec.job import Job

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
#: A submission in one of these has not ended: it holds (or waits for) the job's resources.
ACTIVE = frozenset({"PENDING", "RUNNING"})
#: The metadata key ``submit`` tags each submission with: the job's name (``Job.name``), by
#: which ``running`` finds a job's runs whoever submitted them.
JOB_NAME_KEY = "job_name"
AGENT_WAIT_S = 30.0
#: Secrets never uploaded with the working directory, wherever they lie in it (gitignore
#: syntax): env files, private keys and certificates, cloud and SSH credential folders.
#: A job spec that needs one of them is refused (``_upload_excludes``), not quietly cut.
SECRETS = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", "*.p12", ".netrc",
           ".git-credentials", ".aws/", ".ssh/", ".gcloud/", "**/.config/gcloud/")
#: Never uploaded with the working directory (gitignore syntax; .gitignore applies as well).
EXCLUDES = (".venv", ".git", "build", "demo-out", "out", "**/__pycache__", "*.pyc",
            ".pytest_cache", "*.egg-info", "*.parquet", "*.safetensors", "*.onnx", "*.ckpt",
            "*.bin", "*.pt", "*.pth", *SECRETS)

logger = logging.getLogger(__name__)


class JobsError(RuntimeError):
    """A job request that cannot be done; the message names the address or run id."""


class AlreadySubmittedError(JobsError):
    """The run id was already submitted to this cluster (Ray keeps submission ids unique)."""


def submit(job_path: str, *, address: str, run_id: str | None = None, season: str | None = None,
           refresh: bool = False, working_dir: str = ".", budget_usd: Decimal | None = None) -> str:
    """Validate a job spec here, then submit it to the cluster as a Ray job.

    Args:
        job_path: The job spec; it must lie inside ``working_dir``, which is uploaded.
        address: The cluster's job server (dashboard) address, ``http://host:8265``.
        run_id: Override the run id (default: the spec's, else ``submission_id``); it is also
            the submission id.
        season: A season of the spec, or "none"; default: the one whose dates hold today. The
            choice is validated here and pinned with ``--season``.
        refresh: Run ``factory refresh`` instead of ``factory run``.
        working_dir: The directory uploaded as the job's working directory.
        budget_usd: ``--budget`` for the run (``factory.cost.budget``), over the spec's.

    Returns:
        The submission id (the run id).

    Raises:
        AlreadySubmittedError: The run id was already submitted to this cluster.
        JobsError: A spec or season that does not validate, files the upload would leave out,
            or a cluster that cannot be reached.
    """
    from factory.spec.job import SpecError, load_job

    try:
        job = load_job(job_path).with_season(season).with_overrides(budget_usd=budget_usd)
        job = job.with_overrides(run_id=run_id) if run_id else job
    except SpecError as exc:
        raise JobsError(str(exc)) from exc
    if not run_id:  # Ray needs the submission id now, before the cluster reads the manifest
        job = job.with_overrides(run_id=submission_id(job, refresh=refresh))
    # The season chosen here (by name, or by today's date) is pinned: the run id names it.
    pinned = (job.season or "none") if job.seasons else None
    root = Path(working_dir).resolve()
    spec_rel = _inside(root, Path(job_path).resolve(), f"job spec {job_path}")
    excludes = _upload_excludes(job, root, spec_rel)
    client = _client(address)
    duplicate = (f"run {job.run_id} was already submitted to the Ray cluster at {address} "
                 "(Ray keeps submission ids unique); give another --run-id")
    if _info(client, job.run_id, address, missing_ok=True) is not None:
        raise AlreadySubmittedError(duplicate)
    runtime_env = {"working_dir": str(root), "excludes": excludes, "env_vars": _job_env()}
    metadata = {JOB_NAME_KEY: job.name, "catalog": job.manifest_uri, "season": job.season or "",
                "run_id": job.run_id}
    command = entrypoint(spec_rel, job.run_id, season=pinned, refresh=refresh,
                         budget_usd=budget_usd)
    deadline = time.monotonic() + AGENT_WAIT_S
    with _errors(address, f"submitting run {job.run_id}"):
        while True:
            try:
                return client.submit_job(entrypoint=command, submission_id=job.run_id,
                                         runtime_env=runtime_env, metadata=metadata)
            except RuntimeError as exc:
                if "already exists" in str(exc):  # submitted by someone else since the check
                    raise AlreadySubmittedError(duplicate) from None
                # A cluster that has just started answers 500 "No available agent to submit
                # job, please try again later" until a node's job agent is up.
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(1.0)


def submission_id(job: Job, *, refresh: bool = False,
                  now: datetime | None = None) -> str:
    """A new run id for one submission: ``<job>[-<season>]-<spec hash>[-refresh]-<UTC time>``.

    Each submission is its own run (work already in the store is still never rendered again);
    the id must exist before the cluster has read the manifest, so it cannot be the derived id.
    """
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    slug = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in job.name)[:64].strip("-")
    season = f"-{job.season}" if job.season else ""
    kind = "-refresh" if refresh else ""
    return f"{slug or 'job'}{season}-{job.spec_hash[:12]}{kind}-{stamp}"


def entrypoint(spec_rel: str, run_id: str, *, season: str | None = None,
               refresh: bool = False, budget_usd: Decimal | None = None) -> str:
    """The shell command the job runs, in the uploaded working directory."""
    args = ["python", "-m", "factory.cli.main", "refresh" if refresh else "run", spec_rel,
            "--run-id", run_id]
    if season:
        args += ["--season", season]
    if budget_usd is not None:
        args += ["--budget", format(budget_usd, "f")]
    return shlex.join(args)


def status(run_id: str, *, address: str) -> dict[str, Any]:
    """One submitted run: ``status`` (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED),
    ``message``, ``exit_code``, ``start_time``/``end_time`` (ISO 8601, UTC), ``metadata``,
    ``entrypoint`` and ``runtime_env``."""
    info = _info(_client(address), run_id, address)
    return {"run_id": run_id, "status": str(info.status.value), "message": info.message or "",
            "exit_code": info.driver_exit_code, "start_time": _iso(info.start_time),
            "end_time": _iso(info.end_time), "metadata": dict(info.metadata or {}),
            "entrypoint": info.entrypoint, "runtime_env": dict(info.runtime_env or {})}


def logs(run_id: str, *, address: str, follow: bool, out: Callable[[str], None]) -> None:
    """Pass the run's driver output to ``out``: all of it so far, or, with ``follow``, chunk
    by chunk as it comes until the job ends."""
    client = _client(address)
    _info(client, run_id, address)  # an unknown run id fails here, not inside the websocket

    async def tail() -> None:
        async for chunk in client.tail_job_logs(run_id):
            out(chunk)

    with _errors(address, f"reading the logs of run {run_id}"):
        if follow:
            asyncio.run(tail())
        else:
            out(client.get_job_logs(run_id))


def stop(run_id: str, *, address: str) -> bool:
    """Ask the cluster to stop the run (SIGTERM, then SIGKILL); True if it was still running."""
    client = _client(address)
    _info(client, run_id, address)
    with _errors(address, f"stopping run {run_id}"):
        return bool(client.stop_job(run_id))


def list_jobs(*, address: str) -> list[dict[str, Any]]:
    """Every submitted job on the cluster, oldest first: ``run_id``, ``status``, ``job_name``,
    ``season``, ``start_time``."""
    client = _client(address)
    with _errors(address, "listing jobs"):
        found = [info for info in client.list_jobs() if info.submission_id]  # not ray.init()s
    found.sort(key=lambda info: info.start_time or 0)
    return [{"run_id": info.submission_id, "status": str(info.status.value),
             "job_name": (info.metadata or {}).get(JOB_NAME_KEY, ""),
             "season": (info.metadata or {}).get("season", ""),
             "start_time": _iso(info.start_time)} for info in found]


def running(job_name: str, *, address: str) -> list[str]:
    """The run ids of ``job_name``'s submissions that have not ended (PENDING or RUNNING),
    oldest first: every run ``submit`` sent to this cluster, from any machine or scheduler.
    Ray jobs submitted some other way carry no job name and are not counted."""
    return [j["run_id"] for j in list_jobs(address=address)
            if j["job_name"] == job_name and j["status"] in ACTIVE]


def wait(run_id: str, *, address: str, timeout_s: float, poll_s: float = 1.0) -> str:
    """Poll until the run reaches a terminal status (SUCCEEDED, FAILED, STOPPED); return it.

    Raises:
        JobsError: The run is unknown, or still not finished after ``timeout_s``.
    """
    client = _client(address)
    deadline = time.monotonic() + timeout_s
    while (state := str(_info(client, run_id, address).status.value)) not in TERMINAL:
        if time.monotonic() >= deadline:
            raise JobsError(f"run {run_id} on {address} is still {state} after {timeout_s:g} s")
        time.sleep(poll_s)
    return state


@contextmanager
def _errors(address: str, doing: str) -> Iterator[None]:
    """Ray's client errors as JobsErrors that name the address (Ray's texts carry no token)."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except JobsError:
        raise
    except AuthenticationError as exc:
        reason = str(exc).splitlines()[0].split(". ")[0]
        raise JobsError(
            f"{doing}: the Ray cluster at {address} has token authentication on and refused the "
            f"request ({reason}); set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or "
            "~/.ray/auth_token), and RAY_AUTH_MODE=token for a cluster on another host"
        ) from None
    except OSError as exc:  # ConnectionError, requests' and aiohttp's connection errors
        raise JobsError(f"{doing}: cannot reach the Ray job server at {address}: "
                        f"{type(exc).__name__}: {exc}") from None
    except (RuntimeError, ValueError) as exc:
        raise JobsError(f"{doing} on {address} failed: {exc}") from None


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    if "://" not in address:
        address = f"http://{address}"
    with _errors(address, "connecting"):
        return JobSubmissionClient(address, headers=_auth_headers(address))


def _auth_headers(address: str) -> dict[str, str]:
    """Ray's token as an Authorization header where Ray would send it (module docstring)."""
    from ray._raylet import AuthenticationTokenLoader

    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()  # Ray's own switch
    if mode == "disabled" or (mode != "token" and not _is_loopback(address)):
        return {}
    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # Ray caches the token per process; read the variables as they are now
    return dict(loader.get_token_for_http_header(ignore_auth_mode=True) or {})


def _is_loopback(address: str) -> bool:
    host = urlsplit(address).hostname or ""
    try:
        return host == "localhost" or ip_address(host).is_loopback
    except ValueError:
        return False


def _info(client, run_id: str, address: str, *, missing_ok: bool = False):
    """Ray's ``JobDetails`` for the run; None (``missing_ok``) or JobsError if unknown."""
    with _errors(address, f"asking about run {run_id}"):
        try:
            return client.get_job_info(run_id)
        except RuntimeError as exc:
            if "404" not in str(exc) and "does not exist" not in str(exc):
                raise
    if missing_ok:
        return None
    raise JobsError(f"no run {run_id} was submitted to the Ray cluster at {address}")


def _job_env() -> dict[str, str]:
    """Non-secret settings for the job's driver. ``auto``: the job's driver joins the cluster
    it runs on (Ray sets RAY_ADDRESS there) instead of starting a local Ray."""
    return {settings.RAY_ADDRESS: "auto", settings.LOG_LEVEL: settings.log_level(),
            "PYTHONUNBUFFERED": "1"}


def _upload_excludes(job, root: Path, spec_rel: str) -> list[str]:
    """EXCLUDES plus re-includes of what the job reads; refuse paths it could not use there."""
    if "://" not in job.output.uri and not Path(job.output.uri).is_absolute():
        raise JobsError(f"{job.source}: output.uri '{job.output.uri}' is relative: on the cluster "
                        "it would land in the job's temporary copy of the working directory; "
                        "give an absolute path the cluster can write, or s3://...")
    needed = [spec_rel]
    if "://" not in job.manifest_uri and not Path(job.manifest_uri).is_absolute():
        needed.append(_inside(root, (root / job.manifest_uri).resolve(),
                              f"manifest {job.manifest_uri}"))
    for rel in needed:  # a re-include must never bring a secret back
        if not _uploaded(root, Path(rel), list(SECRETS), ignore_files=False):
            raise JobsError(f"{rel} is where secrets are kept ({', '.join(SECRETS)}), and "
                            f"`factory submit` never uploads those; move the file out of it")
    excludes = [*EXCLUDES, *(f"!/{rel}" for rel in needed)]
    for rel in needed:
        if not (root / rel).is_file() or not _uploaded(root, Path(rel), excludes):
            raise JobsError(f"{rel} is not a file that the upload of {root} keeps (a .gitignore, "
                            ".rayignore or excluded folder leaves it out); move it, or give the "
                            "manifest as an absolute path or s3:// URI")
    return excludes


def _uploaded(root: Path, rel: Path, excludes: list[str], *, ignore_files: bool = True) -> bool:
    """Whether Ray's working_dir upload keeps ``rel``: Ray's own matchers, walked as Ray walks
    (a folder left out takes everything under it). ``ignore_files`` false: ``excludes`` alone,
    without the ``.gitignore``/``.rayignore`` files on the way. Needs Ray installed, not a
    cluster."""
    from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files

    checks = [_get_excludes(root, excludes)]
    path = root
    for part in rel.parts:
        if ignore_files:
            checks += get_excludes_from_ignore_files(path, include_gitignore=True,
                                                     logger=logger)
        path = path / part
        if any(check(path) for check in checks):
            return False
    return True


def _inside(root: Path, path: Path, what: str) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise JobsError(f"{what} is outside the working directory {root}, which is what "
                        "gets uploaded") from None


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")
