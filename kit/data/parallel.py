"""The fast machinery behind kit.data's reference path (`kit/data/convert.py`), for large exports: reading a CSV
in two processes, and assembling in worker processes. Each gives exactly what the reference path gives in one
process (tests/test_data_rules.py checks both); `kit.data.columnar` is the third piece (reading by columns).
"""

from __future__ import annotations

import io
import itertools
import multiprocessing
import os
import pickle
import queue

from kit.data import read
from kit.data.conversation import Batch

# Below this many records a source is assembled in-process: starting workers costs more than it saves.
PARALLEL_MIN_RECORDS = 50_000
# CSV exports from this size on that are not read by columns are read in two processes (about 50,000
# records of ticket threads).
PARALLEL_MIN_BYTES = 8 << 20
CHUNK_RECORDS = 4_000


# -- reading a CSV in two processes -------------------------------------------------------------------

def group_in_two(reader, split: tuple[int, int], groups: dict, metadata: dict) -> int:
    """`reader.group` for a CSV read in two processes: a forked child reads from the split offset on while
    this process reads up to it. The child's part is used only when this process's reading reaches
    a record boundary exactly at the split (else it reads on by itself), so the result is the one
    a single pass gives: the same groups in the same order, the same record numbers and rejects."""
    offset, lines_before = split
    context = multiprocessing.get_context("fork")
    connection, child_end = context.Pipe(duplex=False)
    child = context.Process(target=_group_tail, args=(reader, offset, lines_before, child_end), daemon=True)
    child.start()
    child_end.close()
    records = reader.source.records()
    boundary: list = []

    def head():
        for item in records:
            if item[0] > lines_before:  # the first record that starts after the split
                boundary.append(item)
                return
            yield item

    try:
        number = reader.group(head(), groups, metadata)
        tail = None
        if boundary and boundary[0][0] == lines_before + 1:
            try:
                tail = pickle.loads(connection.recv_bytes())
            except (EOFError, OSError, pickle.UnpicklingError):
                tail = None
    finally:
        connection.close()
        if child.is_alive():
            child.kill()
        child.join()
    if tail is None:  # the split was not a record boundary (or the child failed): read on here
        return reader.group(itertools.chain(boundary, records), groups, metadata, start=number + 1)
    reader.how = "in 2 processes"
    count, tail_groups, tail_metadata, rejects, names = tail
    untimed = reader.get_time is None  # then a message's time is its record number
    for group in tail_groups.values():
        for message in group:
            message[1] += number
            if untimed:
                message[0] += number
    for entry in rejects:
        entry["record"] += number
    reader.rejects.extend(rejects)
    reader.names_seen.update(names)
    for key, group in tail_groups.items():
        mine = groups.get(key)
        if mine is None:
            groups[key] = group
            metadata[key] = tail_metadata[key]
        else:
            mine.extend(group)
    return number + count


def _group_tail(reader, offset: int, lines_before: int, connection) -> None:
    """In the child: group the records from `offset` on (record numbers from 1) and send them back."""
    try:
        source = reader.source
        reader.rejects, reader.names_seen = [], set()
        records = ((line, row, problem, row) for line, row, problem in
                   read.csv_records(source.path, source.encoding, source.delimiter, offset, lines_before))
        groups: dict[str, list] = {}
        metadata: dict[str, dict] = {}
        count = reader.group(records, groups, metadata)
        connection.send_bytes(_dumps_tree((count, groups, metadata, reader.rejects, reader.names_seen)))
    except Exception:  # the parent reads on by itself
        pass
    finally:
        connection.close()
        os._exit(0)


# -- assembling in worker processes ---------------------------------------------------------------


def _dumps_tree(value) -> bytes:
    """Pickle plain data with no object met twice that matters (no cycles): without the memo, which on
    half a million messages makes pickling and unpickling about a third slower (a repeated object, such
    as a role string, is written each time and read back as equal copies)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(value)
    return buffer.getvalue()


def _take(counter, total: int) -> int | None:
    """The next chunk to assemble, from the counter every assembly process shares; None when all are taken."""
    with counter.get_lock():
        index = counter.value
        if index >= total:
            return None
        counter.value = index + 1
    return index


def _assemble_in_worker(assembler, method: str, items, bounds: list, counter, results) -> None:
    """A forked assembly process: take chunks until none is left; send each batch back (pickled without
    the memo, see `_dumps_tree`), then None. An error is sent back to be raised in the parent."""
    try:
        while (index := _take(counter, len(bounds))) is not None:
            start, end = bounds[index]
            results.put((index, _dumps_tree(getattr(assembler, method)(items[start:end]))))
    except BaseException as exc:  # noqa: BLE001 - the parent raises it
        results.put((-1, pickle.dumps(exc)))
    finally:
        results.put(None)
        results.close()
        results.join_thread()


def _chunks(items: list, sizes: list[int], target: int) -> list[tuple[int, int]]:
    bounds, start, count = [], 0, 0
    for index, size in enumerate(sizes):
        count += size
        if count >= target:
            bounds.append((start, index + 1))
            start, count = index + 1, 0
    if start < len(items):
        bounds.append((start, len(items)))
    return bounds


def worker_count(settings, records: int, large: bool = False) -> int:
    """Worker processes for phase 2: the setting, else one per CPU core for large sources (`large`: the
    caller knows the source is large)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0  # workers inherit the groups by fork; without it, assemble in-process
    if settings.workers is not None:
        return settings.workers if settings.workers > 1 else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, 8) if (large or records >= PARALLEL_MIN_RECORDS) and cores > 1 else 0


def assemble(assembler, method: str, items, records: int, settings) -> list[Batch]:
    workers = worker_count(settings, records)
    if not workers:
        return [getattr(assembler, method)(items)]
    sizes = [1] * len(items) if method == "qa_pairs" else items.sizes()
    bounds = _chunks(items, sizes, CHUNK_RECORDS)
    # This process and `workers - 1` forked ones (which inherit the items) take the chunks in turn from a
    # shared counter, so that none waits for another while chunks are left; a chunk done here is neither
    # pickled nor copied.
    context = multiprocessing.get_context("fork")
    counter = context.Value("q", 0)
    results = context.Queue()
    processes = [context.Process(target=_assemble_in_worker, args=(assembler, method, items, bounds, counter, results),
                                 daemon=True) for _ in range(workers - 1)]
    for process in processes:
        process.start()
    batches: list = [None] * len(bounds)
    running = len(processes)

    def receive(block: bool) -> None:
        nonlocal running
        while running:
            try:
                item = results.get(block, 1.0)
            except queue.Empty:
                if not block:
                    return
                if any(p.exitcode not in (None, 0) for p in processes):
                    raise RuntimeError("an assembly process ended without its results (out of memory?); "
                                       "set data.workers: 0 to assemble in one process") from None
                continue
            if item is None:
                running -= 1
            elif item[0] < 0:
                raise pickle.loads(item[1])
            else:
                batches[item[0]] = pickle.loads(item[1])

    try:
        while (index := _take(counter, len(bounds))) is not None:
            start, end = bounds[index]
            batches[index] = getattr(assembler, method)(items[start:end])
            receive(block=False)
        receive(block=True)
    finally:
        for process in processes:
            process.join(timeout=5 if not running else 0)  # (done: they are exiting)
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
    return batches
