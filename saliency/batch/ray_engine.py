"""The Ray Data engine: decode as CPU tasks, explain in an actor pool that holds the driver's model.

Thin glue: the stages are :func:`~saliency.batch.decoding.decode` (in tasks that never import torch) and
:func:`~saliency.batch.work.explain_decoded`, as in the local engine. The driver's loaded model
goes to every actor through Ray's object store: all actors explain with the same weights (also
random or factory-initialised ones), and worker nodes need neither the weights file nor the
network. Each actor call takes one shard's sources and writes that shard itself (atomically, named
by its sources), so a task that Ray retries after losing a node rewrites the same shard instead of
adding a second copy; Ray's own ``write_parquet`` writes files in place, where a killed worker can
leave half a file. An actor holds one shard at a time: a shard queued behind a busy actor would wait
there while another actor idles.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from saliency.batch.local import Progress
from saliency.batch.sources import Source
from saliency.batch.store import Store
from saliency.batch.decoding import decode_table, from_row
from saliency.batch.work import JobSpec, explain_decoded, write_pictures
from saliency.errors import SaliencyError
from saliency.memory import malloc_environment, reuse_freed_memory
from saliency.models import LoadedModel

# A job of fewer shards than workers is fine: Ray Data's hint that some actors will idle is noise here.
warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)

INSTALL = "pip install 'saliency[ray]'"
DECODE_CPUS = 0.5
"""CPUs a decode task is counted as when sharing a cluster out: decoding is light next to the model."""


def worker_cpus(cluster_cpus: float, workers: int) -> float:
    """Logical CPUs per model actor: one each, fewer where that would leave no room for a decode task."""
    return max(0.1, min(1.0, (cluster_cpus - DECODE_CPUS) / workers))


def decode_tasks(cluster_cpus: float, workers: int) -> int:
    """How many decode tasks run at once: as many as the CPUs the actors leave fit, at least one."""
    return max(1, int((cluster_cpus - workers * worker_cpus(cluster_cpus, workers)) / DECODE_CPUS + 1e-9))


def torch_threads(cluster_cpus: float, workers: int) -> int:
    """Torch threads per model actor: its share of the cluster's CPUs (it asks the scheduler for fewer, to leave
    decode tasks room; decoding is light and overlaps the model, as in the local engine)."""
    return max(1, int(cluster_cpus // workers))


def model_actor_options(cluster_cpus: float, workers: int, gpus_per_worker: float = 0) -> dict[str, Any]:
    """Ray's options for each of ``workers`` model actors: CPUs and GPUs to ask for, and glibc's malloc set from the
    process's start to keep freed memory (:func:`saliency.memory.malloc_environment`; ``mallopt`` in the actor
    would come too late for the Ray thread that calls it)."""
    options: dict[str, Any] = {"num_cpus": worker_cpus(cluster_cpus, workers), "num_gpus": gpus_per_worker or None}
    environment = malloc_environment()
    if environment:
        options["runtime_env"] = {"env_vars": environment}
    return options


def require_ray() -> Any:
    """The ``ray`` module, or one clear error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SaliencyError(f"--engine ray needs Ray Data, which is not installed; install it with: {INSTALL}") from None
    return ray


def connect(address: str | None) -> Any:
    """The ``ray`` module, joined to the cluster at ``address`` (or to a new local one) unless already joined."""
    ray = require_ray()
    if not ray.is_initialized():
        _check_listening(address)
        try:
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SaliencyError(f"cannot join the Ray cluster at {address or 'a new local one'}: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                                f"{_token_hint(address)}") from None
    return ray


def _token_hint(address: str | None) -> str:
    """What to try where a cluster may have refused this driver for want of Ray's authentication token."""
    if not address or os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return ""
    return ("; a cluster that uses token authentication (what `ray start` turns on where a token exists) needs "
            "RAY_AUTH_MODE=token here, and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")


PROBE_SECONDS = 5.0
"""How long a cluster's address may take to accept a connection before the job is refused, and how long its
control store may take to say whether it takes this driver before ``ray.init`` is left to find out."""


def _check_listening(address: str | None) -> None:
    """One clear error where nothing listens at a ``HOST:PORT`` or ``ray://HOST:PORT`` address, or where the cluster
    there refuses this driver for want of its token (Ray itself would keep retrying for seconds to minutes).
    ``auto`` and a new local Ray need no probe: Ray finds or starts those itself."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[1] if address.startswith("ray://") else address
    host, _, port = hostport.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise SaliencyError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        raise SaliencyError(f"cannot join the Ray cluster at {address}: nothing answers at {host}:{port} "
                            f"({exc.strerror or exc}); start one there with `ray start --head`") from None
    if not address.startswith("ray://"):
        _check_token(address)


TOKEN_PROBE = """
import sys
try:
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError
except ImportError:
    sys.exit(0)
try:
    GcsClient(address=sys.argv[1])
except AuthenticationError as exc:
    print(str(exc).split(". ")[0])
    sys.exit(3)
except Exception:
    pass
"""
"""Asks the control store at ``argv[1]`` whether it takes this driver; exit status 3 and Ray's reason where it
wants a token this process lacks."""


def _check_token(address: str) -> None:
    """Ask the cluster's control store whether it takes this driver: Ray's own client answers in milliseconds,
    where ``ray.init`` retries for 20 seconds and logs a line a second. The probe runs in a child process
    (Ray's client logs there, and a port that is not Ray's can keep it waiting: it is stopped after
    :data:`PROBE_SECONDS`); any other answer is left to ``ray.init``."""
    try:
        probe = subprocess.run([sys.executable, "-c", TOKEN_PROBE, address], capture_output=True, text=True,
                               timeout=PROBE_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return
    if probe.returncode == 3:
        reason = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else "authentication failed"
        raise SaliencyError(f"cannot join the Ray cluster at {address}: {reason}{_token_hint(address)}")


def run_ray(spec: JobSpec, loaded: LoadedModel, sources: Sequence[Source], store: Store, shard_size: int,
            progress: Progress, *,
            workers: int = 1, gpus_per_worker: float = 0, address: str | None = None) -> tuple[int, list[str]]:
    """Explain ``sources`` into ``store`` with ``loaded`` (``spec``'s model, loaded here) on a Ray cluster
    (joined at ``address``, else started here)."""
    ray = connect(address)
    if not sources:
        return 0, []
    shared = _shared_model(ray, loaded)
    if shared:  # the actors take the model from the store: the spec need not carry it a second time
        spec = dataclasses.replace(spec, model=loaded.name)
    if spec.png:
        spec = dataclasses.replace(spec, png=os.path.abspath(spec.png))
    items = [{"source": s.id, "data": s.data, "problem": s.problem} for s in sources]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / shard_size)))
    cpus = ray.cluster_resources().get("CPU", 1.0)
    # Decode tasks ask the scheduler for no CPU (a pool size bounds them instead): the actors hold their
    # CPUs until the job ends, so after a lost node their restarts can take every CPU left, and a decode
    # task that must run again (it ran there, or its output was stored there) would wait forever.
    decoded = dataset.map_batches(decode_table, batch_size=shard_size, batch_format="pyarrow",
                                  num_cpus=0, compute=ray.data.TaskPoolStrategy(size=decode_tasks(cpus, workers)),
                                  fn_kwargs={"preprocessing": loaded.preprocessing, "max_pixels": spec.max_pixels,
                                             "base": os.getcwd()})  # a worker's own folder is not the driver's
    summaries = decoded.map_batches(
        _Explainer, batch_size=shard_size, batch_format="pyarrow",
        fn_constructor_kwargs={"spec": spec, "dest": store.location, "job": store.job, "gpus": gpus_per_worker,
                               "threads": torch_threads(cpus, workers), "shared": shared},
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),  # a shard queued on
        # a busy actor would wait there while another actor idles: at 2 shards and 2 workers, one did both
        **model_actor_options(cpus, workers, gpus_per_worker))  # restarted after a lost node,
    # and their calls retried, by Ray Data's defaults (max_restarts=-1, max_task_retries=-1)
    explained, failed = 0, []
    try:
        for summary in summaries.iter_batches(batch_size=None, batch_format="pyarrow"):
            counts = summary.column("explained").to_pylist()
            errors = [s for s, bad in zip(summary.column("source").to_pylist(),
                                          summary.column("failed").to_pylist()) if bad]
            explained += sum(counts)
            failed += errors
            progress(sum(counts) + len(errors), len(errors))
    except (SaliencyError, KeyboardInterrupt):
        raise
    except Exception as exc:  # Ray wraps what a task or actor raised: its reason, in one line
        raise SaliencyError(_reason(exc)) from None
    store.clear_temporary()  # a writer killed with a lost node left one; Ray retried its call, which wrote it whole
    return explained, failed


def check_resources(ray: Any, gpus_per_worker: float) -> None:
    """One clear error, before any work, where no model actor could ever start (Ray would wait for ever)."""
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if gpus_per_worker and gpus < gpus_per_worker:
        raise SaliencyError(f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has {gpus:g} GPU(s); "
                            "use fewer, or none to explain on CPUs")


def _reason(exc: BaseException) -> str:
    """The saliency error inside what Ray raised, else Ray's own last line. Ray keeps the object a task raised
    only as text (its traceback, in the message of the error it wraps it in), so the error is found by its
    type's name there."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SaliencyError):
            return str(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__
    names = tuple(f"{kind.__module__}.{kind.__qualname__}: " for kind in _kinds(SaliencyError))
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(names):
            return line.split(": ", 1)[1]
    return f"the Ray job failed: {lines[-1] if lines else type(exc).__name__}"


def _kinds(kind: type) -> list[type]:
    """``kind`` and every subclass of it."""
    return [kind, *(sub for direct in kind.__subclasses__() for sub in _kinds(direct))]


def prepare_actor(threads: int) -> None:
    """Set up a model actor's process: ``threads`` torch threads (Ray sets ``OMP_NUM_THREADS`` to the CPUs the
    actor asked for, fewer than it may use), and freed memory kept for the next batch (where
    :func:`model_actor_options` could not say so in its environment)."""
    import torch

    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    reuse_freed_memory()


def _shared_model(ray: Any, loaded: LoadedModel) -> list[Any]:
    """``[ref]`` to ``loaded`` in the object store (in a list, so that the actor fetches it itself), or ``[]``
    where it cannot go there (its weights are not on the CPU, or it does not pickle): then each actor loads
    the model from the spec itself."""
    if loaded.device.type != "cpu":
        return []
    try:
        return [ray.put(loaded)]
    except Exception:  # noqa: BLE001 - any pickling failure: fall back to loading by name
        return []


class _Explainer:
    """Ray actor: loads the model once, then explains and writes one shard per call."""

    def __init__(self, spec: JobSpec, dest: str, job: dict, gpus: float, threads: int, shared: list[Any]) -> None:
        import ray
        import torch

        prepare_actor(threads)
        if shared:
            spec = dataclasses.replace(spec, model=ray.get(shared[0]))
        self.spec = spec
        self.loaded = spec.load("cuda" if gpus and torch.cuda.is_available() else None)
        self.classes = spec.classes(self.loaded)
        self.store = Store(dest, job)

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        decoded = [from_row(row) for row in table.to_pylist()]
        rows = explain_decoded(self.loaded, decoded, self.spec, self.classes)
        write_pictures(rows.rows, self.spec, self.loaded.name)
        self.store.write(rows.rows)
        sources = [d.source for d in decoded]
        failed = set(rows.failed)
        return pa.table({"source": sources, "failed": [s in failed for s in sources],
                         "explained": [0 if s in failed else 1 for s in sources]})

