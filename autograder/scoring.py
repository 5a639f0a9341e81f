"""Score a submission's hidden checks outside its kernel, failing closed.

What a student's kernel leaves in its hidden-check outbox is hostile input: a link, a FIFO, a huge file,
a value nested thousands deep or built from shared sub-lists (exponential to walk), a file that makes
the loader crash. So the outbox is read without following links or blocking, regular files only, within
size and count budgets; the values are decoded and compared in a forked child with its own CPU and
memory budgets; and a test cell is given a verdict of "passed" only when every hidden check it owns
arrived once, was well formed, and matched its reference. Anything else, a crash of the child included,
fails that cell with a note; the cells after it are scored in a fresh child.

Notes name the failing check and what is wrong with the student's value (its structure, shape, dtype,
how many elements are off, or the catalogued mistake it matches), never the hidden expected values.
"""

from __future__ import annotations

import functools
import io
import json
import os
import resource
import select
import signal
import stat
import time
from pathlib import Path

MAX_FILE_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 256 * 2**20
MAX_FILES = 2_000
MAX_DEPTH = 12  # nesting of tuples, lists and dicts in one value
MAX_NODES = 20_000  # containers and leaves visited, a part shared by several parents counted each time
MAX_ELEMENTS = 20_000_000  # tensor elements in one value
CPU_SECONDS_PER_ITEM = 20  # decoding one file, or scoring one cell's checks
CHILD_CPU_SECONDS = 300
CHILD_MEMORY_BYTES = 4 * 2**30  # on top of what the grader already maps
SILENT_CHILD_SECONDS = 900  # a backstop only: the CPU budgets end a busy child long before
REFERENCES = Path(__file__).resolve().parent / "references"


class BudgetExceeded(Exception):
    """Decoding or scoring one item used more CPU time than its budget."""


class Malformed(ValueError):
    """A value in the outbox is not a tensor, a number or a small tuple/list/dict of them."""


def read_outbox(outbox: Path) -> list[bytes]:
    """The contents of the regular files in `outbox`, in name order, within the budgets; links, FIFOs and the rest skipped."""
    try:
        folder = os.open(outbox, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return []
    contents, total = [], 0
    try:
        for name in sorted(os.listdir(folder))[:MAX_FILES]:
            try:
                handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
            except OSError:  # a link (ELOOP), gone, unreadable
                continue
            try:
                info = os.fstat(handle)
                if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES or total + info.st_size > MAX_TOTAL_BYTES:
                    continue
                data = os.read(handle, MAX_FILE_BYTES + 1)
                if len(data) <= MAX_FILE_BYTES:
                    contents.append(data)
                    total += len(data)
            finally:
                os.close(handle)
    finally:
        os.close(folder)
    return contents


def check_shape_of_value(value) -> None:
    """Raise Malformed unless `value` is a tensor, bool, int or float, or a tuple/list/dict of them within the budgets."""
    import torch

    pending, nodes, elements = [(value, 0)], 0, 0
    while pending:
        item, depth = pending.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise Malformed(f"it has more than {MAX_NODES:,} parts")
        if depth > MAX_DEPTH:
            raise Malformed(f"it is nested more than {MAX_DEPTH} deep")
        if isinstance(item, dict):
            if not all(isinstance(key, (str, int)) for key in item):
                raise Malformed("a dict in it has keys that are not strings or numbers")
            pending.extend((part, depth + 1) for part in item.values())
        elif isinstance(item, (tuple, list)):
            pending.extend((part, depth + 1) for part in item)
        elif isinstance(item, torch.Tensor):
            elements += item.numel()
            if elements > MAX_ELEMENTS:
                raise Malformed(f"its tensors hold more than {MAX_ELEMENTS:,} elements")
            if item.layout != torch.strided or item.is_quantized or item.device.type != "cpu":
                raise Malformed("it holds a tensor that is not a plain CPU tensor")
        elif not isinstance(item, (bool, int, float)):
            raise Malformed(f"it holds a {type(item).__name__}")


def decode(data: bytes) -> dict:
    """One outbox message, {'name': str, 'value': ...} or {'name': str, 'error': str}; raises on anything else."""
    import torch

    message = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(message, dict) or not isinstance(message.get("name"), str) or set(message) - {"name", "value", "error"}:
        raise Malformed("not a hidden-check message")
    if "error" in message:
        if not isinstance(message["error"], str):
            raise Malformed("its error is not text")
        message["error"] = message["error"][:300]
    else:
        check_shape_of_value(message.get("value"))
    return message


def failure_note(name: str, got, reference: dict) -> str | None:
    """None when `got` matches the reference; else what is wrong with `got`, without the expected values."""
    import torch
    from shared.checks import CheckFailed, _describe, _shape, compare, flatten

    expected, rtol, atol = reference["value"], reference["rtol"], reference["atol"]
    try:
        compare(name, got, expected, rtol=rtol, atol=atol)
        return None
    except CheckFailed:
        pass
    got_leaves, expected_leaves = flatten(got), flatten(expected)
    if list(got_leaves) != list(expected_leaves):
        parts = ", ".join(list(got_leaves)[:6]) if list(got_leaves) != ["output"] else _describe(got)
        return f"the result has the wrong structure (got {parts})"
    for path, expected_leaf in expected_leaves.items():
        leaf, what = got_leaves[path], "the result" if path == "output" else path
        try:
            compare(name, leaf, expected_leaf, rtol=rtol, atol=atol)
            continue
        except CheckFailed:
            pass
        if not isinstance(expected_leaf, torch.Tensor):
            return f"{what} differs from the reference"  # not the value: the student's code chose it, and could hide words in it
        if not isinstance(leaf, torch.Tensor):
            return f"{what} should be a tensor, but it is {_describe(leaf)[:80]}"
        if leaf.shape != expected_leaf.shape:
            return f"{what} has the wrong shape (got {_shape(leaf.shape)})"
        if leaf.dtype != expected_leaf.dtype:
            return f"{what} has the wrong dtype (got {leaf.dtype})"
        if leaf.is_floating_point() and torch.isnan(leaf).any():
            return f"{what} is NaN somewhere"
        close = torch.isclose(leaf, expected_leaf, rtol=rtol, atol=atol) if leaf.is_floating_point() else leaf == expected_leaf
        return f"{int((~close).sum())} of {leaf.numel()} values of {what} differ from the reference"
    return "the result differs from the reference"


def cell_verdict(grade_id: str, names: list[str], received: dict[str, list[dict]], references: dict, mistakes: dict) -> str | None:
    """None when every hidden check of the cell passed; else the note for its first failing check."""
    from shared.checks import CheckFailed, compare, matching_mistake

    for name in names:
        messages, reference = received.get(name, []), references[name]
        if not messages:
            return f"hidden check '{name}' did not run"
        if any("error" in message for message in messages):
            return f"hidden check '{name}': " + next(m["error"] for m in messages if "error" in m)
        first = messages[0]["value"]
        for other in messages[1:]:  # a cell replayed after a kernel restart sends the same value again
            try:
                compare(name, other["value"], first, rtol=0.0, atol=0.0, equal_nan=True)
            except CheckFailed:
                return f"hidden check '{name}' was recorded {len(messages)} times with different values; it runs once"
        note = failure_note(name, first, reference)
        if note is not None:
            mistake = matching_mistake(first, mistakes.get(name, []), reference["rtol"], reference["atol"])
            if mistake is not None:
                return f"hidden check '{name}': the output matches a known mistake: {mistake['title']}. {mistake['hint']}"
            return f"hidden check '{name}': {note}"
    return None


def _on_cpu_budget(signum, frame):
    raise BudgetExceeded()


def _child(write_end: int, contents: list[bytes], skipped: set[int], cells: dict, done: set[str], references: dict, mistakes: dict) -> None:
    """In the forked child: decode the files, then score the cells not yet done, one JSON line per step."""
    import torch

    def say(*item) -> None:
        os.write(write_end, (json.dumps(item) + "\n").encode())

    def within_budget(function, *arguments):
        signal.setitimer(signal.ITIMER_PROF, CPU_SECONDS_PER_ITEM)
        try:
            return function(*arguments)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)

    torch.set_num_threads(1)  # the grader's thread pools do not survive a fork
    signal.signal(signal.SIGPROF, _on_cpu_budget)
    received: dict[str, list[dict]] = {}
    for index, data in enumerate(contents):
        if index in skipped:
            continue
        say("start-file", index)
        try:
            message = within_budget(decode, data)
        except BaseException:  # a file the student's code wrote or damaged: it holds no check
            continue
        received.setdefault(message["name"], []).append(message)
    for grade_id, names in cells.items():
        if grade_id in done:
            continue
        say("start-cell", grade_id)
        try:
            note = within_budget(cell_verdict, grade_id, names, received, references, mistakes)
        except BudgetExceeded:
            note = "scoring its hidden checks used more than its CPU budget"
        except BaseException as error:  # RecursionError, MemoryError, anything a hostile value provokes
            note = f"its hidden checks could not be scored ({type(error).__name__})"
        say("cell", grade_id, note)


def _run_child(contents, skipped, cells, done, references, mistakes) -> list[list]:
    """Fork a scoring child; returns the lines it wrote before it ended, however it ended."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            used = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE") if Path("/proc/self/statm").exists() else 0
            resource.setrlimit(resource.RLIMIT_AS, (used + CHILD_MEMORY_BYTES, used + CHILD_MEMORY_BYTES))
            resource.setrlimit(resource.RLIMIT_CPU, (CHILD_CPU_SECONDS, CHILD_CPU_SECONDS + 5))
            _child(write_end, contents, skipped, cells, done, references, mistakes)
            code = 0
        finally:
            os._exit(code)  # never the grader's exit handlers
    os.close(write_end)
    output, last_heard = b"", time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], 5)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                output, last_heard = output + chunk, time.monotonic()
            elif time.monotonic() - last_heard > SILENT_CHILD_SECONDS:
                os.kill(pid, signal.SIGKILL)
                break
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    lines = []
    for line in output.decode(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            break
    return lines


def score_hidden_checks(contents: list[bytes], cells: dict[str, list[str]], references: dict, mistakes: dict) -> dict[str, str | None]:
    """{test cell grade_id: None if all its hidden checks passed, else the note}; every cell of `cells` gets a verdict."""
    verdicts: dict[str, str | None] = {}
    skipped: set[int] = set()
    for _ in range(len(contents) + len(cells) + 1):  # each round settles at least one file or cell
        if len(verdicts) == len(cells):
            break
        started = None
        for line in _run_child(contents, skipped, cells, set(verdicts), references, mistakes):
            if line[0] == "cell":
                verdicts[line[1]], started = line[2], None
            else:
                started = line
        if started is None:
            # The child ended without starting anything new: it could not even begin (no memory, no process).
            for grade_id in cells:
                verdicts.setdefault(grade_id, "its hidden checks could not be scored (the scoring process failed)")
        elif started[0] == "start-file":
            skipped.add(started[1])  # this file killed the child: leave it out from now on
        else:
            verdicts[started[1]] = "scoring its hidden checks ran past its budget (time or memory)"
    for grade_id in cells:
        verdicts.setdefault(grade_id, "its hidden checks could not be scored")
    return verdicts



@functools.cache
def hidden_references(assignment: str) -> tuple[dict, dict, dict]:
    """(hidden references, recorded mistakes, {test cell: check names}) of an assignment, read once per process."""
    import torch

    references = torch.load(REFERENCES / f"{assignment}.pt", weights_only=True)
    mistakes_file = REFERENCES / f"{assignment}.mistakes.pt"
    mistakes = torch.load(mistakes_file, weights_only=True) if mistakes_file.exists() else {}
    cells = json.loads((REFERENCES / f"{assignment}.cells.json").read_text())
    return references, mistakes, cells


def hidden_check_verdicts(assignment: str, outbox: Path) -> dict[str, str | None]:
    """{test cell grade_id: None when all its hidden checks passed, else why not}, from what `outbox` holds."""
    references, mistakes, cells = hidden_references(assignment)
    return score_hidden_checks(read_outbox(outbox), cells, references, mistakes)
