"""streamr1.io.atomic_output: the one write-then-rename path every writer uses."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from streamr1.io import atomic_output, is_temporary_name, process_start_time


def test_success_replaces_the_target_with_open_permissions(tmp_path):
    target = tmp_path / "sub" / "stats.json"
    old = os.umask(0o022)
    try:
        with atomic_output(target) as tmp:
            assert os.path.dirname(tmp) == str(target.parent) and tmp != str(target)
            with open(tmp, "w") as fh:
                fh.write("new")
    finally:
        os.umask(old)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # 0o666 & ~0o022, not mkstemp's 0o600
    assert os.listdir(target.parent) == ["stats.json"]


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path, exc):
    target = tmp_path / "last.ckpt"
    target.write_text("old")
    with pytest.raises(type(exc)), atomic_output(target) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half")
        raise exc
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["last.ckpt"]


def _old(path, seconds=3600):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_a_write_removes_what_killed_writers_left_and_nothing_else(tmp_path, capsys):
    stale = [tmp_path / ".last.ckpt.tmp-a1b2c3d4.ckpt", tmp_path / ".stats.json.tmp-zz_90xyq.json",
             tmp_path / ".README.tmp-abcdefgh"]
    kept = [tmp_path / ".last.ckpt.tmp-a1b2.ckpt",  # not 8 characters: not ours
            tmp_path / ".last.ckpt.tmp-a1b2c3d4.txt",  # the extension is not the target's
            tmp_path / "last.ckpt.tmp-a1b2c3d4.ckpt",  # not hidden
            tmp_path / "notes.txt"]
    for p in stale + kept:
        p.write_text("x")
        _old(p)
    running = tmp_path / ".epoch=1.ckpt.tmp-q9w8e7r6.ckpt"  # a writer of now (another rank): newer than this process
    running.write_text("x")
    assert all(is_temporary_name(p.name) for p in [*stale, running])
    assert not any(is_temporary_name(p.name) for p in kept)
    with atomic_output(tmp_path / "last.ckpt") as tmp, open(tmp, "w") as fh:
        fh.write("new")
    assert sorted(os.listdir(tmp_path)) == sorted([p.name for p in kept] + [running.name, "last.ckpt"])
    assert "removed 3 temporary file(s) of interrupted saves" in capsys.readouterr().out


def test_process_start_time_is_before_now_and_after_boot():
    start = process_start_time()
    assert start <= time.time()
    assert time.time() - start < 24 * 3600 * 365


_WRITER = """
import sys, time
from streamr1.io import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    with open(tmp, "w") as fh:
        fh.write("half a checkpoint")
    print(tmp, flush=True)
    time.sleep(120)
"""


def test_the_temporary_file_of_a_killed_save_is_removed_by_the_next_process(tmp_path):
    target = tmp_path / "last.ckpt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        tmp = child.stdout.readline().strip()
        assert os.path.exists(tmp) and is_temporary_name(os.path.basename(tmp))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert os.path.exists(tmp) and not target.exists()  # kill -9 runs no cleanup
    time.sleep(0.5)  # the next process starts later than the leftover's last write (by more than /proc's 0.01 s)
    nxt = subprocess.run([sys.executable, "-c", _WRITER.replace("time.sleep(120)", "pass"), str(target)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert nxt.returncode == 0, nxt.stderr
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    assert "removed 1 temporary file(s)" in nxt.stdout
