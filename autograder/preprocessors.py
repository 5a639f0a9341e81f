"""nbgrader preprocessors of our own: survive a dying kernel, keep hidden tests out of feedback.

ResilientExecute: plain nbgrader abandons the whole submission when the kernel dies (`os._exit`, a segfault, the
memory limit): the student gets 0 for everything. Here the cell that killed the kernel gets an
error output (so its test, if any, scores 0 and the feedback says why), a fresh kernel replays
the cells above it, and grading carries on with the cells below.
"""

import copy

from nbclient.exceptions import DeadKernelError
from nbclient.util import run_sync
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor

MAX_OUTPUT_CHARACTERS = 100_000
KERNEL_DIED = (
    "The kernel stopped while running this cell (it crashed, ran out of memory, or exited). "
    "The cells below were run in a fresh kernel."
)


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
        return super().preprocess(nb, resources, km)

    def preprocess_cell(self, cell, resources, index):
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
            limit_output_size(cell)
            return cell, resources
        except DeadKernelError:
            self.log.warning("Kernel died in cell %d; restarting and replaying earlier cells", index)
            self._fatal_cells.add(index)
            cell.outputs = [NotebookNode(output_type="error", ename="KernelDied", evalue=KERNEL_DIED, traceback=[f"KernelDied: {KERNEL_DIED}"])]
            self._restart_and_replay(index)
            return cell, self.resources

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
            except DeadKernelError:
                self._fatal_cells.add(index)
                return self._restart_and_replay(upto)
            except Exception as error:  # a replayed cell that times out again must not stop grading
                self.log.warning("Replaying cell %d failed: %s", index, error)


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
