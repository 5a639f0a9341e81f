"""A worker's graded kernels, started from one process that has already imported torch (run by `sandbox.py --kernel-zygote`).

Starting a kernel costs Python, ipykernel and `import torch`: more CPU than most submissions' cells. This zygote
pays it once per grading worker, inside the same sandbox as a kernel (sandbox.py), and for each kernel that a
launcher (sandbox.py, started by jupyter_client) asks for on its socket, forks a child that becomes the kernel:

  zygote (root of the sandbox)        accepts a launcher's connection; waits until the earlier kernel's namespace
                                      has ended, empties /tmp and /dev/shm, forks, forgets the connection
    starter                           takes a pid and mount namespace of the kernel's own, forks, waits
      init (pid 1 of that namespace)  its own /proc; hides the zygote's socket; then, once the launcher has moved it
                                      into the kernel's control group, forks the kernel and holds the namespace:
                                      when the kernel ends, or the launcher goes, it kills everything left in it
                                      (and Linux kills whatever remains with the namespace's init)
        kernel                        limits, niceness, its own user id (as root) or no capabilities, then ipykernel

The kernel never holds the zygote's socket or anything of the zygote's, and never meets an earlier kernel or what it
left: each kernel is as separate from the next as one that bubblewrap started afresh. Nothing from a launcher reaches
the zygote itself (the starter reads it), so a kernel forked later inherits no earlier kernel's key.
"""

import ctypes
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import tempfile
import time

import harness_zygote  # bound beside this file in the sandbox: its wipe of the in-memory folders

CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
CAPABILITY_VERSION_3 = 0x20080522
WIPED = harness_zygote.WIPED  # the sandbox's in-memory folders that anyone may write to
STARTER_GRACE_SECONDS = 5  # for an earlier kernel's namespace to end once its launcher has gone

libc = ctypes.CDLL(None, use_errno=True)


def _checked(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def _mount(source: str, target: str, kind: str | None, flags: int, options: str | None = None) -> None:
    _checked(libc.mount(source.encode(), target.encode(), kind.encode() if kind else None, flags,
                        options.encode() if options else None), f"mount {target}")


def drop_capabilities() -> None:
    """Clear this process's capabilities (the user-namespace case, where no other user id exists to switch to)."""
    header = struct.pack("Ii", CAPABILITY_VERSION_3, 0)
    data = ctypes.create_string_buffer(24)  # two all-zero {effective, permitted, inheritable} sets
    _checked(libc.capset(ctypes.c_char_p(header), data), "capset")


def take_identity(uid: int) -> None:
    """Become `uid` (from root: every capability goes too) or, with 0, keep this user and lose every capability; else stop."""
    if uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    else:
        drop_capabilities()
    with open("/proc/self/status") as status:
        effective = status.read().split("CapEff:")[1].split()[0]
    if (uid and os.getuid() != uid) or int(effective, 16):
        raise SystemExit("the kernel could not drop its privileges")


def run_kernel(request: dict, launcher: socket.socket) -> None:
    """In the kernel's process: its limits, environment, folder and identity, then ipykernel until it is shut down."""
    memory, processes, file_size = request["limits"]
    for limit, value in [(resource.RLIMIT_AS, memory), (resource.RLIMIT_NPROC, processes),
                         (resource.RLIMIT_FSIZE, file_size), (resource.RLIMIT_CORE, 0)]:
        resource.setrlimit(limit, (value, value))
    os.nice(request["niceness"])
    try:  # the kernel leads a session of its own, so the scheduler also weighs its session group: lower that too
        os.setsid()
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(request["niceness"]))
    except OSError:
        pass
    os.environ.clear()
    os.environ.update(request["environment"])
    os.chdir(request["folder"])
    take_identity(request["uid"])
    descriptor, connection_file = tempfile.mkstemp(prefix=".kernel-", suffix=".json", dir="/tmp")
    with open(descriptor, "w") as connection:
        json.dump(request["connection"], connection)
    launcher.sendall(b"kernel\n")  # the launcher learns this process's pid outside; no code of the student's has run
    launcher.close()
    import torch

    torch.set_num_threads(int(request["environment"].get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    sys.path[0] = os.getcwd()  # as `python -m ipykernel_launcher` started here has it
    sys.argv = ["ipykernel_launcher", "-f", connection_file]
    from ipykernel import kernelapp

    app = kernelapp.IPKernelApp.instance()
    app.initialize()
    inline = sys.modules.get("matplotlib_inline.backend_inline")
    if inline is not None:  # imported before this kernel's shell existed: hook its figures to the shell, as on import
        inline._enable_matplotlib_integration()
    app.start()


def hold_namespace(launcher: socket.socket, request: dict, zygote_folder: str) -> int:
    """pid 1 of the kernel's namespace: set it up, say so, fork the kernel when told, then outlive it by nothing."""
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # what follows is this namespace's alone
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # its own processes, not the zygote's
    _mount("tmpfs", zygote_folder, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0755")  # no way to the socket
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    launcher.sendall(b"init\n")  # the launcher learns this process's pid outside from the message's credentials
    if launcher.recv(16) != b"go\n":  # it has moved this process into the kernel's control group
        return 1
    kernel = os.fork()
    if kernel == 0:
        code = 1
        try:
            run_kernel(request, launcher)
            code = 0
        finally:
            os._exit(code)
    ended = os.pidfd_open(kernel)
    while True:
        ready, _, _ = select.select([launcher, ended], [], [], 1.0)
        if launcher in ready and not launcher.recv(16):
            break  # the launcher is gone: jupyter_client stopped the kernel
        finished = False
        while True:  # collect the kernel and every orphan this namespace adopted
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                finished = True
                break
            if pid == 0:
                break
            finished = finished or pid == kernel
        if finished:
            break
    try:
        os.kill(-1, signal.SIGKILL)  # what the kernel left running
    except ProcessLookupError:
        pass
    return 0


def start_kernel(launcher: socket.socket, zygote_folder: str) -> int:
    """The starter: read the launcher's request, make the kernel's namespaces, fork their init and wait for it."""
    request = json.loads(launcher.makefile("r", encoding="utf-8").readline())
    _checked(libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare")
    init = os.fork()
    if init == 0:
        code = 1
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1 ignores what it has no handler for: a kernel's signals too
            code = hold_namespace(launcher, request, zygote_folder)
        finally:
            os._exit(code)
    launcher.close()
    os.waitpid(init, 0)
    return 0


def preload() -> None:
    """Import what kernels import: ipykernel (its debugger too, half of a kernel's start), torch, matplotlib with the
    inline backend, the course's package."""
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # what ipykernel would choose
    import IPython  # noqa: F401
    from ipykernel import debugger, ipkernel, kernelapp  # noqa: F401

    harness_zygote.preload_course_package()


def end_earlier_kernels(starters: list[int]) -> None:
    """Wait until the earlier kernels' namespaces have ended, the processes in them included (Linux ends a namespace's
    init last), ending them after a grace; then empty the in-memory folders of everything they left."""
    for starter in starters:
        for grace in (STARTER_GRACE_SECONDS, None):
            if _waited(starter, grace):
                break
            os.kill(starter, signal.SIGKILL)  # its namespace's init dies with it (PR_SET_PDEATHSIG), and the rest with that
    starters.clear()
    keep = harness_zygote.kept_paths()  # this process's folder and the sandbox's folders bound under /tmp, /dev/shm
    for folder in WIPED:
        harness_zygote.wipe(folder, keep)


def _waited(pid: int, seconds: float | None) -> bool:
    """Whether the child `pid` has ended within `seconds` (None: however long it takes)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        try:
            if os.waitpid(pid, 0 if deadline is None else os.WNOHANG)[0]:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def main() -> None:
    socket_path = sys.argv[1]
    preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(8)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    quiet = os.open(os.devnull, os.O_RDWR)
    for descriptor in (0, 1, 2):
        os.dup2(quiet, descriptor)
    starters: list[int] = []
    while True:
        launcher, _ = listener.accept()
        end_earlier_kernels(starters)  # one kernel at a time: none sees what an earlier one leaves, nor the earlier one
        starter = os.fork()
        if starter == 0:
            code = 1
            try:
                listener.close()  # a kernel must never answer the next launcher
                libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                code = start_kernel(launcher, os.path.dirname(socket_path))
            finally:
                os._exit(code)
        starters.append(starter)
        launcher.close()


if __name__ == "__main__":
    main()
