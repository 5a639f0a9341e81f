"""Start a student's IPython kernel in a sandbox; `make grade` uses it through a kernelspec on Linux.

Usage (by jupyter_client): python sandbox.py [--cpus N] <connection file>

With bubblewrap (`bwrap`), the kernel runs with no capabilities, no network and its own process
tree. Its user: when grading runs as root, a user id of the kernel's own (FIRST_UID + the launcher's
pid), because Linux exempts root from the process limit and a shared id would let one kernel's fork
bomb use up the others' limit; otherwise the user nobody in a user namespace, mapped to the grader.
The instructor's folders (autograder/ with the hidden references, solutions/, .git/), all
submissions, and the grading output (gradebook, other students' graded notebooks) are replaced by
empty folders, except this submission's own folder and its hidden-check outbox. Limits: address
space ($GRADING_MEMORY_MB, default 4096), processes (256; as a normal user, 256 more than that
user already runs), file size (256 MB), and 512 MB in each emptied folder; preprocessors.py holds
what the kernel adds to its folders on disk (its working folder and outbox) to a quota per cell.
When grading as root on a machine with cgroups, the kernel as a whole (every process it starts,
detached or not) also gets one group (isolation.py): a CPU quota of --cpus cores, the memory limit
for all its processes together, and the process limit. Kernels run at a lower CPU priority (nice 10)
than the grader.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import isolation

REPOSITORY = Path(__file__).resolve().parent.parent
MEMORY_BYTES = int(os.environ.get("GRADING_MEMORY_MB", "4096")) * 2**20
EXTRA_PROCESSES = 256
EMPTIED = ("/tmp", "/root", "/home")  # shown empty inside the sandbox
FIRST_UID = 200_000  # ids no account uses; a kernel takes FIRST_UID + its launcher's pid
FILE_BYTES = 256 * 2**20
SCRATCH_BYTES = 512 * 2**20  # each of the emptied folders (/tmp, /root, /home) holds at most this much
KERNEL_NICENESS = 10  # the grader's own processes come first


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
        return ["--perms", "0755", "--tmpfs", str(path)]
    if path.exists():
        return ["--ro-bind", "/dev/null", str(path)]
    return []


def give_to(uid: int, writable: list[Path], connection_file: str) -> None:
    """Hand the folders the kernel writes to, and its connection file, to the user id `uid`."""
    for folder in writable:
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, uid, uid, follow_symlinks=False)
    os.chown(connection_file, uid, uid)


def passable_parents(path: Path, emptied: list[Path]) -> list[str]:
    """bwrap arguments creating `path`'s parents inside an emptied folder as 0755 (bwrap makes them 0700).

    A kernel that has dropped to its own user id could not pass through 0700 parents owned by root:
    its outbox under a hidden <repository>/.grading/ would then not exist for it.
    """
    inside = [parent for parent in reversed(path.parents) if any(parent.is_relative_to(folder) and parent != folder for folder in emptied)]
    return [argument for parent in inside for argument in ("--perms", "0755", "--dir", str(parent))]


def sandbox_command(connection_file: str, cpus: float) -> list[str]:
    """The bwrap command line that runs this script's inner stage for `connection_file`."""
    here, output = Path.cwd(), Path(os.environ["GRADING_OUTPUT"]).resolve()
    if not here.is_relative_to(output / "autograded"):  # the folder is handed to the kernel's user: never anything else
        raise SystemExit(f"sandbox.py: a graded kernel runs in {output / 'autograded'}/<student>/<assignment>, not in {here}")
    sockets = Path(json.loads(Path(connection_file).read_text())["ip"]).parent  # ipc transport: "ip" is a path prefix
    writable = [here, Path(os.environ["COURSE_GRADING_OUTBOX"]), sockets]
    secret = [REPOSITORY / "autograder", REPOSITORY / "solutions", REPOSITORY / ".git", Path(os.environ["SUBMISSIONS"]).resolve()]
    if output == REPOSITORY:  # grading output inside the repository: hide its parts, not the repository
        secret += [output / name for name in ("autograded", "feedback", ".grading", "gradebook.db", "grades.csv", "grades_by_test.csv")]
    else:
        secret.append(output)
    if os.geteuid() == 0:
        # Root sets the sandbox up, and its inner stage drops to a user id of this kernel's own.
        uid, tasks = FIRST_UID + os.getpid(), 0
        give_to(uid, writable, connection_file)
        # The whole kernel, with whatever it starts or detaches, shares one CPU quota, memory limit and process count.
        isolation.enter(f"kernel-{os.getpid()}", isolation.Limits(cpus, MEMORY_BYTES, EXTRA_PROCESSES))
        identity = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        uid, tasks = 0, tasks_of_this_user()
        identity = ["--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"]
    command = [
        "bwrap", *identity, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
        "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
    ]
    for folder in EMPTIED:  # in memory, and of a bounded size: what a kernel writes there is not on the disk
        command += ["--perms", "1777" if folder == "/tmp" else "0755", "--size", str(SCRATCH_BYTES), "--tmpfs", folder]
    emptied = [Path(folder) for folder in EMPTIED]
    # Show again what the kernel needs if it lives under a hidden folder: the repository, the Python install.
    for needed in dict.fromkeys([REPOSITORY, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]):
        command += passable_parents(needed, emptied) + ["--ro-bind", str(needed), str(needed)]
    for path in secret:
        command += hide(path)
    emptied += [path for path in secret if path.is_dir()]
    for path in writable:
        command += passable_parents(path, emptied) + ["--bind", str(path), str(path)]
    command += passable_parents(Path(connection_file), emptied) + ["--ro-bind", connection_file, connection_file]
    limits = [str(MEMORY_BYTES), str(tasks + EXTRA_PROCESSES), str(FILE_BYTES), str(uid), str(KERNEL_NICENESS)]
    # ipykernel would take the pid namespace for its parent exiting; --die-with-parent covers that instead.
    return command + ["--unsetenv", "JPY_PARENT_PID", "--setenv", "HOME", "/tmp", "--chdir", str(here), sys.executable, "-c", INSIDE, connection_file, *limits]


# The inner stage runs inside the sandbox, where autograder/ (this file) is hidden: it is passed as code.
# argv: connection file, the limits on address space, processes and file size, the user id to take (0: keep),
# and the niceness.
INSIDE = """
import os, resource, sys
connection_file, memory, processes, file_size, uid, niceness = sys.argv[1], *map(int, sys.argv[2:7])
limits = [(resource.RLIMIT_AS, memory), (resource.RLIMIT_NPROC, processes), (resource.RLIMIT_FSIZE, file_size), (resource.RLIMIT_CORE, 0)]
for limit, value in limits:
    resource.setrlimit(limit, (value, value))
os.nice(niceness)
try:  # the kernel leads a session of its own, so the scheduler also weighs its session group: lower that too
    with open("/proc/self/autogroup", "w") as autogroup:
        autogroup.write(str(niceness))
except OSError:
    pass
quiet = os.open(os.devnull, os.O_WRONLY)  # ipykernel prints a connection banner when no frontend is its parent
os.dup2(quiet, 1)
if uid:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # from root to another id: every capability goes too
os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", connection_file])
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Start a graded IPython kernel in a sandbox.")
    parser.add_argument("connection_file")
    parser.add_argument("--cpus", type=float, default=1.0, help="the CPU quota of the kernel as a whole, in cores (with cgroups)")
    arguments = parser.parse_args()
    command = sandbox_command(arguments.connection_file, arguments.cpus)
    os.execvp(command[0], command)
