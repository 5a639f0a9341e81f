"""Start a student's IPython kernel in a sandbox; `make grade` uses it through a kernelspec on Linux.

Usage (by jupyter_client): python sandbox.py --output DIR [--cpus N] [--memory-mb M] <connection file> --scratch DIR
                           [--zygote DIR]
With --zygote, the worker's kernel zygote (kernel_zygote.py, started with --kernel-zygote) forks the kernel, with
the same user id, group, limits and folders as below, and this process stays until the kernel's namespace ends;
when no zygote answers, the kernel starts afresh as below.

With bubblewrap (`bwrap`), the kernel runs with no capabilities, no network and its own process
tree. Its user: when grading runs as root, a user id of the kernel's own (FIRST_UID + the launcher's
pid), because Linux exempts root from the process limit and a shared id would let one kernel's fork
bomb use up the others' limit; otherwise the user nobody in a user namespace, mapped to the grader.
The instructor's folders (autograder/ with the hidden references, solutions/, .git/), all
submissions, and the grading output (gradebook, other students' graded notebooks) are replaced by
empty folders, except this submission's own folder. Limits: address
space (--memory-mb, from $GRADING_MEMORY_MB, default 4096), processes (256; as a normal user, 256 more than that
user already runs), file size (256 MB), and 512 MB in each emptied folder; preprocessors.py holds
what the kernel adds to its working folder on disk to a quota per cell.
When grading as root on a machine with cgroups, the kernel as a whole (every process it starts,
detached or not) also gets one group (isolation.py): a CPU quota of --cpus cores, the memory limit
for all its processes together, and the process limit. Kernels run at a lower CPU priority (nice 10)
than the grader.
"""

import argparse
import importlib.util
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import isolation
from shared import grading_contract as contract

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
EXTRA_PROCESSES = 256
FIRST_UID = 200_000  # ids no account uses; a kernel takes FIRST_UID + its launcher's pid
FILE_BYTES = 256 * 2**20
SCRATCH_BYTES = 512 * 2**20  # each of the in-memory folders (/tmp, /home) holds at most this much
KERNEL_NICENESS = 10  # the grader's own processes come first
ZYGOTE_SOCKET = "kernels.sock"  # in a kernel zygote's folder (--kernel-zygote): where launchers ask it for a kernel
KERNEL_PID_SUFFIX = ".kernel-pid"  # beside a connection file: the pid of the kernel a zygote forked for it
# This interpreter as the sandbox shows it: through the environment's real folder, for the path grading was started
# with may pass through a link the sandbox does not show (a checkout whose .venv links to another one's).
PYTHON = Path(sys.prefix).resolve() / "bin" / Path(sys.executable).name


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


SYSTEM_FOLDERS = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin")  # programs and libraries, read-only
SYSTEM_FILES = (  # the few files of /etc that Python, its libraries and fonts read
    "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
    "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/fonts", "/etc/mime.types", "/etc/os-release",
)
# The only variables a kernel gets: what the course's code reads while grading. Nothing else of the grader's.


def give_to(uid: int, writable: list[Path], files: list[str]) -> None:
    """Hand the folders a sandboxed process writes to, and `files` (a kernel's connection file), to the user id `uid`."""
    for folder in writable:
        os.chown(folder, uid, uid, follow_symlinks=False)
        for parent, folders, names in os.walk(folder):  # links are changed themselves, never followed
            for name in folders + names:
                os.chown(os.path.join(parent, name), uid, uid, follow_symlinks=False)
    for name in files:
        os.chown(name, uid, uid)


def passable_parents(path: Path, emptied: list[Path]) -> list[str]:
    """bwrap arguments creating `path`'s parents inside an emptied folder as 0755 (bwrap makes them 0700).

    A kernel that has dropped to its own user id could not pass through 0700 parents owned by root:
    the folders bound for it under a hidden <repository>/.grading/ would then not exist for it.
    """
    inside = [parent for parent in reversed(path.parents) if any(parent.is_relative_to(folder) and parent != folder for folder in emptied)]
    return [argument for parent in inside for argument in ("--perms", "0755", "--dir", str(parent))]


def course_folders() -> list[Path]:
    """What a kernel reads of the course: the `shared` package this Python imports (with the public references) and data/."""
    spec = importlib.util.find_spec("shared")
    packages = [Path(location).resolve() for location in (spec.submodule_search_locations or [])] if spec else []
    packages.append(REPOSITORY / "shared")
    folders = [folder for package in packages for folder in (package, package.parent / "data")]
    folders += [Path(os.environ[name]).resolve() for name in ("COURSE_DATA_DIR", "GLOVE_DIR") if os.environ.get(name)]
    return [folder for folder in dict.fromkeys(folders) if folder.exists()]


def prepare_scratch(scratch: Path, here: Path) -> None:
    """The kernel's working folder: a copy of the submission nbgrader put in `here`, made once per submission.

    The kernel writes there, never in the autograded folder itself, where the grader then writes the graded
    notebook and nbgrader sets permissions: a link the kernel planted there could make root write or chmod
    through it. A restarted kernel keeps the folder as its predecessor left it.
    """
    if any(scratch.iterdir()):
        return
    for entry in here.iterdir():  # not the notebook: nbgrader's copy of it holds the hidden tests
        if entry.is_file() and not entry.is_symlink() and entry.suffix != ".ipynb":
            shutil.copyfile(entry, scratch / entry.name, follow_symlinks=False)


# bwrap's identity arguments: as root the inner stage drops to a user id of its own (it keeps the two capabilities that
# takes); as a normal user the sandbox is a user namespace in which the kernel is nobody.
ROOT_IDENTITY = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
USER_IDENTITY = ["--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"]


def sandbox_failure() -> str | None:
    """Why bubblewrap cannot start this course's sandbox here (its own words), or None when it can.

    A container without the privileges bwrap needs (no user namespaces, no mount namespaces) refuses every sandbox:
    grading must know before the first kernel, or each student would score 0 for a kernel that never started.
    """
    identity = ROOT_IDENTITY if os.geteuid() == 0 else USER_IDENTITY
    command = allow_list(identity, [], []) + ["--chdir", "/tmp", str(PYTHON), "-I", "-c", "import sys"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{type(error).__name__}: {error}"
    if result.returncode == 0:
        return None
    return (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]


def identity_and_limits(name: str, cpus: float, memory_bytes: int, writable: list[Path], extra_files: list[str]) -> tuple[list[str], list[str]]:
    """(bwrap's identity arguments, the inner stage's limit arguments) for a sandboxed process; as root, also enter its cgroup."""
    if os.geteuid() == 0:
        # Root sets the sandbox up, and its inner stage drops to a user id of this process's own.
        uid, tasks = FIRST_UID + os.getpid(), 0
        give_to(uid, writable, extra_files)
        # The whole process, with whatever it starts or detaches, shares one CPU quota, memory limit and process count.
        isolation.enter(f"{name}-{os.getpid()}", isolation.Limits(cpus, memory_bytes, EXTRA_PROCESSES))
        identity = ROOT_IDENTITY
    else:
        uid, tasks = 0, tasks_of_this_user()
        identity = USER_IDENTITY
    return identity, [str(memory_bytes), str(tasks + EXTRA_PROCESSES), str(FILE_BYTES), str(uid), str(KERNEL_NICENESS)]


def allow_list(identity: list[str], binds: list[tuple[Path, Path]], read_only: list[tuple[Path, Path]]) -> list[str]:
    """The bwrap command line up to the program: an empty root showing only the system, Python, the course's public
    folders, in-memory /tmp and /home, the `binds` (source, target) writable and `read_only` files."""
    command = ["bwrap", *identity, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
               "--dev", "/dev", "--proc", "/proc"]
    for name in SYSTEM_FOLDERS:
        path = Path(name)
        if path.is_symlink():  # merged /usr: /bin -> usr/bin
            command += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            command += ["--ro-bind", name, name]
    root = [Path("/")]  # bwrap makes a bound path's missing parents 0700 and root's: passable_parents makes them 0755
    for name in (*SYSTEM_FILES, "/sys/devices/system/cpu"):
        command += passable_parents(Path(name), root) + ["--ro-bind-try", name, name]
    for folder in ("/tmp", "/home", "/dev/shm"):  # in memory, and of a bounded size: what is written there is not on the disk
        command += ["--perms", "1777" if folder != "/home" else "0755", "--size", str(SCRATCH_BYTES), "--tmpfs", folder]
    python = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent]
    for needed in dict.fromkeys(python + course_folders()):
        if not any(needed.is_relative_to(system) for system in map(Path, SYSTEM_FOLDERS)):
            command += passable_parents(needed, root) + ["--ro-bind", str(needed), str(needed)]
    for source, target in binds:
        command += passable_parents(target, root) + ["--bind", str(source), str(target)]
    for source, target in read_only:
        command += passable_parents(target, root) + ["--ro-bind", str(source), str(target)]
    command += ["--clearenv"]
    for name, value in sandbox_environment().items():
        command += ["--setenv", name, value]
    return command


def sandbox_environment() -> dict[str, str]:
    """Every variable a sandboxed process starts with: a home in /tmp, the sandbox's PATH, and the kernel variables we have."""
    fixed = {"HOME": "/tmp", "LANG": "C.UTF-8", "PATH": f"{PYTHON.parent}:/usr/local/bin:/usr/bin:/bin"}
    return {**fixed, **{name: os.environ[name] for name in contract.KERNEL_VARIABLES if name in os.environ}}


def kernel_folders(connection_file: str, output: Path, scratch: Path) -> tuple[Path, Path]:
    """(the submission's folder the kernel runs for, its sockets' folder), once `scratch` holds the submission's files.

    Both are checked: the folders are handed to the kernel's user, so never anything else."""
    here, output = Path.cwd(), output.resolve()
    if not here.is_relative_to(output / "autograded"):
        raise SystemExit(f"sandbox.py: a graded kernel runs in {output / 'autograded'}/<student>/<assignment>, not in {here}")
    if not scratch.resolve().is_relative_to(output / ".grading" / "scratch"):
        raise SystemExit(f"sandbox.py: a kernel's scratch folder is under {output / '.grading' / 'scratch'}, not {scratch}")
    prepare_scratch(scratch, here)
    return here, Path(json.loads(Path(connection_file).read_text())["ip"]).parent  # ipc transport: "ip" is a path prefix


def sandbox_command(connection_file: str, cpus: float, memory_bytes: int, output: Path, scratch: Path) -> list[str]:
    """The bwrap command line that runs this script's inner stage for `connection_file`: a kernel working in the current
    folder (a submission's, under `output`/autograded), which it sees as `scratch`."""
    here, sockets = kernel_folders(connection_file, output, scratch)
    identity, limits = identity_and_limits("kernel", cpus, memory_bytes, [scratch, sockets], [connection_file])
    binds = [(scratch, here), (sockets, sockets)]
    command = allow_list(identity, binds, [(Path(connection_file), Path(connection_file))])
    program = [str(PYTHON), "-m", "ipykernel_launcher", "-f", connection_file]
    return command + ["--chdir", str(here), str(PYTHON), "-c", INSIDE, *limits, *program]


def harness_command(jobs: Path, cpus: float, memory_bytes: int, output: Path) -> list[str]:
    """The bwrap command line of a worker's clean second pass (harness_zygote.py), working in `jobs` under `output`."""
    output = output.resolve()
    if not jobs.resolve().is_relative_to(output / ".grading" / "harness"):
        raise SystemExit(f"sandbox.py: a harness works under {output / '.grading' / 'harness'}, not {jobs}")
    identity, limits = identity_and_limits("harness", cpus, memory_bytes, [jobs], [])
    inside = Path("/grading-harness")
    code = [(HERE / name, inside / name) for name in ("harness_zygote.py", "from_scratch.py") if (HERE / name).exists()]
    command = allow_list(identity, [(jobs, jobs)], code)
    program = [str(PYTHON), "-I", "-B", str(inside / "harness_zygote.py"), "--in-sandbox"]
    return command + ["--chdir", str(jobs), str(PYTHON), "-c", INSIDE, *limits, *program]


# The inner stage runs inside the sandbox, where autograder/ (this file) is not shown: it is passed as code.
# argv: the limits on address space, processes and file size, the user id to take (0: keep), the niceness,
# then the program to run.
INSIDE = """
import os, resource, sys
memory, processes, file_size, uid, niceness = map(int, sys.argv[1:6])
limits = [(resource.RLIMIT_AS, memory), (resource.RLIMIT_NPROC, processes), (resource.RLIMIT_FSIZE, file_size), (resource.RLIMIT_CORE, 0)]
for limit, value in limits:
    resource.setrlimit(limit, (value, value))
os.nice(niceness)
try:  # the process leads a session of its own, so the scheduler also weighs its session group: lower that too
    with open("/proc/self/autogroup", "w") as autogroup:
        autogroup.write(str(niceness))
except OSError:
    pass
# ipykernel prints a connection banner when no frontend is its parent; and what a kernel writes to its own
# stdout and stderr must not reach the grader's log (forged "FAILED" lines): cells' output goes through ipykernel.
# (The harness keeps its stdin and stdout: they are its channel to the grader, and it hides them itself.)
quiet = os.open(os.devnull, os.O_WRONLY)
if "ipykernel_launcher" in sys.argv:
    os.dup2(quiet, 1)
os.dup2(quiet, 2)
os.closerange(3, 65536)  # no descriptor of the grader's reaches the sandbox
if uid:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # from root to another id: every capability goes too
os.execv(sys.argv[6], sys.argv[6:])
"""


def zygote_command(folder: Path, slot: Path, sockets: Path, memory_bytes: int, output: Path) -> list[str]:
    """The bwrap command line of a worker's kernel zygote (kernel_zygote.py): listening in `folder`, for kernels that work
    in folders under `slot` and talk to nbgrader through `sockets`."""
    output = output.resolve()
    if not slot.resolve().is_relative_to(output / ".grading" / "scratch"):
        raise SystemExit(f"sandbox.py: kernels' scratch folders are under {output / '.grading' / 'scratch'}, not {slot}")
    # The zygote stays its sandbox's root, with what making a kernel takes: namespaces (CAP_SYS_ADMIN), and as root the
    # kernel's own user id. No kernel keeps any of it (kernel_zygote.take_identity).
    root = os.geteuid() == 0
    identity = [*(ROOT_IDENTITY if root else USER_IDENTITY), "--cap-add", "CAP_SYS_ADMIN"]
    inside = Path("/grading-kernels")
    code = [(HERE / name, inside / name) for name in ("kernel_zygote.py", "harness_zygote.py")]
    command = allow_list(identity, [(folder, folder), (slot, slot), (sockets, sockets)], code)
    tasks = 0 if root else tasks_of_this_user()
    limits = [str(memory_bytes), str(tasks + EXTRA_PROCESSES), str(FILE_BYTES), "0", "0"]
    program = [str(PYTHON), "-B", str(inside / "kernel_zygote.py"), str(folder / ZYGOTE_SOCKET)]
    return command + ["--chdir", str(slot), str(PYTHON), "-c", INSIDE, *limits, *program]


def _sender(channel: socket.socket, expected: bytes) -> int:
    """Read the line `expected` from the zygote's side of `channel`; returns the pid (on this side) of the process that sent it."""
    data, ancillary, _, _ = channel.recvmsg(len(expected), socket.CMSG_SPACE(struct.calcsize("3i")))
    credentials = [item for level, kind, item in ancillary if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    if data != expected or not credentials:
        raise ConnectionError(f"the kernel zygote said {data!r}")
    return struct.unpack("3i", credentials[0][:struct.calcsize("3i")])[0]


def kernel_from_zygote(connection_file: str, cpus: float, memory_bytes: int, output: Path, scratch: Path, zygote: Path) -> bool:
    """Have the worker's zygote (kernel_zygote.py) fork the kernel for `connection_file`, with the user id, control group
    and limits sandbox_command would give it, and stay until that kernel's namespace ends.

    Returns False, having started nothing that lives on, when no zygote answers: the caller starts the kernel itself.
    """
    _, sockets = kernel_folders(connection_file, output, scratch)
    pid_file = Path(connection_file + KERNEL_PID_SUFFIX)
    pid_file.unlink(missing_ok=True)
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # each message says which process sent it
    try:
        channel.connect(str(zygote / ZYGOTE_SOCKET))
    except OSError:
        return False
    root = os.geteuid() == 0
    uid = FIRST_UID + os.getpid() if root else 0
    limits, group = isolation.Limits(cpus, memory_bytes, EXTRA_PROCESSES), f"kernel-{os.getpid()}"
    if root:
        give_to(uid, [scratch, sockets], [])
        grouped = isolation.enter(group, limits)
    request = {"connection": json.loads(Path(connection_file).read_text()), "folder": str(scratch), "uid": uid,
               "environment": sandbox_environment(), "niceness": KERNEL_NICENESS,
               "limits": [memory_bytes, (0 if root else tasks_of_this_user()) + EXTRA_PROCESSES, FILE_BYTES]}
    try:
        channel.sendall((json.dumps(request) + "\n").encode())
        init = _sender(channel, b"init\n")
        if root and grouped and isolation.enter(group, limits, pid=init) != grouped:
            return False  # closing the channel ends the namespace before any kernel runs in it
        channel.sendall(b"go\n")
        kernel = _sender(channel, b"kernel\n")
    except OSError:
        return False
    written = pid_file.with_name(pid_file.name + ".new")
    written.write_text(str(kernel))
    written.replace(pid_file)
    try:
        while channel.recv(4096):  # nothing more comes: the end of the stream is the end of the kernel's namespace
            pass
    except OSError:
        pass
    finally:
        pid_file.unlink(missing_ok=True)
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Start a graded IPython kernel, or a worker's clean second pass, in a sandbox.")
    parser.add_argument("connection_file", nargs="?", help="the kernel's connection file (from jupyter_client)")
    parser.add_argument("--harness", type=Path, help="start the clean second pass working in this folder instead")
    parser.add_argument("--kernel-zygote", type=Path, help="start a worker's kernel zygote listening in this folder instead")
    parser.add_argument("--zygote", type=Path, help="have the kernel zygote listening in this folder fork the kernel")
    parser.add_argument("--sockets", type=Path, help="the kernels' sockets folder (with --kernel-zygote)")
    parser.add_argument("--cpus", type=float, default=1.0, help="the CPU quota of the kernel as a whole, in cores (with cgroups)")
    parser.add_argument("--memory-mb", type=int, default=4096, help="the address space of each process (and, with cgroups, of all)")
    parser.add_argument("--output", type=Path, required=True, help="the grading output (grade.py --output)")
    parser.add_argument("--scratch", type=Path, help="the kernel's writable working folder, under <output>/.grading/scratch "
                                                     "(with --kernel-zygote: the folder its kernels' folders are in)")
    arguments = parser.parse_args()
    memory = arguments.memory_mb * 2**20
    if arguments.harness:
        command = harness_command(arguments.harness, arguments.cpus, memory, arguments.output)
    elif arguments.scratch is None:
        raise SystemExit("sandbox.py: a kernel needs --scratch (its working folder)")
    elif arguments.kernel_zygote:
        command = zygote_command(arguments.kernel_zygote, arguments.scratch, arguments.sockets, memory, arguments.output)
    elif arguments.zygote and kernel_from_zygote(arguments.connection_file, arguments.cpus, memory, arguments.output,
                                                 arguments.scratch, arguments.zygote):
        raise SystemExit(0)
    else:
        command = sandbox_command(arguments.connection_file, arguments.cpus, memory, arguments.output, arguments.scratch)
    os.execvp(command[0], command)
