"""Atomically written files get the mode a plain open() gives: 0666 less the umask, or the replaced file's."""
import os
import stat

import pytest

from cfdrnn_keras.cli.predict import write_json
from cfdrnn_keras.file_mode import current_umask, mode_for

pytestmark = pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_umask_is_read_without_changing_it(umask_027):
    assert current_umask() == 0o027
    assert current_umask() == 0o027 and os.umask(0o027) == 0o027  # still set, as it was


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path, umask_027):
    plain = tmp_path / "plain.json"
    plain.write_text("{}")  # what open() does, for reference
    assert _mode(plain) == 0o640 == mode_for(tmp_path / "absent.json")

    report = tmp_path / "out.json"
    write_json(report, {"faces": []})  # the predict command's writer: through mkstemp (0600) and a rename
    assert _mode(report) == 0o640
    os.chmod(report, 0o600)  # a file the user made private stays private when it is replaced
    write_json(report, {"faces": [1]})
    assert _mode(report) == 0o600 and report.read_text() == '{"faces": [1]}'


def test_training_files_written_atomically_are_readable_too(tmp_path, umask_027):
    callbacks = pytest.importorskip("cfdrnn_keras.training.callbacks")
    target = tmp_path / "best.keras"
    callbacks.write_bytes_atomically(str(target), b"weights", "model")
    assert _mode(target) == 0o640 and target.read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == ["best.keras"]  # no temporary left behind
