"""streamr1.io.atomic_output: the one write-then-rename path every writer uses."""

from __future__ import annotations

import os
import stat

import pytest

from streamr1.io import atomic_output


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
