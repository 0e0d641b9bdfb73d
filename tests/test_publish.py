"""The shared folder publisher: roots, symbolic links and inputs as output folders."""
import json
import os
import signal

import pytest

from xgen_data.errors import RefusedError
from xgen_data.store import publish


def _listed(folder):
    try:
        return set(json.load(open(os.path.join(folder, "list.json")))) | {"list.json"}
    except (OSError, ValueError):
        return None


def _publish(out, text, inputs=()):
    with publish.FolderPublisher(out, listed_files=_listed, is_complete=lambda f: _listed(f) is not None,
                                 what="test folder", crash_prefix="t", inputs=inputs) as pub:
        pub.check_foreign()
        tmp = pub.begin()
        open(os.path.join(tmp, "a.txt"), "w").write(text)
        json.dump(["a.txt"], open(os.path.join(tmp, "list.json"), "w"))
        pub.commit()


@pytest.fixture()
def alarm():
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("timed out (an endless loop)"))
    signal.alarm(10)
    yield
    signal.alarm(0)


def test_a_filesystem_root_is_refused_naming_it(alarm):
    with pytest.raises(RefusedError, match="filesystem root"):
        publish.make_parent("/")
    with pytest.raises(RefusedError, match="filesystem root"):
        publish.FolderPublisher("/", listed_files=_listed, is_complete=bool, what="x", crash_prefix="t")


def test_a_linked_out_folder_writes_its_target_and_keeps_the_link(tmp_path):
    _publish(str(tmp_path / "K3"), "old")
    os.symlink("K3", tmp_path / "Klink")
    _publish(str(tmp_path / "Klink"), "new")
    assert os.readlink(tmp_path / "Klink") == "K3"
    assert (tmp_path / "K3" / "a.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["K3", "Klink"]


def test_a_leftover_backup_that_is_a_link_is_unlinked_never_its_target(tmp_path):
    _publish(str(tmp_path / "K3"), "keep")
    _publish(str(tmp_path / "K"), "old")
    os.symlink("K3", tmp_path / ".K.backup")  # a backup name that is a link, not a folder a swap renamed
    _publish(str(tmp_path / "K"), "new")
    assert (tmp_path / "K" / "a.txt").read_text() == "new"
    assert (tmp_path / "K3" / "a.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["K", "K3"]


@pytest.mark.parametrize("where", ["S", "S/sub", "."])
def test_an_out_folder_in_or_around_an_input_is_refused(tmp_path, where):
    (tmp_path / "S").mkdir()
    (tmp_path / "S" / "data.bin").write_text("input")
    with pytest.raises(RefusedError, match="the input"):
        _publish(str(tmp_path / where), "x", inputs=[str(tmp_path / "S")])
    assert sorted(os.listdir(tmp_path / "S")) == ["data.bin"]
    _publish(str(tmp_path / "T"), "x", inputs=[str(tmp_path / "S")])  # beside it: fine
