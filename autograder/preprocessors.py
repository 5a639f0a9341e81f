"""nbgrader preprocessors of our own: survive a dying kernel, keep hidden tests out of feedback.

ResilientExecute: plain nbgrader abandons the whole submission when the kernel dies (`os._exit`, a segfault, the
memory limit): the student gets 0 for everything. Here the cell that killed the kernel gets an
error output (so its test, if any, scores 0 and the feedback says why), a fresh kernel replays
the cells above it, and grading carries on with the cells below. A cell that runs past its time
limit is interrupted; if the kernel still does not answer (the code ignores interrupts), it is
treated the same way, so the cells below do not all time out behind it. Processes a cell leaves
running (a fork bomb's copies of the kernel) are stopped when the cell ends.
"""

import copy
import signal

import psutil

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import run_sync
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor

MAX_OUTPUT_CHARACTERS = 100_000
KERNEL_DIED = (
    "The kernel stopped while running this cell (it crashed, ran out of memory, or exited). "
    "The cells below were run in a fresh kernel."
)
KERNEL_STUCK = (
    "This cell ran past its time limit and did not stop when interrupted. "
    "The cells below were run in a fresh kernel."
)
# How long an interrupted kernel may take to become idle before it is replaced.
INTERRUPT_GRACE_SECONDS = 5


def limit_output_size(cell) -> None:
    """Cut printed text longer than MAX_OUTPUT_CHARACTERS (nbgrader's LimitOutput counts lines, not characters)."""
    for output in cell.get("outputs", []):
        text = output.get("text", "")
        if output.get("output_type") == "stream" and len(text) > MAX_OUTPUT_CHARACTERS:
            output["text"] = text[:MAX_OUTPUT_CHARACTERS] + f"\n... [output cut: {len(text):,} characters in all]\n"


class ResilientExecute(Execute):
    """Execute that restarts a dead kernel, replays earlier cells, goes on, and caps each cell's output."""

    def preprocess(self, nb, resources=None, km=None):
        self._fatal_cells: set[int] = set()
        self._timed_out = False
        self._configured_iopub_timeout = self.iopub_timeout
        return super().preprocess(nb, resources, km)

    async def _async_handle_timeout(self, timeout, cell=None):
        # nbclient interrupts the kernel, then waits iopub_timeout for it to report itself idle:
        # wait only a short grace instead, and replace the kernel if it does not answer by then.
        self._timed_out = True
        self.iopub_timeout = INTERRUPT_GRACE_SECONDS
        return await super()._async_handle_timeout(timeout, cell)

    def preprocess_cell(self, cell, resources, index):
        self._timed_out = False
        self.iopub_timeout = self._configured_iopub_timeout
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self.log.warning("Kernel died in cell %d; restarting and replaying earlier cells", index)
            return self._replace_kernel(cell, index, "KernelDied", KERNEL_DIED), self.resources
        except CellTimeoutError:  # after the interrupt, the kernel never even reported itself idle
            if not self._timed_out:
                raise
            self.log.warning("Kernel stuck after interrupting cell %d; restarting and replaying earlier cells", index)
            return self._replace_kernel(cell, index, "CellTimeoutError", KERNEL_STUCK), self.resources
        self._stop_strays()
        limit_output_size(cell)
        return cell, resources

    def _replace_kernel(self, cell, index: int, name: str, message: str):
        """Give `cell` the error `name`, then continue in a fresh kernel that has run the cells above it."""
        self._fatal_cells.add(index)
        self.iopub_timeout = self._configured_iopub_timeout
        cell.outputs = [NotebookNode(output_type="error", ename=name, evalue=message, traceback=[f"{name}: {message}"])]
        self._restart_and_replay(index)
        return cell

    def _stop_strays(self) -> None:
        """Kill the processes the kernel has started and left running (it needs none between cells)."""
        try:
            launcher = psutil.Process(self.km.provisioner.process.pid)
            tree = launcher.children(recursive=True)
        except (AttributeError, psutil.Error):
            return
        kernels = [p for p in tree if _is_kernel(p) and not _is_kernel(_parent(p))]
        stopped: dict[int, psutil.Process] = {}
        for _ in range(100):  # stop them first: a fork bomb forks again as fast as its copies are killed
            new = [child for kernel in kernels for child in _children(kernel) if child.pid not in stopped]
            if not new:
                break
            for child in new:
                _signal(child, signal.SIGSTOP)
                stopped[child.pid] = child
        for child in stopped.values():
            _signal(child, signal.SIGKILL)
        psutil.wait_procs(list(stopped.values()), timeout=2)

    def _restart(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        run_sync(self.km.restart_kernel)(now=True)
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
    try:
        return process is not None and "ipykernel_launcher" in process.cmdline()
    except psutil.Error:
        return False


def _parent(process):
    try:
        return process.parent()
    except psutil.Error:
        return None


def _signal(process, number: int) -> None:
    try:
        process.send_signal(number)
    except psutil.Error:
        pass


def _children(process) -> list:
    try:
        return process.children(recursive=True)
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
