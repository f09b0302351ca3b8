"""Loading a job: executing a job file (or importing a module) and finding the one
:class:`~backfill.job.Job` it declares, with errors that say what to fix."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
from pathlib import Path
from typing import Any

from backfill.errors import ConfigError
from backfill.job.model import Job
from backfill.secrets import Masker

__all__ = ["load_job", "load_job_module"]

# The name users know from before the job became a package (and tests listen to).
log = logging.getLogger("backfill.job")


def load_job_module(path: Path) -> Any:
    """Execute a job file as module ``backfill_job_<stem>`` (also in worker processes)."""
    if not path.exists():
        raise ConfigError(
            f"job file {path} does not exist; pass the path of a Python file or MODULE:ATTR"
        )
    if path.suffix != ".py" or not path.is_file():
        raise ConfigError(f"job {path} is not a Python file; pass a .py file or MODULE:ATTR")
    module_name = f"backfill_job_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load job file {path}; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    # Let a job file import the helpers that sit beside it.
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ConfigError(
            f"job file {path} has a syntax error at line {exc.lineno}: {exc.msg}; fix it and "
            "run again"
        ) from exc
    except ConfigError as exc:
        detail = _masked(module, " ".join(str(exc).split()))
        raise ConfigError(f"job file {path}: {detail}") from exc
    except SystemExit as exc:
        raise ConfigError(
            f"job file {path} exits while it is imported (sys.exit({exc.code!r})"
            f"{_line_in(exc, path)}); a job file must only declare the job: move that call "
            "under `if __name__ == '__main__':`"
        ) from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        detail = _masked(module, " ".join(str(exc).split()))
        raise ConfigError(
            f"job file {path} failed to load{_line_in(exc, path, ' at')}: "
            f"{type(exc).__name__}: {detail}"
        ) from exc
    finally:
        if sys.path and sys.path[0] == str(path.resolve().parent):
            sys.path.pop(0)
    return module


def _masked(module: Any, message: str) -> str:
    """An error raised while a job file loads may quote a secret: mask what looks secret,
    and whatever the jobs declared before the error."""
    declared = [s for v in vars(module).values() if isinstance(v, Job) for s in v.declared_secrets]
    return Masker(declared).mask(message)


def _line_in(exc: BaseException, path: Path, prefix: str = " at") -> str:
    """`` at line N``: the last line of ``path`` that ``exc`` passed through, if any."""
    line = ""
    # The import machinery names the file by its absolute path.
    names = {str(path), str(path.absolute())}
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in names:
            line = f"{prefix} line {tb.tb_lineno}"
        tb = tb.tb_next
    return line


def load_job(target: str) -> Job:
    """Load a job from ``path/to/job.py``, ``path/to/job.py:ATTR`` or ``package.module:ATTR``."""
    attr: str | None = None
    location = target
    if ":" in target and not Path(target).exists():
        location, _, attr = target.rpartition(":")
    if location.endswith(".py") or Path(location).exists() or "/" in location:
        module = load_job_module(Path(location))
        where = f"job file {location}"
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import job module {location!r} ({Masker().mask(str(exc))}); pass a "
                ".py file or MODULE:ATTR"
            ) from exc
        where = f"module {location}"
    if attr is not None:
        job = getattr(module, attr, None)
        if not isinstance(job, Job):
            raise ConfigError(f"{where} has no backfill.Job named {attr!r}")
    else:
        jobs = [v for v in vars(module).values() if isinstance(v, Job)]
        if not jobs:
            raise ConfigError(f"{where} defines no backfill.Job; create one with Job('name', ...)")
        if len({id(j) for j in jobs}) > 1:
            names = ", ".join(sorted(k for k, v in vars(module).items() if isinstance(v, Job)))
            raise ConfigError(f"{where} defines several jobs ({names}); pick one with PATH:NAME")
        job = jobs[0]
    if not job.stages:
        raise ConfigError(f"job {job.name!r} has no stages; declare one with @job.stage")
    for secret in job.masker().too_short:
        log.warning(
            "%s is declared secret but has only %d character(s), too short to mask: it is "
            "shown as is wherever it appears (a value that is no secret can go in each "
            "request's own params or headers instead)",
            secret.where,
            len(secret.value),
        )
    return job
