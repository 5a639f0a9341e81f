"""The student bundle: everything a student needs, nothing an instructor must keep."""

import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import ROOT
from student_bundle import build, leaks


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build(tmp_path_factory.mktemp("dist") / "student-bundle")


def test_bundle_has_what_students_need(bundle):
    for path in ["README.md", "Makefile", "pyproject.toml", "requirements.txt", "requirements.lock", "environment.yml",
                 "shared/checks.py", "shared/references/03_rnn_lstm.pt", "notebooks/03_rnn_lstm/03_rnn_lstm.ipynb", "data/README.md"]:
        assert (bundle / path).is_file(), path
    assert "make setup" in (bundle / "README.md").read_text()


def test_bundle_holds_no_instructor_material(bundle):
    for folder in ("solutions", "autograder", "tests", "tools"):
        assert not (bundle / folder).exists()
    assert leaks(bundle) == []
    text = "".join(p.read_text(errors="replace") for p in bundle.rglob("*") if p.is_file() and p.suffix != ".pt")
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "### END"):
        assert marker not in text
    with tarfile.open(bundle.with_name("student-bundle.tar.gz")) as archive:
        names = archive.getnames()
    assert "student-bundle/notebooks/03_rnn_lstm/03_rnn_lstm.ipynb" in names
    assert not any("solutions" in name or "autograder" in name for name in names)


def test_leak_check_catches_a_solution_in_the_bundle(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "x.ipynb").write_text("### BEGIN SOLUTION\nanswer\n### END SOLUTION\n")
    (tmp_path / "solutions").mkdir()
    found = leaks(tmp_path)
    assert "notebooks/x.ipynb: contains 'BEGIN SOLUTION'" in found and "solutions: instructor-only folder" in found


def test_student_bundle_target_builds_in_dist():
    from conftest import make

    make("student-bundle")
    assert (ROOT / "dist" / "student-bundle" / "notebooks").is_dir()


# A release per assignment, and the shared modules generated from solution cells ---------------------------------

def test_generated_modules_match_their_solution_cells():
    """shared/attention.py and shared/lstm_lm.py are what make release writes from 04's and 03's solution cells."""
    from export_helpers import exported_cells, module_texts

    texts = module_texts(exported_cells())
    assert set(texts) == {"shared/attention.py", "shared/lstm_lm.py"}
    for module, text in texts.items():
        assert (ROOT / module).read_text(encoding="utf-8") == text, f"{module} is out of date: run make release"
        assert "SOLUTION" not in text and "Not allowed here" not in text


def test_answer_code_drops_the_markers_and_the_note_only():
    from export_helpers import answer_code

    source = ("# Not allowed here (write it yourself): torch.softmax,\n#   torch.nn.Softmax\ndef f(x):\n"
              "    \"\"\"Doc.\"\"\"\n    ### BEGIN SOLUTION\n    return x + 1  # why\n    ### END SOLUTION\n")
    assert answer_code(source) == 'def f(x):\n    """Doc."""\n    return x + 1  # why\n'


@pytest.fixture(scope="module")
def bundle_of_04(tmp_path_factory):
    return build(tmp_path_factory.mktemp("dist") / "student-bundle", ["04_attention"])


def test_a_bundle_holds_only_its_assignments_and_the_modules_they_import(bundle_of_04):
    assert sorted(p.name for p in (bundle_of_04 / "notebooks").iterdir()) == ["04_attention"]
    assert sorted(p.name for p in (bundle_of_04 / "shared" / "references").iterdir()) == ["04_attention.mistakes.pt", "04_attention.pt"]
    modules = {p.name for p in (bundle_of_04 / "shared").glob("*.py")}
    assert "attention.py" not in modules  # 04's own answers
    assert not modules & {"lstm_lm.py", "seq2seq.py", "glove.py", "tinystories.py", "arithmetic.py"}  # nothing 04 imports
    assert {"checks.py", "data.py", "plotting.py", "notebook_check.py", "pdf.py"} <= modules


def test_every_module_a_bundled_notebook_imports_is_in_the_bundle(tmp_path):
    """Import what each notebook imports from the bundle's own shared package (not this checkout's), one bundle each."""
    from student_bundle import imported_modules, notebook_code

    for assignment in ("01_lstm_by_hand", "05_seq2seq_attention", "07_gpt"):
        bundle = build(tmp_path / assignment / "student-bundle", [assignment])
        modules = sorted(imported_modules(notebook_code(assignment)) & {p.stem for p in (ROOT / "shared").glob("*.py")})
        script = ("import importlib, shared\nassert shared.__file__.startswith(%r), shared.__file__\n"
                  "for name in %r: importlib.import_module('shared.' + name)\n" % (str(bundle), modules))
        result = subprocess.run([sys.executable, "-c", script], cwd=bundle, env={**os.environ, "PYTHONPATH": str(bundle)},
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{assignment}: {result.stderr[-2000:]}"


def test_no_single_assignment_bundle_holds_an_answer_it_releases(tmp_path, assignment_names):
    from student_bundle import answers_in_bundle

    for assignment in assignment_names:
        bundle = build(tmp_path / assignment / "student-bundle", [assignment])  # the build itself refuses a leak
        assert answers_in_bundle(bundle, [assignment]) == []
    # a later assignment brings the earlier answers it builds on
    assert (tmp_path / "05_seq2seq_attention" / "student-bundle" / "shared" / "attention.py").is_file()
    assert (tmp_path / "07_gpt" / "student-bundle" / "shared" / "lstm_lm.py").is_file()


def test_the_answer_check_finds_a_restyled_copy_and_ignores_a_namesake(tmp_path):
    from student_bundle import answers_in_bundle

    (tmp_path / "shared").mkdir()
    # 04's masked_softmax, renamed, annotated and re-commented: still the answer
    (tmp_path / "shared" / "softmaxes.py").write_text(
        "import torch\n\n\ndef softmax_with_lengths(X: torch.Tensor, valid_lens=None) -> torch.Tensor:\n"
        "    '''Another docstring.'''\n    if valid_lens is None:\n        return torch.softmax(X, dim=-1)\n"
        "    if valid_lens.dim() == 1:\n        valid_lens = valid_lens[:, None]\n"
        "    positions = torch.arange(X.shape[-1], device=X.device)\n    keep = positions < valid_lens[..., None]\n"
        "    weights = torch.softmax(X.masked_fill(~keep, torch.finfo(X.dtype).min), dim=-1)\n"
        "    return weights.masked_fill(~keep, 0.0)\n")
    found = answers_in_bundle(tmp_path, ["04_attention"])
    assert found == ["shared/softmaxes.py: softmax_with_lengths is the answer to 04_attention's exercise masked_softmax: masked_softmax"]
    # shared/experiments.py has a train() and an evaluate() of its own (07's), unlike 08's exercises of those names
    shutil.copy2(ROOT / "shared" / "experiments.py", tmp_path / "shared" / "experiments.py")
    (tmp_path / "shared" / "softmaxes.py").unlink()
    assert answers_in_bundle(tmp_path, ["08_tinystories_lstm"]) == []


def test_a_bundle_cannot_release_an_assignment_with_one_that_imports_its_answers(tmp_path):
    with pytest.raises(SystemExit, match="05_seq2seq_attention needs shared/attention.py, which holds the answers to 04_attention"):
        build(tmp_path / "student-bundle", ["04_attention", "05_seq2seq_attention"])
    with pytest.raises(SystemExit, match="Unknown assignment"):
        build(tmp_path / "student-bundle", ["4_attention"])
    assert not (tmp_path / "student-bundle").exists()


def test_student_bundle_target_builds_one_assignment():
    from conftest import make

    result = make("student-bundle", "ASSIGNMENTS=03_rnn_lstm")
    bundle = ROOT / "dist" / "student-bundle"
    assert sorted(p.name for p in (bundle / "notebooks").iterdir()) == ["03_rnn_lstm"]
    assert not (bundle / "shared" / "lstm_lm.py").exists()
    assert "03_rnn_lstm" in result.stdout
    refused = make("student-bundle", "ASSIGNMENTS=03_rnn_lstm,07_gpt", check=False)
    assert refused.returncode != 0 and "07_gpt needs shared/lstm_lm.py" in refused.stderr + refused.stdout


def test_export_tool_reports_nothing_out_of_date():
    """The modules match their cells, and every answer cell of 03 and 04 forbids what their modules define."""
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "export_helpers.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    from notebooks import forbidden

    import nbformat

    for assignment, names in {"04_attention": ["shared.attention.masked_softmax", "shared.attention.DotProductAttention"],
                              "03_rnn_lstm": ["shared.lstm_lm.LSTM", "shared.lstm_lm.LSTMLM"]}.items():
        notebook = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
        answers = [c for c in notebook.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]
        assert answers and all(set(names) <= set(forbidden(c)) for c in answers), assignment


def test_an_import_line_names_its_modules_and_nothing_from_the_next_line():
    """`from shared import X` followed by other code bundles X (the pattern once ran on into the next lines)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from student_bundle import imported_modules

    code = "from shared import data\n\nimport os\nfrom shared import (glove,\n    seq2seq)\nfrom shared.attention import f\nimport shared.vocab"
    assert imported_modules(code) == {"data", "glove", "seq2seq", "attention", "vocab"}
