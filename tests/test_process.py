"""funloader._process.exit_with_parent, and every process pool of the package: when the process that
owns a pool is killed with SIGKILL (OOM killer, pre-emption), its workers and multiprocessing's
resource tracker exit too (issue 19: 3 processes of a killed prepare were still alive 5 s later, and
25 minutes later in one run).

Each test starts the owner in its own session, kills only the owner, and lists the session's
surviving processes from /proc; whatever survives is killed by pid at the end, so a regression
fails the test and leaves nothing behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GRACE_SECONDS = 5.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through /proc")


def session_processes(session: int) -> dict:
    """pid -> command line of the live (not zombie) processes whose session id is ``session``."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found[int(name)] = command[:120]
    return found


def kill_owner_and_collect_survivors(owner: subprocess.Popen) -> dict:
    """SIGKILL ``owner`` alone; return the processes of its session still alive GRACE_SECONDS later."""
    children = session_processes(owner.pid)
    children.pop(owner.pid, None)
    assert children, "the owner started no worker process: nothing to check"
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + GRACE_SECONDS
    survivors = session_processes(owner.pid)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.1)
        survivors = session_processes(owner.pid)
    for pid in survivors:  # clean up what a regression left behind, by pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return survivors


def start_owner(code: str, ready: str = "ready") -> subprocess.Popen:
    """Run ``code`` in a new session; returns once it printed ``ready``."""
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = owner.stdout.readline()
    if line.strip() != ready:
        owner.kill()
        pytest.fail(f"owner did not start: {line!r} {owner.stderr.read()[-3000:]}")
    return owner


@pytest.mark.parametrize("death_signal", [True, False], ids=["pdeathsig", "polling"])
def test_exit_with_parent_ends_the_worker_when_its_parent_is_killed(death_signal):
    owner = start_owner(f"""
        import os, subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c",
            "import sys, time; from funloader._process import exit_with_parent; "
            "exit_with_parent({{}}, death_signal={death_signal}, interval=0.2); print('armed', flush=True); "
            "time.sleep(600)".format(os.getpid())], stdout=subprocess.PIPE, text=True)
        assert worker.stdout.readline().strip() == "armed"
        print("ready", flush=True)
        time.sleep(600)
    """)
    assert kill_owner_and_collect_survivors(owner) == {}


def test_exit_with_parent_is_a_no_op_in_the_parent_itself():
    child = subprocess.run([sys.executable, "-c", "import os; from funloader._process import exit_with_parent; "
                            "exit_with_parent(os.getpid()); print('still here')"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0 and child.stdout.strip() == "still here", child.stderr


def test_killed_prepare_leaves_no_worker_or_resource_tracker(tmp_path, shared_data):
    src = tmp_path / "src"  # one class: a link to the shared photos (hundreds of images: killed long before the end)
    src.mkdir()
    os.symlink(shared_data / "photos", src / "photos")
    dst = tmp_path / "dst"
    owner = start_owner(f"""
        import os, sys, threading, time
        from pathlib import Path
        journal = Path({str(dst)!r}) / ".funloader-prepare" / "journal-0-of-1.jsonl"
        def announce():  # once the pool converts images, say so
            while not (journal.exists() and journal.read_bytes().count(b"\\n") >= 3):
                time.sleep(0.01)
            print("ready", flush=True)
        threading.Thread(target=announce, daemon=True).start()
        from funloader.preparation import main
        if __name__ == "__main__":
            main([{str(src)!r}, {str(dst)!r}, "--workers", "2", "--no-progress"])
            print("finished before it was killed", flush=True)
    """)
    assert kill_owner_and_collect_survivors(owner) == {}


@pytest.mark.slow  # ~15 s: DALI starts in the owner and in each worker
def test_killed_dali_external_source_pipeline_leaves_no_worker(tmp_path, shared_data):
    pytest.importorskip("nvidia.dali")
    script = tmp_path / "owner.py"  # DALI's spawn workers re-import the main module: it needs a guard
    script.write_text(textwrap.dedent(f"""
        import time
        from funloader.dali import fun_pipeline
        if __name__ == "__main__":
            pipe = fun_pipeline({str(shared_data / "labelled" / "dlib_johns")!r}, 4, num_threads=1,
                                backend="external_source", py_num_workers=2)
            pipe.run()
            print("ready", flush=True)
            time.sleep(600)
    """))
    owner = start_owner(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')")
    assert kill_owner_and_collect_survivors(owner) == {}
