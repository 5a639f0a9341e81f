"""nbgrader preprocessors of our own: survive a dying kernel, keep hidden tests out of feedback.

ResilientExecute: plain nbgrader abandons the whole submission when the kernel dies (`os._exit`, a segfault, the
memory limit): the student gets 0 for everything. Here the cell that killed the kernel gets an
error output (so its test, if any, scores 0 and the feedback says why), a fresh kernel replays
the cells above it, and grading carries on with the cells below. A cell that runs past its time
limit is interrupted; if the kernel still does not answer (the code ignores interrupts), it is
treated the same way, so the cells below do not all time out behind it. Processes a cell leaves
running (a fork bomb's copies of the kernel, spinners detached with setsid) are stopped when the cell ends; a kernel
then left with many ended children it never collected, which keep its process limit full, is replaced the same way.

Time limits measure the student's code, not the machine. A cell may use `cpu_time_limit` seconds of CPU
time (its kernel's processes together) and `wall_time_limit` seconds of wall time not counting the time
its kernel waited for a CPU that other work held; the notebook as a whole gets `notebook_time_limit`
seconds, counted the same way. So a busy machine, which makes `import torch` slow, costs nobody points.
A given cell (course code, such as the setup cell) that is cut off anyway runs once more in a fresh kernel,
with no CPU limit. A cell that writes more than its quota to the kernel's folders is stopped and what it
wrote removed.
"""

import asyncio
import copy
import os
import queue
import shutil
import signal
import time
import uuid
from pathlib import Path

import psutil
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from traitlets import Dict, Float, List, Unicode, default

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import ensure_async, run_sync
from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.api import Gradebook
from nbgrader.preprocessors import Execute, NbGraderPreprocessor, SaveAutoGrades
from sandbox import KERNEL_PID_SUFFIX

MAX_OUTPUT_CHARACTERS = 100_000  # printed text, an error's traceback, a text/html/json display
MAX_IMAGE_CHARACTERS = 2_000_000  # an image (base64): a large matplotlib figure is ~200 kB
MAX_OUTPUTS_PER_CELL = 100
MAX_NOTEBOOK_OUTPUT_CHARACTERS = 20_000_000
CPU_POLL_SECONDS = 0.5
# What a kernel may add to its working folder on disk in one cell.
WRITE_QUOTA_BYTES = 512 * 2**20
WRITE_QUOTA_ENTRIES = 10_000
KERNEL_DIED = (
    "The kernel stopped while running this cell (it crashed, ran out of memory, or exited). "
    "The cells below were run in a fresh kernel."
)
KERNEL_STUCK = (
    "This cell ran past its time limit and did not stop when interrupted. "
    "The cells below were run in a fresh kernel."
)
UNCOLLECTED_LIMIT = 32  # children a kernel may leave ended but never collected; each holds a place under the process limit
LEFT_UNCOLLECTED = (
    "This cell left {count} processes that had ended but that it never collected (os.wait); each holds a place under "
    "the kernel's process limit, so the cells below were run in a fresh kernel."
)
# How long an interrupted kernel may take to become idle before it is replaced.
INTERRUPT_GRACE_SECONDS = 5
REPLY_GRACE_SECONDS = 0.5  # for a reply already on its way before a cell past its limit is interrupted
FLOOD_NOTE = "\n... [more outputs cut: this cell printed or displayed too much]\n"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... [output cut: {len(text):,} characters in all]\n"


def _as_text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def output_size(output) -> int:
    """Characters an output adds to the notebook (text, display data, traceback)."""
    size = len(_as_text(output.get("text", ""))) + len(str(output.get("evalue", "")))
    size += sum(len(_as_text(line)) for line in output.get("traceback", []))
    return size + sum(len(_as_text(value)) for value in output.get("data", {}).values())


def cap_output(output) -> None:
    """Cut one output to the limits above, whatever its type (nbgrader's LimitOutput counts lines, and only of text)."""
    if "text" in output:
        output["text"] = _cut(_as_text(output["text"]), MAX_OUTPUT_CHARACTERS)
    if "evalue" in output:
        output["evalue"] = _cut(str(output["evalue"]), MAX_OUTPUT_CHARACTERS)
    if "traceback" in output:
        traceback = "\n".join(_as_text(line) for line in output["traceback"])
        if len(traceback) > MAX_OUTPUT_CHARACTERS:
            output["traceback"] = [_cut(traceback, MAX_OUTPUT_CHARACTERS)]
    data = output.get("data", {})
    for mimetype in list(data):
        value = _as_text(data[mimetype])
        if mimetype.startswith("image/") and len(value) > MAX_IMAGE_CHARACTERS:
            del data[mimetype]
            data["text/plain"] = f"[an image of {len(value):,} characters was cut]"
        elif not mimetype.startswith("image/") and len(value) > MAX_OUTPUT_CHARACTERS:
            data[mimetype] = _cut(value, MAX_OUTPUT_CHARACTERS)


def limit_output_size(cell, printed: dict[str, int] | None = None) -> None:
    """Cut every output of `cell` to the limits, and keep at most MAX_OUTPUTS_PER_CELL of them.

    `printed` gives the characters a stream (stdout, stderr) received in all, where more arrived than was kept.
    """
    outputs = cell.get("outputs", [])
    for output in outputs:
        cap_output(output)
        total = (printed or {}).get(output.get("name", ""), 0) if output.get("output_type") == "stream" else 0
        if total > MAX_OUTPUT_CHARACTERS:  # the cut above counted only what was kept
            output["text"] = _as_text(output["text"])[:MAX_OUTPUT_CHARACTERS] + f"\n... [output cut: {total:,} characters in all]\n"
    if len(outputs) > MAX_OUTPUTS_PER_CELL:
        # Errors and a first stderr line decide the cell's score (nbgrader zeroes a cell with either): always kept, and
        # the first outputs fill the room left, so that with the note there are MAX_OUTPUTS_PER_CELL in all.
        stderr = [i for i, o in enumerate(outputs) if o.get("output_type") == "stream" and o.get("name") == "stderr"][:1]
        keep = set([i for i, o in enumerate(outputs) if o.get("output_type") == "error" or i in stderr][: MAX_OUTPUTS_PER_CELL - 1])
        for index in range(len(outputs)):
            if len(keep) >= MAX_OUTPUTS_PER_CELL - 1:
                break
            keep.add(index)
        kept = [output for index, output in enumerate(outputs) if index in keep]
        note = NotebookNode(output_type="stream", name="stdout", text=f"\n... [{len(outputs) - len(kept):,} more outputs cut]\n")
        cell.outputs = kept + [note]


KERNEL_OVER_QUOTA = (f"This cell wrote more than {WRITE_QUOTA_BYTES // 2**20} MB or {WRITE_QUOTA_ENTRIES:,} files (its limit), "
                     "and was interrupted; what it wrote was removed.")
KERNEL_OVER_CPU = "This cell used more than {limit:g} s of CPU time (its limit), and was interrupted."
KERNEL_OVER_WALL = "This cell ran for more than {limit:g} s (its limit, not counting waits for a busy machine), and was interrupted."
OVER_BUDGET = "The notebook ran past its time budget of {limit:g} s, so this cell was not run."


def folder_entries(folder: Path, limit: int) -> dict[str, int]:
    """{relative path: size} of what is in `folder`, links not followed; stops after `limit` entries."""
    found: dict[str, int] = {}
    pending = [folder]
    while pending and len(found) <= limit:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            found[os.path.relpath(entry.path, folder)] = info.st_size
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return found


def remove_new_entries(folder: Path, before: dict[str, int]) -> None:
    """Delete what appeared in `folder` since `before` was taken; a link is removed, never followed."""
    for name in sorted(set(folder_entries(folder, 10 * WRITE_QUOTA_ENTRIES)) - set(before), key=len):
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)  # fd-based on Linux: safe against links swapped in while it runs
            else:
                path.unlink()
        except FileNotFoundError:  # inside a folder removed just before
            continue


def is_given(cell) -> bool:
    """A course cell students do not edit (setup, explanations' code): locked, neither an answer nor a test."""
    info = cell.metadata.get("nbgrader", {})
    return bool(info.get("locked")) and not info.get("solution") and not info.get("grade")


class PromptKernelClient(AsyncKernelClient):
    """jupyter_client's kernel client, ready as soon as the kernel has answered on both channels nbclient reads.

    jupyter_client's own wait_for_ready ends by reading IOPub until it has been silent for 0.2 s: every kernel start
    pays those 0.2 s with its core idle. Here the client waits instead for the kernel's `idle` status for its own
    kernel_info request: it proves IOPub connected, and the kernel publishes it after everything it published before.
    """

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while True:
            request = self.kernel_info()
            reply = await self._message_about(request, self.shell_channel, "kernel_info_reply", 1.0)
            if reply is not None:
                self._handle_kernel_info_reply(reply)
                # IOPub may still be connecting, and miss the status: then ask again, as jupyter_client does.
                if await self._message_about(request, self.iopub_channel, "status", 0.2, state="idle") is not None:
                    return
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")

    @staticmethod
    async def _message_about(request: str, channel, kind: str, seconds: float, state: str | None = None) -> dict | None:
        """The first message of type `kind` on `channel` in answer to `request` (a status: of `state`), or None if
        none comes within `seconds`; messages before it are dropped."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            try:
                message = await ensure_async(channel.get_msg(timeout=left))
            except queue.Empty:
                return None
            if (message["msg_type"] == kind and message["parent_header"].get("msg_id") == request
                    and (state is None or message["content"].get("execution_state") == state)):
                return message
        return None


class PromptKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, with PromptKernelClient, and looking every 10 ms, not every 100 ms, whether a
    killed kernel has gone (its launcher ends within milliseconds of the kill)."""

    @default("client_factory")
    def _prompt_client(self) -> type:
        return PromptKernelClient

    async def _async_wait(self, pollinterval: float = 0.1) -> None:
        while await self._async_is_alive():
            await asyncio.sleep(min(pollinterval, 0.01))


class ResilientExecute(Execute):
    """Execute that restarts a dead kernel, replays earlier cells, goes on, and caps each cell's output."""

    cpu_time_limit = Float(60.0, help="CPU seconds a cell may use, all the kernel's processes together").tag(config=True)
    wall_time_limit = Float(300.0, help="Seconds a cell may run, not counting its kernel's waits for a busy CPU").tag(config=True)
    notebook_time_limit = Float(1800.0, help="Seconds for the whole notebook, replays included, counted as wall_time_limit").tag(config=True)
    # Where kernels come from (grade.py sets these from its run configuration; no environment variable is involved).
    kernel_environment = Dict(help="Variables every kernel starts with, on top of the grader's environment").tag(config=True)
    kernel_dirs = List(Unicode(), help="Folders of kernelspecs searched before Jupyter's own (the sandbox's)").tag(config=True)
    connection_dir = Unicode("", help="Folder for kernels' connection files (default: Jupyter's runtime folder)").tag(config=True)
    sandbox_scratch = Unicode("", help="A sandboxed kernel's writable working folder (sandbox.py --scratch), per submission").tag(config=True)
    kernel_zygote = Unicode("", help="The folder of this worker's kernel zygote (sandbox.py --zygote), if it has one").tag(config=True)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", PromptKernelManager)  # nbgrader's Execute sets its own default here
        super().__init__(*args, **kwargs)

    def preprocess(self, nb, resources=None, km=None):
        self._fatal_cells: set[int] = set()
        self._timed_out, self._over_limit = False, ""
        self._configured_iopub_timeout = self.iopub_timeout
        self._kernel: psutil.Process | None = None
        self._retrying = False
        self._notebook_seconds = 0.0
        self._notebook_output_characters, self._printed = 0, {}
        # The folders the sandbox lets the kernel write to on disk (sandbox.py), held to a quota per cell.
        folder = self.sandbox_scratch or (resources or {}).get("metadata", {}).get("path")
        self._writable = [Path(folder)] if folder else []
        return super().preprocess(nb, resources, km)

    def create_kernel_manager(self):
        """nbclient's kernel manager, finding kernelspecs in `kernel_dirs` and writing connection files to `connection_dir`."""
        km = super().create_kernel_manager()
        if self.kernel_dirs:
            km.kernel_spec_manager = KernelSpecManager(kernel_dirs=[*self.kernel_dirs, *KernelSpecManager().kernel_dirs])
        if self.connection_dir:
            km.connection_file = os.path.join(self.connection_dir, f"kernel-{uuid.uuid4()}.json")
        return km

    async def async_start_new_kernel(self, **kwargs):
        """Start the kernel with `kernel_environment`, and a sandboxed kernel with its submission's scratch folder."""
        kwargs.setdefault("env", {**os.environ, **self.kernel_environment})
        if self.sandbox_scratch and "--scratch" not in self.extra_arguments:
            self.extra_arguments = [*self.extra_arguments, "--scratch", self.sandbox_scratch]
        if self.sandbox_scratch and self.kernel_zygote and "--zygote" not in self.extra_arguments:
            self.extra_arguments = [*self.extra_arguments, "--zygote", self.kernel_zygote]
        return await super().async_start_new_kernel(**kwargs)

    start_new_kernel = run_sync(async_start_new_kernel)

    def _remove_writes_over_quota(self) -> bool:
        """If the cell wrote more than its quota, delete what it added to the kernel's folders; returns whether it did."""
        if not (self._over_quota or self._written_since(self._folders_before)):
            return False
        for folder, before in self._folders_before.items():
            remove_new_entries(folder, before)
        return True

    def _written_since(self, before: dict[Path, dict[str, int]]) -> bool:
        """Whether the kernel's folders grew past the write quota since `before`."""
        added, entries = 0, 0
        for folder, then in before.items():
            now = folder_entries(folder, WRITE_QUOTA_ENTRIES)
            entries += len(now) - len(then)
            added += sum(size - then.get(name, 0) for name, size in now.items())
        return added > WRITE_QUOTA_BYTES or entries > WRITE_QUOTA_ENTRIES

    async def _async_handle_timeout(self, timeout, cell=None):
        # nbclient interrupts the kernel, then waits iopub_timeout for it to report itself idle:
        # wait only a short grace instead, and replace the kernel if it does not answer by then.
        self._timed_out = True
        self.iopub_timeout = INTERRUPT_GRACE_SECONDS
        return await super()._async_handle_timeout(timeout, cell)

    async def _async_poll_for_reply(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
        """nbclient's wait for the cell's reply (its own wall clock is only a backstop), raced against the cell's limits."""
        reply = asyncio.ensure_future(super()._async_poll_for_reply(msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive))
        watch = asyncio.ensure_future(self._watch_limits(reply, cell))
        try:
            return await reply
        except asyncio.CancelledError:
            if not self._over_limit or not reply.cancelled() or asyncio.current_task().cancelling():
                raise  # nbclient's own cancellation: the kernel died
            task_poll_kernel_alive.cancel()
            raise CellTimeoutError.error_from_timeout_and_cell("Cell past its time limit ignored the interrupt", self.cpu_time_limit, cell)
        finally:
            watch.cancel()

    async def _watch_limits(self, reply: asyncio.Future, cell) -> None:
        """Interrupt the cell once it is past its CPU or wall-time limit; stop waiting for it if it will not stop."""
        cpu_start, clock_start, wait_start = self._cpu_seconds(), time.monotonic(), self._kernel_wait_seconds()
        active = 0.0  # seconds the cell has run, not counting its kernel's waits for a CPU
        try:
            while True:
                await asyncio.sleep(CPU_POLL_SECONDS)
                if self._written_since(self._folders_before):
                    self._over_limit, self._over_quota = KERNEL_OVER_QUOTA, True
                    break
                cpu = self._cpu_seconds() - cpu_start
                active = time.monotonic() - clock_start - (self._kernel_wait_seconds() - wait_start)
                if self.cpu_time_limit > 0 and cpu > self.cpu_time_limit and not self._retrying:  # course code: its own time
                    self._over_limit = KERNEL_OVER_CPU.format(limit=self.cpu_time_limit)
                    break
                if self.wall_time_limit > 0 and active > self.wall_time_limit:
                    self._over_limit = KERNEL_OVER_WALL.format(limit=self.wall_time_limit)
                    break
        finally:
            self._notebook_seconds += active
        self.log.warning("Cell past its time limit (%s); interrupting", self._over_limit)
        self._timed_out = True
        self._stop_strays()  # what it started would otherwise keep the CPU from the kernel's interrupt handler
        # Stopping them may end the cell (a fork bomb's fork fails): let its reply in first. An interrupt sent
        # after the reply would land in the next cell; if the reply comes, this task is cancelled here.
        await asyncio.sleep(REPLY_GRACE_SECONDS)
        if reply.done():
            return
        await ensure_async(self.km.interrupt_kernel())
        await asyncio.sleep(INTERRUPT_GRACE_SECONDS)
        if not reply.done():
            reply.cancel()

    def _kernel_wait_seconds(self) -> float:
        """Seconds the kernel's main thread has spent ready to run but waiting for a CPU (Linux schedstat; else 0)."""
        kernel = self._kernel_process()
        try:
            return int(open(f"/proc/{kernel.pid}/schedstat").read().split()[1]) / 1e9
        except (AttributeError, OSError, ValueError, IndexError):
            return 0.0

    def _cpu_seconds(self) -> float:
        """CPU time used so far by the kernel's processes, and by those of them that have ended."""
        total = 0.0
        for process in self._sandbox_processes():
            try:
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
            except psutil.Error:
                continue
        return total

    def preprocess_cell(self, cell, resources, index):
        self._timed_out, self._over_limit, self._over_quota, self._printed = False, "", False, {}
        self.iopub_timeout = self._configured_iopub_timeout
        if cell.cell_type != "code" or not cell.source.strip():
            return cell, resources  # nothing runs: no kernel to watch, no processes to stop
        self._folders_before = {folder: folder_entries(folder, WRITE_QUOTA_ENTRIES) for folder in self._writable}
        if self.notebook_time_limit > 0 and self._notebook_seconds > self.notebook_time_limit:
            cell.outputs = [self._error("SubmissionTimeLimit", OVER_BUDGET.format(limit=self.notebook_time_limit))]
            return cell, resources
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self.log.warning("Kernel died in cell %d; restarting and replaying earlier cells", index)
            return self._replace_kernel(cell, index, "KernelDied", KERNEL_DIED), self.resources
        except CellTimeoutError:  # after the interrupt, the kernel never even reported itself idle
            if not self._timed_out:
                raise
            self.log.warning("Kernel stuck after interrupting cell %d; restarting and replaying earlier cells", index)
            stuck = f"{self._over_limit} It did not stop, so the cells below were run in a fresh kernel." if self._over_limit else KERNEL_STUCK
            return self._replace_kernel(cell, index, "CellTimeoutError", stuck), self.resources
        self._stop_strays()
        if self._remove_writes_over_quota():
            self._over_limit = KERNEL_OVER_QUOTA
        if self._over_limit:  # the interrupt's KeyboardInterrupt says less than why it came
            cell.outputs = [o for o in cell.outputs if o.get("output_type") != "error"] + [self._error("CellTimeoutError", self._over_limit)]
        uncollected = len(self._uncollected())
        if uncollected > UNCOLLECTED_LIMIT:  # a fork bomb's copies: the next cell could not even start a thread
            self.log.warning("Cell %d left %d uncollected processes; restarting and replaying earlier cells", index, uncollected)
            error = next((o for o in cell.outputs if o.get("output_type") == "error"), None)
            name, why = (error["ename"], error["evalue"].rstrip(". ") + ". ") if error else ("TooManyProcesses", "")
            return self._replace_kernel(cell, index, name, why + LEFT_UNCOLLECTED.format(count=uncollected)), self.resources
        if self._timed_out and is_given(cell) and not self._retrying:
            return self._retry_given_cell(cell, resources, index)
        limit_output_size(cell, self._printed)
        return cell, resources

    def _retry_given_cell(self, cell, resources, index):
        """Run a course cell that was cut off once more, in a fresh kernel that has run the cells above it, with no CPU limit."""
        self.log.warning("Given cell %d was cut off; running it once more in a fresh kernel", index)
        self._restart_and_replay(index)
        self._retrying = True
        try:
            return self.preprocess_cell(cell, resources, index)
        finally:
            self._retrying = False

    @staticmethod
    def _error(name: str, message: str) -> NotebookNode:
        return NotebookNode(output_type="error", ename=name, evalue=message, traceback=[f"{name}: {message}"])

    def output(self, outs, msg, display_id, cell_index):
        """nbclient's handling of one output, with each output cut to size as it arrives, so a flood never fills memory."""
        out = super().output(outs, msg, display_id, cell_index)
        if out is None or not outs or outs[-1] is not out:
            return out
        stream = out.get("name", "") if out.get("output_type") == "stream" else ""
        already_printed = self._printed.get(stream, 0)
        if stream:
            self._printed[stream] = already_printed + len(_as_text(out.get("text", "")))
        cap_output(out)
        self._notebook_output_characters += output_size(out)
        decides_score = out.get("output_type") == "error" or (stream == "stderr" and not already_printed)
        flooded = (len(outs) > 2 * MAX_OUTPUTS_PER_CELL or self._notebook_output_characters > MAX_NOTEBOOK_OUTPUT_CHARACTERS
                   or already_printed > MAX_OUTPUT_CHARACTERS)
        if flooded and not decides_score and not display_id:
            outs.pop()
            if not stream and (not outs or outs[-1].get("text") != FLOOD_NOTE):  # a stream's cut is noted at its end
                outs.append(NotebookNode(output_type="stream", name="stdout", text=FLOOD_NOTE))
        return out

    def _replace_kernel(self, cell, index: int, name: str, message: str):
        """Give `cell` the error `name`, then continue in a fresh kernel that has run the cells above it."""
        self.iopub_timeout = self._configured_iopub_timeout
        self._stop_strays()
        if self._remove_writes_over_quota():
            message = KERNEL_OVER_QUOTA
        cell.outputs = [self._error(name, message)]
        if is_given(cell) and not self._retrying:
            return self._retry_given_cell(cell, self.resources, index)[0]
        self._fatal_cells.add(index)
        self._restart_and_replay(index)
        return cell

    def _kernel_process(self) -> psutil.Process | None:
        """The kernel's own process: the one a zygote forked for it (its launcher names it), else the oldest ipykernel
        under the launcher (what a cell starts is younger)."""
        if self._kernel is not None and self._kernel.is_running():
            return self._kernel
        forked = Path(f"{self.km.connection_file}{KERNEL_PID_SUFFIX}") if self.kernel_zygote else None
        if forked is not None and forked.exists():
            try:
                self._kernel = psutil.Process(int(forked.read_text()))
                return self._kernel
            except (OSError, ValueError, psutil.Error):
                return None
        try:
            launcher = psutil.Process(self.km.provisioner.process.pid)
            tree = [launcher, *launcher.children(recursive=True)]
        except (AttributeError, psutil.Error):
            return None
        kernels = [p for p in tree if _is_kernel(p)]
        self._kernel = min(kernels, key=_created, default=None)
        return self._kernel

    def _sandbox_processes(self) -> list[psutil.Process]:
        """Every process of the kernel's sandbox (its pid namespace), or of its process tree when it has none.

        A namespace holds what the kernel's tree loses: processes detached with setsid or a double fork,
        which the namespace's first process (bwrap's init) adopts and, once they end, reaps.
        """
        kernel = self._kernel_process()
        if kernel is None:
            return []
        namespace = _pid_namespace(kernel.pid)
        if namespace is None or namespace == _pid_namespace(os.getpid()):
            return [kernel, *_children(kernel)]
        return _processes_in(namespace)

    def _strays(self) -> list[psutil.Process]:
        """The sandbox's processes but the kernel and the init that holds the namespace."""
        kernel = self._kernel_process()
        if kernel is None:
            return []
        keep = {kernel.pid} | {parent.pid for parent in _parents(kernel)}
        return [process for process in self._sandbox_processes() if process.pid not in keep and not _is_zombie(process)]

    def _stop_strays(self) -> None:
        """Kill every process the kernel has started and left running (it needs none between cells)."""
        stopped: dict[int, psutil.Process] = {}
        for _ in range(100):  # stop them first: a fork bomb forks again as fast as its copies are killed
            new = [process for process in self._strays() if process.pid not in stopped]
            if not new:
                break
            for process in new:
                _signal(process, signal.SIGSTOP)
                stopped[process.pid] = process
        for process in stopped.values():
            _signal(process, signal.SIGKILL)
        # A killed process holds its place under the process limit until its parent collects it: the namespace's init
        # does at once, once it is a zombie; the kernel never collects what a cell forked (see _uncollected).
        kernel = self._kernel_process()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not all(_collected_or_left_to(kernel, process) for process in stopped.values()):
            time.sleep(0.02)

    def _uncollected(self) -> list[psutil.Process]:
        """The kernel's children that have ended but that it has not collected (zombies)."""
        kernel = self._kernel_process()
        return [child for child in _children(kernel, recursive=False) if _is_zombie(child)] if kernel is not None else []

    def _restart(self) -> None:
        self._stop_strays()
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        run_sync(self.km.restart_kernel)(now=True)
        self._kernel = None
        self.start_new_kernel_client()

    def _restart_and_replay(self, upto: int) -> None:
        """Restart the kernel and re-run cells [0, upto) that did not kill it, discarding their outputs."""
        self._restart()
        for index in range(upto):
            cell = self.nb.cells[index]
            if cell.cell_type != "code" or index in self._fatal_cells:
                continue
            try:
                self.execute_cell(copy.deepcopy(cell), index, store_history=False)
                self._stop_strays()
            except DeadKernelError:
                self._fatal_cells.add(index)
                return self._restart_and_replay(upto)
            except Exception as error:  # a replayed cell that times out again must not stop grading
                self.log.warning("Replaying cell %d failed: %s", index, error)


def _is_kernel(process) -> bool:
    """Whether `process` is an IPython kernel itself (`python -m ipykernel_launcher ...`), not bwrap or a stage naming it."""
    try:
        return process is not None and process.cmdline()[1:3] == ["-m", "ipykernel_launcher"]
    except psutil.Error:
        return False


def _is_zombie(process) -> bool:
    """Ended, and only waiting for its parent (the kernel, which never asks) to collect its exit status."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _collected_or_left_to(kernel, process) -> bool:
    """Whether `process` has ended and been collected, or has ended as a child that only `kernel` can collect."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE and kernel is not None and process.ppid() == kernel.pid
    except psutil.Error:
        return True


def _created(process) -> float:
    try:
        return process.create_time()
    except psutil.Error:
        return float("inf")


def _parents(process) -> list:
    try:
        return process.parents()
    except psutil.Error:
        return []


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _processes_in(namespace: str) -> list:
    """The processes whose pid namespace is `namespace` (read from /proc; Linux only)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _pid_namespace(int(entry.name)) == namespace:
            try:
                found.append(psutil.Process(int(entry.name)))
            except psutil.Error:
                continue
    return found


def _signal(process, number: int) -> None:
    try:
        process.send_signal(number)
    except psutil.Error:
        pass


def _children(process, recursive: bool = True) -> list:
    try:
        return process.children(recursive=recursive)
    except psutil.Error:
        return []


class HideHiddenTestTracebacks(NbGraderPreprocessor):
    """In cells with hidden tests, reduce error tracebacks to the error message.

    nbgrader's ClearHiddenTests removes hidden test code from a cell's source, but a traceback
    in the cell's output quotes the failing lines, hidden ones included. Run this before it.
    """

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and "BEGIN HIDDEN TESTS" in cell.source:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources


class SaveAutoGradesWithheld(SaveAutoGrades):
    """nbgrader's SaveAutoGrades in one gradebook transaction, saving every test cell's score as 0.

    grade.py gives a test cell its points back only once its hidden checks have passed, so a grader that stops
    half way, or fails, leaves zeros, never full marks. nbgrader commits after every cell, and a commit waits
    for the gradebook's lock, which the other grading workers hold in turn: one commit for the notebook instead.
    """

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        self.notebook_id, self.assignment_id, self.student_id = info["notebook"], info["assignment"], info["student"]
        with Gradebook(info["db_url"]) as self.gradebook:
            nb, resources = NbGraderPreprocessor.preprocess(self, nb, resources)
            self.gradebook.db.commit()
        return nb, resources

    def _add_score(self, cell, resources) -> None:
        grade = self.gradebook.find_grade(cell.metadata.nbgrader.grade_id, self.notebook_id, self.assignment_id, self.student_id)
        grade.auto_score = utils.determine_grade(cell, self.log)[0] if utils.is_solution(cell) else 0.0
        # as nbgrader: a score given by hand, or an answer with no automatic score, asks for a person's review
        grade.needs_manual_grade = grade.manual_score is not None or grade.auto_score is None

    def _add_comment(self, cell, resources) -> None:
        comment = self.gradebook.find_comment(cell.metadata.nbgrader.grade_id, self.notebook_id, self.assignment_id, self.student_id)
        unchanged = cell.metadata.nbgrader.get("checksum") == utils.compute_checksum(cell) and not utils.is_task(cell)
        comment.auto_comment = "No response." if unchanged else None
