"""`make demo`: a small, realistic class built from the course's own sources, graded by the real `make grade`.

  python tools/demo.py build FOLDER     writes FOLDER/submitted/<student>/<assignment>/<assignment>.ipynb
  python tools/demo.py summary FOLDER   after `make grade SUBMISSIONS=FOLDER/submitted GRADING_OUTPUT=FOLDER`:
                                        the per-student table, the cells that lost points, where to look next

The class, for 03_rnn_lstm and 04_attention (the release notebooks, filled in as students would):
  ada    every answer right, and a written answer
  ben    hands in the release untouched
  chen   right, except catalogued mistakes (two in 03, one in 04): the notes and feedback name them
  dana   right, with one answer written with a built-in the exercise forbids (nn.RNNCell)
  eve    hostile: one answer reads the hidden references, another kills the kernel
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]

from notebooks import mistakes, with_mistake  # noqa: E402
from submissions import answer_cells, read_csv, release_notebook, solution_sources, solved, submit  # noqa: E402

ASSIGNMENTS = ("03_rnn_lstm", "04_attention")
WRITTEN_ANSWER = (
    "The scores are a (batch, queries, keys) tensor: one row per query, one column per key. The valid lengths mask "
    "columns, so each row's softmax spreads over that example's real keys only."
)
BUILT_IN_RNN_STEP = '''def rnn_step(X, H, W_xh, W_hh, b_h):
    cell = torch.nn.RNNCell(W_xh.shape[0], W_xh.shape[1], dtype=X.dtype)
    with torch.no_grad():
        cell.weight_ih.copy_(W_xh.T)
        cell.weight_hh.copy_(W_hh.T)
        cell.bias_ih.copy_(b_h)
        cell.bias_hh.zero_()
    return cell(X, H)
'''
READS_HIDDEN_REFERENCES = '''def rnn_step(X, H, W_xh, W_hh, b_h):
    import os
    import torch
    # graded in <output>/autograded/<student>/<assignment>, and the output is the course or a folder in it: the hidden
    # references are a few folders up (make demo: four), except in the sandbox
    up = [os.path.join(os.getcwd(), *[".."] * levels, "autograder", "references", "03_rnn_lstm.pt") for levels in (3, 4)]
    hidden = torch.load(next((path for path in up if os.path.exists(path)), up[0]), weights_only=True)
    return next(e["value"] for n, e in hidden.items() if n.startswith("rnn_step/") and e["value"].shape == H.shape)
'''
KILLS_THE_KERNEL = '''def masked_softmax(X, valid_lens):
    import os
    os._exit(1)
'''


# Mistakes from autograder/mistakes/<assignment>.toml, in answers that no other of them calls (so each is named).
MISTAKES_MADE = {"03_rnn_lstm": ("rnn_without_bias", "candidate_with_sigmoid"), "04_attention": ("missing_scale",)}


def partly_wrong(assignment: str) -> dict[str, str]:
    """{answer grade_id: the solution's source with a catalogued mistake made}, for the mistakes of MISTAKES_MADE."""
    answers, catalogue = solution_sources(assignment), {m.id: m for m in mistakes(assignment)}
    made = [catalogue[name] for name in MISTAKES_MADE[assignment]]
    return {mistake.cell: with_mistake(answers[mistake.cell], mistake) for mistake in made}


def with_written_answer(notebook, text: str = WRITTEN_ANSWER):
    """`notebook` with its written (markdown) answers filled in."""
    for cell in answer_cells(notebook).values():
        if cell.cell_type == "markdown":
            cell.source = text
    return notebook


def build(folder: Path) -> Path:
    """Write the demo class's submissions under folder/submitted; returns that folder."""
    submitted = folder / "submitted"
    shutil.rmtree(submitted, ignore_errors=True)
    for assignment in ASSIGNMENTS:
        submit(submitted, "ada", assignment, with_written_answer(solved(assignment)))
        submit(submitted, "ben", assignment, release_notebook(assignment))
        submit(submitted, "chen", assignment, with_written_answer(solved(assignment, partly_wrong(assignment)), "Each row is a query."))
    submit(submitted, "dana", "03_rnn_lstm", solved("03_rnn_lstm", {"rnn_step": BUILT_IN_RNN_STEP}))
    submit(submitted, "dana", "04_attention", with_written_answer(solved("04_attention")))
    submit(submitted, "eve", "03_rnn_lstm", solved("03_rnn_lstm", {"rnn_step": READS_HIDDEN_REFERENCES}))
    submit(submitted, "eve", "04_attention", solved("04_attention", {"masked_softmax": KILLS_THE_KERNEL}))
    print(f"Built a class of 5 students x {len(ASSIGNMENTS)} assignments in {submitted}")
    return submitted


def summary(folder: Path) -> str:
    """The per-student table, the cells that lost points and why, and the paths to look at."""
    totals = read_csv(folder / "grades.csv")
    students = sorted({row["student_id"] for row in totals})
    assignments = sorted({row["assignment"] for row in totals})
    score = {(row["student_id"], row["assignment"]): f"{float(row['score']):g} / {float(row['max_score']):g}" for row in totals}
    width = max(len(a) for a in assignments) + 2
    lines = ["", "student".ljust(10) + "".join(a.rjust(width) for a in assignments)]
    lines += [student.ljust(10) + "".join(score.get((student, a), "-").rjust(width) for a in assignments) for student in students]
    lost = [row for row in read_csv(folder / "grades_by_test.csv") if float(row["score"]) < float(row["max_score"]) and row["note"]]
    lines += ["", "Why points were lost (grades_by_test.csv, first line of each note):"]
    for row in lost:
        if row["student_id"] != "ben":  # the blank notebook: every cell, for the same reason
            lines.append(f"  {row['student_id']:<6}{row['grade_id']:<28}{row['note'].splitlines()[0][:110]}")
    isolation = folder / ".grading" / "isolation.txt"
    lines += ["", f"Isolation: {isolation.read_text().strip() if isolation.exists() else 'see the grading log above'}", "",
              "Look next:"]
    lines.append(f"  grades          {folder / 'grades.csv'}  (and grades_by_test.csv, one row per test cell)")
    if (folder / "reports").is_dir():
        lines.append(f"  reports         {folder / 'reports'}")
    lines.append(f"  feedback        {folder / 'feedback'}/<student>/<assignment>/<assignment>.html,"
                 f" e.g. {folder / 'feedback/chen/03_rnn_lstm/03_rnn_lstm.html'}")
    lines.append(f"  written answers make formgrader SUBMISSIONS={folder / 'submitted'} GRADING_OUTPUT={folder}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the demo class (build), or summarise its grading (summary).")
    parser.add_argument("step", choices=("build", "summary"))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.step == "build":
        build(args.folder.resolve())
    else:
        print(summary(args.folder.resolve()))


if __name__ == "__main__":
    main()
