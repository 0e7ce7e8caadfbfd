"""Reads and writes that never harm (issue 21, item 2), through the CLI as a user runs it.

Reads: only regular files (a named pipe, a device or a socket is refused in one line before `open` could block on
it), within sizes checked before reading; GGUF fields bounded by the file; names from a config checked to their end;
a lone surrogate refused with its place. Writes: only to a regular file or a new path (a device, a FIFO, a socket or
a symbolic link out of the folder is refused, `--force` or not), folders only with `--mkdir`, every OS error one
line naming the user's path (exit 2), a failed `--in-place` leaving the folder byte-identical, and the temporary
files of a run cut short cleaned by the next. The crash tests (`test_write_crashes.py`) kill a run at every step.

Every run is a child process under a memory cap (RLIMIT_AS) and an alarm (`_harness.cli_in_child`), so that a
regression (a FIFO that blocks, a 1 GiB padding) fails a test instead of hanging or taking the machine down.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
from pathlib import Path

import pytest
from _harness import MiB, Run, cli_in_child
from _paths import corpus_file

import templatekit
from templatekit.errors import TemplateSourceError
from templatekit.sources.output import output_target

QWEN = corpus_file("trl/qwen2_5.jinja")
PEAK = 200 * MiB  # resident memory a refused run may add


def qwen_text() -> str:
    return QWEN.read_text(encoding="utf-8")


def one_line(run: Run, *words: str) -> str:
    """Exit 2 with exactly one line on stderr (`error: …`) holding `words`, no traceback, bounded memory."""
    assert "Traceback" not in run.err, run.err
    assert run.code == 2, (run.code, run.err)
    lines = run.lines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert run.peak < PEAK, f"peak {run.peak / MiB:.0f} MiB"
    return lines[0]


def listing(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`, links not followed: a file's bytes, a link's target, or its kind."""
    found: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                found[str(path.relative_to(folder))] = "-> " + os.readlink(path)
            elif stat.S_ISREG(mode):
                found[str(path.relative_to(folder))] = path.read_bytes()
            else:
                found[str(path.relative_to(folder))] = stat.filemode(mode)
    return found


# ------------------------------------------------------------------------------------------------------ reads


def test_a_fifo_is_refused_in_one_line_wherever_a_file_is_read(tmp_path: Path) -> None:
    """A named pipe as chat_template.jinja, as an additional template, as a .gguf, as --messages, as --data and
    inside a folder given to report/check: one line each (report: a row), never a wait for a writer."""
    good = tmp_path / "good.jinja"
    good.write_text(qwen_text(), encoding="utf-8")
    main_fifo = tmp_path / "model_main"
    main_fifo.mkdir()
    os.mkfifo(main_fifo / "chat_template.jinja")
    extra = tmp_path / "model_extra"
    (extra / "additional_chat_templates").mkdir(parents=True)
    (extra / "chat_template.jinja").write_text(qwen_text(), encoding="utf-8")
    os.mkfifo(extra / "additional_chat_templates" / "tool_use.jinja")
    gguf_fifo = tmp_path / "model.gguf"
    os.mkfifo(gguf_fifo)
    pipe = tmp_path / "pipe.json"
    os.mkfifo(pipe)
    pipe_jsonl = tmp_path / "pipe.jsonl"
    os.mkfifo(pipe_jsonl)
    named = "a named pipe (FIFO), not a regular file"
    for argv, where in [
        (("patch", main_fifo), main_fifo / "chat_template.jinja"),
        (("check", main_fifo), main_fifo / "chat_template.jinja"),
        (("patch", extra), extra / "additional_chat_templates" / "tool_use.jinja"),
        (("patch", gguf_fifo, "-o", tmp_path / "new.gguf"), gguf_fifo),
        (("show", good, "--messages", pipe), pipe),
        (("audit", good, "--data", pipe_jsonl), pipe_jsonl),
    ]:
        one_line(cli_in_child(*argv, timeout=30), f"error: {where}: {named}")
    tokenizer_fifo = tmp_path / "tokenizer.json"
    os.mkfifo(tokenizer_fifo)
    one_line(cli_in_child("show", good, "--tokenizer", tokenizer_fifo, timeout=30), "a named pipe (FIFO), not a")
    report = cli_in_child("report", tmp_path, timeout=60)
    assert report.code == 0 and "Traceback" not in report.err, report
    for fifo in (main_fifo / "chat_template.jinja", extra / "additional_chat_templates" / "tool_use.jinja"):
        assert f"{fifo}" in report.out
    assert report.out.count("named pipe (FIFO)") == 2, report.out
    assert not (tmp_path / "new.gguf").exists()


def test_audit_data_from_a_device_or_a_2_gib_sparse_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text(qwen_text(), encoding="utf-8")
    one_line(cli_in_child("audit", template, "--data", "/dev/zero"), "/dev/zero: a character device")
    sparse = tmp_path / "sparse.jsonl"
    with open(sparse, "wb") as handle:
        handle.truncate(2 << 30)
    one_line(cli_in_child("audit", template, "--data", sparse), f"{sparse}: 2048 MiB", "head -n")


def test_a_line_past_the_limit_or_a_nul_byte_in_data_names_the_line(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text(qwen_text(), encoding="utf-8")
    data = tmp_path / "data.jsonl"
    row = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    data.write_bytes((row + "\n").encode() + b'{"messages": [\0]}\n')
    one_line(cli_in_child("audit", template, "--data", data), f"{data}:2: a binary file, not text: NUL byte")


def _gguf_with_alignment(path: Path, alignment: int) -> Path:
    """A tiny GGUF file (no tensors) with a chat template and `general.alignment`."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    entries = [
        string("tokenizer.chat_template") + struct.pack("<I", 8) + string(qwen_text()[:200] + "{{ messages }}"),
        string("general.alignment") + struct.pack("<II", 4, alignment),
    ]
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)) + b"".join(entries))
    return path


@pytest.mark.parametrize("power", [30, 31])
def test_gguf_alignment_past_the_file_is_refused_before_anything_is_written(tmp_path: Path, power: int) -> None:
    """A 352-byte GGUF whose general.alignment is 2^30 made `patch -o` write a 1 GiB file (2^31: a MemoryError)."""
    source = _gguf_with_alignment(tmp_path / "tiny.gguf", 1 << power)
    assert source.stat().st_size < 1000
    target = tmp_path / "new.gguf"
    one_line(cli_in_child("patch", source, "-o", target), f"alignment {1 << power:,}", "past the end")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]
    with pytest.raises(TemplateSourceError, match="past the end"):
        templatekit.sources.load_templates(source)


def test_a_template_name_with_a_trailing_newline_is_not_a_file_name(tmp_path: Path) -> None:
    config = tmp_path / "tokenizer_config.json"
    entries = [{"name": "default", "template": qwen_text()}, {"name": "tool\n", "template": qwen_text()}]
    config.write_text(json.dumps({"chat_template": entries}), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    one_line(cli_in_child("patch", config, "-o", out), "template name 'tool\\n' cannot be used as a file name")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", [("patch",), ("show",), ("strip",), ("patch", "-o", "out.jinja")])
def test_a_lone_surrogate_in_a_config_template_is_one_line_with_its_place(tmp_path: Path, command: tuple) -> None:
    config = tmp_path / "tokenizer_config.json"
    config.write_text('{\n  "eos_token": "</s>",\n  "chat_template": "{{ \'\\ud800\' }}{{ messages }}"\n}\n')
    run = cli_in_child(command[0], config, *command[1:], cwd=tmp_path)
    one_line(run, f"{config}:3:25: a lone surrogate \\ud800")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer_config.json"]


def test_a_surrogate_pair_is_read_as_its_character(tmp_path: Path) -> None:
    config = tmp_path / "tokenizer_config.json"
    config.write_text('{"chat_template": "{{ \'\\ud83d\\ude00\' }}{{ messages }}"}')
    [loaded] = templatekit.sources.load_templates(config)
    assert "\U0001f600" in loaded.text


# ----------------------------------------------------------------------------------------------------- writes


def _outputs(tmp_path: Path) -> dict[str, Path]:
    """Paths a run must not write to: a FIFO, a socket, a device (where this user may make one), links."""
    folder = tmp_path / "out"
    folder.mkdir()
    outside = tmp_path / "outside.jinja"
    outside.write_text("the user's own file\n")
    places = {"fifo": folder / "fifo.jinja", "socket": folder / "socket.jinja", "outward link": folder / "link.jinja"}
    os.mkfifo(places["fifo"])
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(places["socket"]))
    server.close()
    os.symlink(outside, places["outward link"])
    os.mkfifo(folder / "pipe_target")
    places["link to a fifo"] = folder / "to_fifo.jinja"
    os.symlink("pipe_target", places["link to a fifo"])
    try:
        os.mknod(folder / "null.jinja", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        places["device"] = folder / "null.jinja"
    except PermissionError:  # not root: /dev/null stands for a device, checked without writing below
        pass
    return places


@pytest.mark.slow
def test_output_onto_a_device_fifo_socket_or_outward_symlink_is_refused(tmp_path: Path) -> None:
    """patch -o, strip -o, show --html and apply -o: one line naming the path, exit 2, nothing replaced, even with
    --force; the check itself, on the system's /dev/null, says why without writing."""
    source = tmp_path / "t.jinja"
    source.write_text(qwen_text(), encoding="utf-8")
    tagged = tmp_path / "tagged.jinja"
    tagged.write_text(templatekit.patch_template(qwen_text()).template, encoding="utf-8")
    places = _outputs(tmp_path)
    before = listing(tmp_path)
    why = {
        "fifo": "a named pipe (FIFO), not a regular file",
        "socket": "a socket, not a regular file",
        "device": "a character device, not a regular file",
        "outward link": "a symbolic link out of its folder",
        "link to a fifo": "a symbolic link to a named pipe (FIFO)",
    }
    for kind, place in places.items():
        for argv in [
            ("patch", source, "-o", place, "--force"),
            ("strip", tagged, "-o", place),
            ("show", source, "--html", place),
            ("apply", "--template", "chatml", "-o", place),
        ]:
            one_line(cli_in_child(*argv, timeout=30), f"error: {place}: {why[kind]}")
    assert listing(tmp_path) == before
    with pytest.raises(TemplateSourceError, match="/dev/null: a character device, not a regular file"):
        output_target("/dev/null")


def test_a_symlink_inside_the_folder_is_written_through_and_kept(tmp_path: Path) -> None:
    source = tmp_path / "t.jinja"
    source.write_text(qwen_text(), encoding="utf-8")
    (tmp_path / "real.jinja").write_text("old\n")
    (tmp_path / "link.jinja").symlink_to("real.jinja")
    run = cli_in_child("patch", source, "-o", tmp_path / "link.jinja")
    assert run.code == 0, run.err
    assert (tmp_path / "link.jinja").is_symlink()
    assert (tmp_path / "real.jinja").read_text(encoding="utf-8") == templatekit.patch_template(qwen_text()).template


def test_output_folders_are_created_only_with_mkdir(tmp_path: Path) -> None:
    source = tmp_path / "t.jinja"
    source.write_text(qwen_text(), encoding="utf-8")
    target = tmp_path / "missing" / "dir" / "x.jinja"
    one_line(
        cli_in_child("patch", source, "-o", target), f"the folder {tmp_path / 'missing'} does not exist", "--mkdir"
    )
    one_line(cli_in_child("show", source, "--html", target), "--mkdir")
    one_line(cli_in_child("apply", "--template", "chatml", "-o", target), "--mkdir")
    assert not (tmp_path / "missing").exists()
    run = cli_in_child("patch", source, "-o", target, "--mkdir")
    assert run.code == 0 and target.read_text(encoding="utf-8") == templatekit.patch_template(qwen_text()).template


def test_a_file_where_a_folder_is_expected_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "t.jinja"
    source.write_text(qwen_text(), encoding="utf-8")
    (tmp_path / "a").write_text("a file\n")
    for argv in [("patch", source, "-o", tmp_path / "a" / "x.jinja"), ("show", source, "--html", tmp_path / "a" / "x")]:
        one_line(cli_in_child(*argv, "--mkdir"), f"{tmp_path / 'a'} is not a folder (a regular file)")
    assert (tmp_path / "a").read_text() == "a file\n"


def test_the_file_size_limit_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """RLIMIT_FSIZE below the patched template's size: EFBIG (not a SIGXFSZ kill), one line, nothing left."""
    source = tmp_path / "t.jinja"
    source.write_text(qwen_text(), encoding="utf-8")
    target = tmp_path / "out.jinja"
    limit = len(qwen_text().encode()) + 16  # the backup of the original fits; the patched text does not
    one_line(cli_in_child("patch", source, "-o", target, file_size=limit), f"{target}: cannot write: File too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jinja"]
    model = tmp_path / "model"
    model.mkdir()
    (model / "chat_template.jinja").write_text(qwen_text(), encoding="utf-8")
    before = listing(model)
    run = cli_in_child("patch", model, "--in-place", file_size=limit)
    one_line(run, f"error: {model / 'chat_template.jinja'}: cannot write: File too large; nothing was changed")
    assert listing(model) == before  # no backup, no temporary file


def test_an_immutable_file_fails_in_place_with_the_folder_byte_identical(tmp_path: Path) -> None:
    """`chattr +i` (root, on a file system that has it): the rename onto the file fails after the backup is
    written; the backup goes again, and the error names the user's file, not a temporary one."""
    import subprocess

    model = tmp_path / "model"
    model.mkdir()
    config = model / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": qwen_text(), "eos_token": "<|im_end|>"}, indent=2))
    if subprocess.run(["chattr", "+i", str(config)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i needs root on a file system with immutable files")
    try:
        before = listing(model)
        run = cli_in_child("patch", model, "--in-place")
        one_line(run, f"error: {config}: cannot write: Operation not permitted; nothing was changed")
        assert listing(model) == before
    finally:
        subprocess.run(["chattr", "-i", str(config)], check=True)


def test_stale_temporary_files_are_cleaned_by_the_next_run(tmp_path: Path) -> None:
    """A run killed outright leaves `.NAME.PID.RANDOM.templatekit-tmp`; the next write into the folder removes it
    (its process is gone), and leaves a live run's own and any other file alone."""
    source = tmp_path / "t.jinja"
    source.write_text(qwen_text(), encoding="utf-8")
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = tmp_path / f".out.jinja.{dead}.abcd1234.templatekit-tmp"
    stale.write_bytes(b"half a template")
    live = tmp_path / f".out.jinja.{os.getpid()}.efgh5678.templatekit-tmp"
    live.write_bytes(b"being written")
    other = tmp_path / ".out.jinja.notes.tmp"
    other.write_bytes(b"not ours")
    run = cli_in_child("patch", source, "-o", tmp_path / "out.jinja")
    assert run.code == 0, run.err
    assert not stale.exists() and live.exists() and other.exists()
