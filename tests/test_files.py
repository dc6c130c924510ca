"""latentgen.files: outputs appear whole or not at all, and nothing is replaced unless asked."""

import pytest

from latentgen import files


def test_atomic_path_writes_in_one_rename(tmp_path):
    target = tmp_path / "out.txt"
    with files.atomic_path(target) as tmp:
        tmp.write_text("new")
        assert not target.exists() and tmp.parent == tmp_path  # invisible until the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_an_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_no_overwrite_refuses_an_existing_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("user's")
    with pytest.raises(FileExistsError):
        with files.atomic_path(target, overwrite=False) as tmp:
            tmp.write_text("ours")
    assert target.read_text() == "user's"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_text_and_copy_file_replace(tmp_path):
    files.write_text(tmp_path / "a.txt", "one")
    files.write_text(tmp_path / "a.txt", "two")
    files.copy_file(tmp_path / "a.txt", tmp_path / "b.txt")
    assert (tmp_path / "b.txt").read_text() == "two"


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    final = tmp_path / "model"
    with files.atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with files.atomic_folder(final) as tmp:
            (tmp / "weights").write_text("v2-half")
            raise RuntimeError("killed")
    assert (final / "weights").read_text() == "v1"
    with files.atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v2")
    assert (final / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_written_files_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        files.umask.cache_clear()
        out = files.write_text(tmp_path / "out.txt", "hi")
        assert stat.S_IMODE(out.stat().st_mode) == 0o640  # 0666 & ~umask, as open() would give
    finally:
        os.umask(old)
        files.umask.cache_clear()
    assert stat.S_IMODE(files.write_text(tmp_path / "b.txt", "hi").stat().st_mode) == 0o666 & ~old


def test_atomic_folder_leaves_the_users_sibling_folders_alone(tmp_path):
    final = tmp_path / "model"
    for name in ("model.tmp", "model.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine").write_text("user's")
    for version in ("v1", "v2"):  # a first write, then a replacement
        with files.atomic_folder(final) as tmp:
            assert tmp.parent == tmp_path and tmp.name not in ("model.tmp", "model.old")
            (tmp / "weights").write_text(version)
    assert (final / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.old", "model.tmp"]
    assert all((tmp_path / n / "mine").read_text() == "user's" for n in ("model.tmp", "model.old"))


def test_atomic_folder_restores_the_backup_a_kill_left(tmp_path, monkeypatch):
    import os

    final = tmp_path / "model"
    with files.atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")
    real = os.replace

    def killed_between_the_renames(src, dst):
        if str(dst) == str(final):
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", killed_between_the_renames)
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_folder(final) as tmp:
            (tmp / "weights").write_text("v2")
    monkeypatch.setattr(os, "replace", real)
    assert not final.exists()  # the kill: v1 moved aside, v2 not yet in place
    with files.atomic_folder(final) as tmp:
        assert (final / "weights").read_text() == "v1"  # put back before anything else
        (tmp / "weights").write_text("v3")
    assert (final / "weights").read_text() == "v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_folder_gets_the_usual_permissions(tmp_path):
    import stat

    with files.atomic_folder(tmp_path / "model"):
        pass
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~files.umask()


def _specials(tmp_path):
    """Things at an output path that are not regular files: a FIFO, a socket, a folder (and a device node
    where this process may make one): made inside the test's own folder, never the system's."""
    import os
    import socket

    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    (tmp_path / "folder").mkdir()
    made = {"fifo": tmp_path / "fifo", "socket": tmp_path / "sock", "folder": tmp_path / "folder"}
    try:
        os.mknod(tmp_path / "null", 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))
        made["device"] = tmp_path / "null"
    except PermissionError:  # not root: the FIFO and the socket stand for special files
        pass
    return made, sock


def test_what_is_not_a_regular_file_is_never_replaced(tmp_path):
    import stat

    made, sock = _specials(tmp_path)
    try:
        for kind, path in made.items():
            before = path.lstat()
            with pytest.raises(FileExistsError, match="writes regular files only"):
                with files.atomic_path(path) as tmp:
                    tmp.write_text("image")
            after = path.lstat()
            assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino, kind
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left
    finally:
        sock.close()


def test_a_symlink_is_written_through(tmp_path):
    target, link = tmp_path / "real.png", tmp_path / "link.png"
    target.write_text("old")
    link.symlink_to(target)
    files.write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "to-be.png"
    dangling.symlink_to(tmp_path / "made-later.png")
    files.write_text(dangling, "first")
    assert dangling.is_symlink() and (tmp_path / "made-later.png").read_text() == "first"


def test_files_a_library_writes_keep_the_usual_mode(tmp_path):
    import stat

    import torch
    from safetensors.torch import save_file

    with files.atomic_path(tmp_path / "w.safetensors") as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp))  # safetensors makes its file 0600
    with files.atomic_folder(tmp_path / "model") as tmp:
        (tmp / "unet").mkdir()
        save_file({"a": torch.zeros(2)}, str(tmp / "unet" / "w.safetensors"))
    usual = 0o666 & ~files.umask()
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == usual
    assert stat.S_IMODE((tmp_path / "model" / "unet" / "w.safetensors").stat().st_mode) == usual
    assert stat.S_IMODE((tmp_path / "model" / "unet").stat().st_mode) == 0o777 & ~files.umask()


def test_sha256_reads_in_blocks_and_equals_the_whole_files(tmp_path):
    import hashlib
    import os

    path = tmp_path / "big.bin"
    data = os.urandom((1 << 24) + 12345)  # more than one 16 MiB block
    path.write_bytes(data)
    assert files.sha256(path) == hashlib.sha256(data).hexdigest()


def test_safetensors_sha256_is_the_hash_of_the_tensors_bytes_whatever_the_metadata(tmp_path):
    import hashlib

    import torch
    from safetensors.torch import save_file

    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    save_file(tensors, str(tmp_path / "one.safetensors"), {"ss_output_name": "one"})
    save_file(tensors, str(tmp_path / "two.safetensors"), {"ss_output_name": "a longer name", "x": "y"})
    data = (tmp_path / "one.safetensors").read_bytes()
    past_header = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()
    assert files.safetensors_sha256(tmp_path / "one.safetensors") == past_header
    assert files.safetensors_sha256(tmp_path / "two.safetensors") == past_header
    assert files.sha256(tmp_path / "one.safetensors") != files.sha256(tmp_path / "two.safetensors")
