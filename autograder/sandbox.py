"""Start a student's IPython kernel in a sandbox; `make grade` uses it through a kernelspec on Linux.

Usage (by jupyter_client): python sandbox.py <connection file>

With bubblewrap (`bwrap`), the kernel runs as the user nobody with no capabilities, no network and
its own process tree. The instructor's folders (autograder/ with the hidden references,
solutions/, .git/), all submissions, and the grading output (gradebook, other students'
graded notebooks) are replaced by empty folders, except this submission's own folder and its
hidden-check outbox. Limits: address space ($GRADING_MEMORY_MB, default 4096), processes (256
more than the grading user already runs), and file size (256 MB).
"""

import os
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
MEMORY_BYTES = int(os.environ.get("GRADING_MEMORY_MB", "4096")) * 2**20
EXTRA_PROCESSES = 256
FILE_BYTES = 256 * 2**20


def tasks_of_this_user() -> int:
    """Threads and processes running under this real uid (RLIMIT_NPROC counts them all)."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(entry.path).st_uid == os.getuid():
                    count += len(os.listdir(f"{entry.path}/task"))
            except OSError:
                continue
    return count


def hide(path: Path) -> list[str]:
    """bwrap arguments that make `path` look empty (a folder) or blank (a file)."""
    if path.is_dir():
        return ["--tmpfs", str(path)]
    if path.exists():
        return ["--ro-bind", "/dev/null", str(path)]
    return []


def sandbox_command(connection_file: str) -> list[str]:
    """The bwrap command line that runs this script's inner stage for `connection_file`."""
    here, output = Path.cwd(), Path(os.environ["GRADING_OUTPUT"]).resolve()
    writable = [here, Path(os.environ["COURSE_GRADING_OUTBOX"]), Path(os.environ["JUPYTER_RUNTIME_DIR"])]  # the last: sockets
    secret = [REPOSITORY / "autograder", REPOSITORY / "solutions", REPOSITORY / ".git", Path(os.environ["SUBMISSIONS"]).resolve()]
    if output == REPOSITORY:  # grading output inside the repository: hide its parts, not the repository
        secret += [output / name for name in ("autograded", "feedback", ".grading", "gradebook.db", "grades.csv", "grades_by_test.csv")]
    else:
        secret.append(output)
    command = [
        "bwrap", "--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL",
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
        "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
        "--tmpfs", "/tmp", "--tmpfs", "/root", "--tmpfs", "/home",
    ]
    # Show again what the kernel needs if it lives under a hidden folder: the repository, the Python install.
    for needed in dict.fromkeys([REPOSITORY, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]):
        command += ["--ro-bind", str(needed), str(needed)]
    for path in secret:
        command += hide(path)
    for path in writable:
        command += ["--bind", str(path), str(path)]
    command += ["--ro-bind", connection_file, connection_file]
    limits = [str(MEMORY_BYTES), str(tasks_of_this_user() + EXTRA_PROCESSES), str(FILE_BYTES)]
    # ipykernel would take the pid namespace for its parent exiting; --die-with-parent covers that instead.
    return command + ["--unsetenv", "JPY_PARENT_PID", "--setenv", "HOME", "/tmp", "--chdir", str(here), sys.executable, "-c", INSIDE, connection_file, *limits]


# The inner stage runs inside the sandbox, where autograder/ (this file) is hidden: it is passed as code.
# argv: connection file, then the limits on address space, processes and file size.
INSIDE = """
import os, resource, sys
connection_file, memory, processes, file_size = sys.argv[1], *map(int, sys.argv[2:5])
limits = [(resource.RLIMIT_AS, memory), (resource.RLIMIT_NPROC, processes), (resource.RLIMIT_FSIZE, file_size), (resource.RLIMIT_CORE, 0)]
for limit, value in limits:
    resource.setrlimit(limit, (value, value))
os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", connection_file])
"""


if __name__ == "__main__":
    os.execvp("bwrap", sandbox_command(sys.argv[1]))
