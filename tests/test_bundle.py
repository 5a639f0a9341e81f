"""The student bundle: everything a student needs, nothing an instructor must keep."""

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
