"""Progress bars (shared.training.progress_bar): a live widget in Jupyter that ends as one text line, so that a
notebook run headless (nbconvert, make run) and its PDF show how training ended, not a frozen "0%"."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT
from shared import pdf

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
FINAL_LINE = re.compile(r"^training: 40/40 steps, loss 0\.025, \d+\.\d s$")  # the loop below ends at loss 1/40
LOOP = """from shared.training import progress_bar
for step in (bar := progress_bar(range(40), desc="training")):
    bar.set_postfix(loss=f"{1 / (step + 1):.3f}", refresh=False)
print("done")"""
BY_HAND = """with progress_bar(total=7, desc="reading", unit="batches") as bar:
    bar.update(7)"""
# A call site: the language-model loop of shared.training, on a model small enough to train in a moment.
TRAINING = """import torch
from torch import nn
from shared.training import train_language_model
model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5))
batches = lambda epoch: iter([(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))] * 4)
losses = train_language_model(model, batches, steps=6, lr=0.1, device=torch.device("cpu"))"""


class RecordingClient(NotebookClient):
    """nbclient that also keeps the kind of every output message as it arrives (what a live Jupyter shows)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.arrived: list[tuple[int, str, list[str]]] = []

    def output(self, outs, msg, display_id, cell_index):
        self.arrived.append((cell_index, msg["msg_type"], list(msg["content"].get("data", {}))))
        return super().output(outs, msg, display_id, cell_index)


def texts(cell: nbformat.NotebookNode) -> list[str]:
    """Every text a saved cell's outputs hold, stream text and text/plain alike."""
    return [output.get("text") or output.get("data", {}).get("text/plain", "") for output in cell.outputs]


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> tuple[Path, RecordingClient]:
    """A notebook with three progress bars, run by nbclient the way nbconvert and make run do, and saved."""
    path = tmp_path_factory.mktemp("bars") / "bars.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in (LOOP, BY_HAND, TRAINING)])
    client = RecordingClient(notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    nbformat.write(notebook, path)
    return path, client


def test_a_bar_is_a_live_widget_while_it_runs(executed):
    _, client = executed
    shown = [cell for cell, kind, data in client.arrived if kind == "display_data" and WIDGET_VIEW in data]
    assert shown == [0, 1, 2]


def test_a_saved_notebook_holds_each_bars_final_line_and_no_frozen_bar(executed):
    path, _ = executed
    notebook = nbformat.read(path, as_version=4)
    loop, by_hand, training = (texts(cell) for cell in notebook.cells)
    assert FINAL_LINE.match(loop[0]), loop
    assert loop[1:] == ["done\n"]
    assert re.fullmatch(r"reading: 7/7 batches, \d+\.\d s", by_hand[0]), by_hand
    assert re.fullmatch(r"training: 6/6 steps, loss \d+\.\d{3}, \d+\.\d s", training[0]), training
    outputs = json.dumps([cell.outputs for cell in notebook.cells])
    assert "%|" not in outputs and WIDGET_VIEW not in outputs  # no bar is left, frozen or not


def test_the_pdf_of_a_run_notebook_prints_the_final_line(executed):
    if pdf.find_browser() is None:
        pytest.skip("no Chromium installed (apt-get install chromium libjs-mathjax)")
    path, _ = executed
    text = subprocess.run(["pdftotext", str(pdf.export(path)), "-"], capture_output=True, text=True, check=True).stdout
    assert "training: 40/40 steps, loss 0.025" in text
    assert "0%" not in text


def test_in_a_terminal_the_bar_ends_as_the_same_line():
    code = LOOP.replace('print("done")', "")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stderr == ""  # a check cell that writes to stderr scores 0
    last = result.stdout.splitlines()[-1]  # the bar redraws with \r, which text mode reads as line ends
    assert FINAL_LINE.match(last), repr(result.stdout[-300:])


def test_the_course_makes_every_bar_with_progress_bar():
    # A bar made with tqdm itself would freeze at "0%" in executed copies again.
    places = [*sorted((ROOT / "shared").glob("*.py")), *sorted((ROOT / "solutions").glob("*/*.ipynb"))]
    direct = [str(path.relative_to(ROOT)) for path in places if path.name != "training.py" and "tqdm" in path.read_text()]
    assert not direct, f"use shared.training.progress_bar instead of tqdm in {direct}"
