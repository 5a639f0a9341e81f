"""Build the student bundle: what students clone. No solutions, no hidden references, no grading code.

Usage: python tools/student_bundle.py [output folder]   (default dist/student-bundle)
The bundle is also written as <output>.tar.gz. The build fails if anything instructor-only leaks in.
"""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from notebooks import ROOT

INCLUDE = ["notebooks", "shared", "data", "environment.yml", "requirements.txt", "requirements.lock", "pyproject.toml", "Makefile"]
LEAK_MARKERS = ["BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"]


def tracked_files() -> list[Path]:
    """Files under INCLUDE that git tracks (so local caches and data downloads stay out)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", *INCLUDE], cwd=ROOT, capture_output=True, check=True, text=True)
    return [Path(name) for name in listed.stdout.split("\0") if name]


def leaks(bundle: Path) -> list[str]:
    """Instructor-only content found in the bundle, as 'path: reason' lines."""
    found = []
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle)
        if relative.parts[0] in {"solutions", "autograder", "tests", "tools"}:
            found.append(f"{relative}: instructor-only folder")
        elif path.is_file() and path.suffix != ".pt":
            text = path.read_text(errors="replace")
            found += [f"{relative}: contains '{marker}'" for marker in LEAK_MARKERS if marker in text]
    return found


def build(output: Path) -> Path:
    shutil.rmtree(output, ignore_errors=True)
    for relative in tracked_files():
        target = output / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    shutil.copy2(ROOT / "README.student.md", output / "README.md")
    problems = leaks(output)
    if problems:
        shutil.rmtree(output)
        raise SystemExit("Refusing to build a bundle that leaks instructor material:\n  " + "\n  ".join(problems))
    archive = output.with_name(output.name + ".tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(output, arcname=output.name)
    print(f"student bundle: {output} ({sum(1 for p in output.rglob('*') if p.is_file())} files) and {archive}")
    return output


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist" / "student-bundle")
