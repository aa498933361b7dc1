"""Where the tiles of a tiled run are drizzled: in this process, or on dask.distributed.

``scheduler`` (the configuration field): None runs the tiles here one after another;
``"local"`` / ``"local:N"`` starts a ``dask.distributed.LocalCluster`` of N worker processes (one
thread each; N = the CPU count for ``"local"``) and logs its dashboard address; ``"tcp://host:port"``
(any address dask takes) or the path of a scheduler file uses an existing cluster. Each tile is
one task (:func:`.tiling.drizzle_tile`): at most :data:`IN_FLIGHT_PER_WORKER` per worker thread
are submitted at a time, a task lost with its worker is run again by dask (and ``retries``
more times on an error), and a task returns only its tile's record (the piece is on disk).
Workers read the frames through the same data access as the pipeline, so the file paths must be
reachable from the workers (a shared file system for a remote cluster); objects read in place
(:class:`~.objectstore.ObjectLocation`) travel with their ``storage_options`` (resolved in the
client: anonymous S3, ``AWS_ENDPOINT_URL``) and each worker opens them itself; the bytes each tile
read come back in its record and feed a byte progress bar beside the tile bar. ``selections``
(one list of frame indices per tile, :mod:`.tileselect`) offers each tile only the frames whose
footprints meet it. :class:`TileProgress` is the tile bar: tiles finished, and the frames drizzled
into them summed over the tiles.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import Drizzle3DConfig
from .objectstore import ObjectLocation
from .progress import byte_bar, progress_bar
from .tiling import Tile, drizzle_tile

logger = logging.getLogger(__name__)

#: Tasks submitted per worker thread at a time (one running, one waiting).
IN_FLIGHT_PER_WORKER = 2
#: Extra attempts of a task that raised (a task lost with its worker is rescheduled by dask anyway).
TASK_RETRIES = 2


class TileProgress:
    """One bar over the tiles of a run (:func:`.progress.progress_bar`: drawn only where watched),
    its postfix the frames drizzled so far summed over the finished tiles (a frame that lands in
    three tiles counts three times). ``tiles`` and ``frames`` hold the counts."""

    def __init__(self, n_tiles: int, detector: int, enabled: bool):
        self.bar = progress_bar(n_tiles, f"D{detector} tiles", "tile", enabled)
        self.tiles = 0
        self.frames = 0

    def done(self, record: Dict[str, Any]) -> None:
        """Tile ``record`` finished."""
        self.tiles += 1
        self.frames += len(record["frames"])
        self.bar.set_postfix_str(f"{self.frames} frames drizzled", refresh=False)
        self.bar.update(1)

    def __enter__(self) -> "TileProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()


def run_tiles(paths: Sequence[Any], config: Drizzle3DConfig, detector: int, tiles: Sequence[Tile], key: str,
              scheduler: Optional[str] = None,
              selections: Optional[Sequence[Optional[List[int]]]] = None, waves: Any = None) -> List[Dict[str, Any]]:
    """The records of ``tiles`` (in tile order), drizzled where ``scheduler`` says; tile ``i`` is
    offered the frames ``selections[i]`` (None: all) (module docs); ``waves``: the run's
    :class:`.wavesources.WaveSources` (None: the L2 lookup)."""
    files = [p if isinstance(p, ObjectLocation) else str(p) for p in paths]  # locations pickle with their options
    remote = any(isinstance(p, ObjectLocation) for p in files)
    chosen = list(selections) if selections is not None else [None] * len(tiles)
    with TileProgress(len(tiles), detector, config.progress) as progress, \
            byte_bar(f"D{detector} read", config.progress and remote) as read_bar:
        def done(record: Dict[str, Any]) -> None:
            progress.done(record)
            read_bar.update(int(record.get("bytes_read", 0)))  # bytes the tile's worker read in place

        if scheduler is None:
            records = []
            for tile, select in zip(tiles, chosen):
                records.append(drizzle_tile(files, config, detector, tile, key, select, waves))
                done(records[-1])
            return records
        client, cluster = connect(scheduler)
        try:
            return _run_on(client, files, config, detector, list(zip(tiles, chosen)), key, done, waves)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def connect(scheduler: str) -> Any:
    """``(client, cluster or None)`` for ``scheduler`` (module docs); ImportError naming the
    ``distributed`` extra when dask.distributed is not installed."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ImportError(f"scheduler={scheduler!r} needs dask.distributed: pip install "
                          "'spxquery-drizzle3d[distributed]'") from exc
    if scheduler == "local" or scheduler.startswith("local:"):
        n = int(scheduler[6:]) if scheduler.startswith("local:") else (os.cpu_count() or 1)
        cores = os.cpu_count() or 1
        # Each worker's engine uses its share of the cores (the cube is the same for any thread count).
        env = {"RAYON_NUM_THREADS": str(max(1, cores // n))}
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               env=env)
        client = Client(cluster)
        logger.info("dask LocalCluster: %d worker processes; dashboard %s", n, dashboard(client, local=True))
        return client, cluster
    if Path(scheduler).is_file():
        client = Client(scheduler_file=scheduler)
    else:
        client = Client(scheduler)
    logger.info("dask cluster %s: %d workers; dashboard %s", scheduler, len(client.scheduler_info()["workers"]),
                dashboard(client))
    return client, None


def dashboard(client: Any, local: bool = False) -> str:
    """The address of the cluster's dask dashboard; for a ``local`` cluster a hint when its pages
    cannot draw (bokeh not installed here); a phrase when the cluster serves none."""
    import importlib.util

    try:
        link = client.dashboard_link
    except (KeyError, AttributeError, OSError):
        link = None
    if not link:
        return "not served by this cluster"
    if local and importlib.util.find_spec("bokeh") is None:
        return f"{link} (its pages need bokeh here: pip install bokeh)"
    return str(link)


def _run_on(client: Any, files: List[Any], config: Drizzle3DConfig, detector: int,
            tiles: Sequence[Tuple[Tile, Optional[List[int]]]], key: str, done: Callable[[Dict[str, Any]], None],
            waves: Any = None) -> List[Dict[str, Any]]:
    """Submit the tiles with a bounded number in flight; their records in tile order."""
    from distributed import as_completed

    limit = max(1, IN_FLIGHT_PER_WORKER * sum(client.nthreads().values()))
    files_f = client.scatter(files, broadcast=True)
    config_f = client.scatter(config, broadcast=True)
    waves_f = client.scatter(waves, broadcast=True) if waves is not None else None
    todo = list(tiles)[::-1]
    records: Dict[int, Dict[str, Any]] = {}

    def submit(task: Tuple[Tile, Optional[List[int]]]) -> Any:
        tile, select = task
        return client.submit(drizzle_tile, files_f, config_f, detector, tile, key, select, waves_f,
                             retries=TASK_RETRIES, pure=False,
                             key=f"spxdrizzle-D{detector}-tile{tile.index:05d}-{key[:12]}")

    queue = as_completed([submit(todo.pop()) for _ in range(min(limit, len(todo)))])
    for future in queue:
        record = future.result()
        records[int(record["index"])] = record
        future.release()
        done(record)
        if todo:
            queue.add(submit(todo.pop()))
    return [records[t.index] for t, _ in tiles]


__all__ = ["IN_FLIGHT_PER_WORKER", "TASK_RETRIES", "TileProgress", "connect", "dashboard", "run_tiles"]
