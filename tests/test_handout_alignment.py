"""Each notebook opens with a table mapping its Parts to the handout, and a list of where it departs from it.

The table's Points column must agree with the nbgrader points of the graded cells under each Part heading,
so adding a Part or changing a cell's points without updating the table fails here. The release in
notebooks/ (made by `make release`) must carry the same table and list.
"""

from __future__ import annotations

import re

import nbformat
import pytest

from conftest import ROOT
from notebooks import assignments

ASSIGNMENTS = assignments()
COLUMNS = ["Part", "What you write", "Handout", "Question", "Handout points", "Points"]
DEPARTURES = "**Where this notebook departs from the handout.**"
PART_HEADING = re.compile(r"^## Part (\d+)\b")
NO_POINTS = {"–", "-", ""}

# Departures the issue names: a student working from the handout must be warned of these before the checks.
NAMED_DEPARTURES = {
    "04_attention": ["valid length 0", "all zeros"],
    "05_seq2seq_attention": ["context first"],
    "07_gpt": ["LayerNorm", "decoder_num_parameters", "`..._GPU`"],
}


def opening_markdown(notebook: nbformat.NotebookNode) -> str:
    """The text of the markdown cells before the first code cell."""
    texts = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            break
        texts.append(cell.source)
    return "\n\n".join(texts)


def alignment_table(text: str) -> list[dict[str, str]]:
    """The rows of the alignment table in `text`, as {column: cell}; fails if there is none."""
    lines = text.splitlines()
    header = "| " + " | ".join(COLUMNS) + " |"
    assert header in lines, f"no handout-alignment table (a line `{header}`) before the first code cell"
    start = lines.index(header) + 2  # skip the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == len(COLUMNS), f"table row with {len(cells)} cells, not {len(COLUMNS)}: {line}"
        rows.append(dict(zip(COLUMNS, cells)))
    assert rows, "the handout-alignment table has no rows"
    return rows


def departures(text: str) -> list[str]:
    """The bullets of the 'Where this notebook departs from the handout' list; fails if there is none."""
    lines = text.splitlines()
    assert DEPARTURES in lines, f"no {DEPARTURES!r} list before the first code cell"
    bullets = []
    for line in lines[lines.index(DEPARTURES) + 1 :]:
        if line.startswith("* "):
            bullets.append(line)
        elif line.strip() or bullets:
            break
    assert bullets, f"the {DEPARTURES!r} list has no items"
    return bullets


def points_of(cell: str) -> int:
    """The total of a Points cell: `–` or a sum such as `10 + *15* + 5` (italics mark extra points)."""
    plain = cell.replace("*", "").replace("_", "").strip()
    if plain in NO_POINTS:
        return 0
    terms = [term.strip() for term in plain.split("+")]
    assert all(term.isdigit() for term in terms), f"Points cell {cell!r} is not a sum of whole numbers (or –)"
    return sum(int(term) for term in terms)


def graded_points_by_part(notebook: nbformat.NotebookNode) -> dict[int, int]:
    """nbgrader points of the graded cells (tests and written answers) under each `## Part N` heading."""
    by_part: dict[int, int] = {}
    part = None
    for cell in notebook.cells:
        nbgrader = cell.metadata.get("nbgrader", {})
        if nbgrader.get("grade"):
            assert part is not None, f"graded cell {cell.id} sits under no `## Part N` heading"
            by_part[part] += nbgrader.get("points", 0)
        if cell.cell_type == "markdown" and not nbgrader:
            for line in cell.source.splitlines():
                if line.startswith("## "):
                    match = PART_HEADING.match(line)
                    part = int(match.group(1)) if match else None
                    if part is not None:
                        by_part.setdefault(part, 0)
    return by_part


def read(folder: str, assignment: str) -> nbformat.NotebookNode:
    """The notebook of `assignment` in solutions/ or notebooks/."""
    return nbformat.read(ROOT / folder / assignment / f"{assignment}.ipynb", as_version=4)


def table_mismatches(notebook: nbformat.NotebookNode) -> list[str]:
    """What the alignment table gets wrong about the notebook's Parts and nbgrader points (empty: nothing)."""
    rows = alignment_table(opening_markdown(notebook))
    problems = [f"the Part cell {row['Part']!r} should be one Part number" for row in rows if not row["Part"].isdigit()]
    problems += [f"Part {row['Part']}: say which handout and question it follows" for row in rows
                 if not (row["Handout"] and row["Question"])]
    if problems:
        return problems
    table: dict[int, int] = {}
    for row in rows:
        table[int(row["Part"])] = table.get(int(row["Part"]), 0) + points_of(row["Points"])
    graded = graded_points_by_part(notebook)
    if sorted(table) != sorted(graded):
        problems.append(f"the table lists Parts {sorted(table)}, the notebook's Part headings are {sorted(graded)}")
    problems += [f"Part {part}: the table says {table[part]} points, its graded cells have {points}"
                 for part, points in graded.items() if part in table and table[part] != points]
    total = sum(c.metadata["nbgrader"].get("points", 0) for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade"))
    if sum(table.values()) != total:
        problems.append(f"the Points column sums to {sum(table.values())}, the notebook's nbgrader total is {total}")
    return problems


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_table_names_every_part_with_its_points(assignment):
    assert table_mismatches(read("solutions", assignment)) == []


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_departures_from_the_handout_are_listed(assignment):
    listed = " ".join(departures(opening_markdown(read("solutions", assignment))))
    for phrase in NAMED_DEPARTURES.get(assignment, []):
        assert phrase in listed, f"the departures list should mention {phrase!r}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_release_carries_the_same_table_and_departures(assignment):
    solution, release = (opening_markdown(read(folder, assignment)) for folder in ("solutions", "notebooks"))
    assert alignment_table(release) == alignment_table(solution), f"notebooks/{assignment} has another table: run make release"
    assert departures(release) == departures(solution), f"notebooks/{assignment} has another departures list: run make release"


def test_points_cells_are_read_as_sums():
    assert points_of("–") == 0
    assert points_of("1 + 2 + 2") == 5
    assert points_of("15 + *10 + 5*") == 30
    with pytest.raises(AssertionError, match="not a sum"):
        points_of("6 × 1")


def test_a_changed_point_value_fails_the_check():
    notebook = read("solutions", "04_attention")
    cell = next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade"))
    cell.metadata["nbgrader"]["points"] += 1
    assert any("Part 1: the table says 15 points, its graded cells have 16" in p for p in table_mismatches(notebook))
    assert any("sums to 30, the notebook's nbgrader total is 31" in p for p in table_mismatches(notebook))


def test_a_new_part_fails_the_check():
    notebook = read("solutions", "06_multihead_attention")
    notebook.cells.insert(len(notebook.cells) - 1, nbformat.v4.new_markdown_cell("## Part 5 · Something new"))
    assert table_mismatches(notebook) == ["the table lists Parts [1, 2, 3, 4], the notebook's Part headings are [1, 2, 3, 4, 5]"]


def test_a_missing_table_is_reported():
    notebook = read("solutions", "05_seq2seq_attention")
    notebook.cells[0].source = "# 05 · no table here"
    with pytest.raises(AssertionError, match="no handout-alignment table"):
        alignment_table(opening_markdown(notebook))
