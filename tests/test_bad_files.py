"""Bad files: each gives one clear `TemplateKitError`, in bounded memory, through the API and the CLI.

Covered: a 200 MB `tokenizer_config.json` (and `/dev/zero` as a template, refused as a device), JSON nested 100,000 deep, GGUF files
whose string lengths, array counts, entry counts or key lengths lie, model folders with symbolic link loops, and
template files that are binary (NUL bytes, bytes that are not UTF-8, UTF-16, a 40 MB blob).

Every case runs away from the test process, under a memory cap, so that a regression fails the test instead of
taking the machine down: API calls in a forked child with RLIMIT_AS at what it maps plus `CHILD_CAP`, CLI runs
(`python -m templatekit patch|check|show|report`) in a subprocess with RLIMIT_AS at `CLI_CAP`. Each also has a
wall-clock limit, and its peak resident memory is measured and bounded. Through `patch`, `check` and `show` a bad
file exits 2 with one line (`error: FILE[:LINE:COL]: message`), never a traceback; `report` lists it as not
patchable and goes on (its exit code is 0 unless a path does not exist). Nothing the user had is overwritten.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _harness import MiB, Outcome, Run, cli, in_child
from _paths import corpus_file

from templatekit.errors import TemplateKitError, TemplateSourceError
from templatekit.sources import MAX_CONFIG_BYTES, load_templates

CLI_PEAK = 200 * MiB  # resident memory a CLI run on a bad file may reach (a normal start-up is about 60 MiB)

#: Peak memory per case, printed at the end of the module (`pytest -s`) for the record.
PEAKS: dict[str, int] = {}


def good_template() -> str:
    return corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------ harness
# (the capped child and CLI runs live in _harness.py, shared with test_hostile.py)


def load_error(source: Path | str, label: str) -> Outcome:
    """`load_templates(source)` in a capped child; asserts it ended in a TemplateSourceError naming the file."""
    outcome = in_child(lambda: [t.name for t in load_templates(source)])
    assert outcome.kind == "error", outcome
    assert outcome.type.endswith("Error") and outcome.source, outcome
    assert str(outcome.source).startswith(str(source)) or str(source).startswith(str(outcome.source)), outcome
    PEAKS[label] = outcome.peak
    return outcome


def assert_one_line_exit_2(run: Run, source: Path | str, label: str, *words: str) -> str:
    """Exit 2, one line on stderr naming the file (and the words given), nothing on stdout, bounded memory."""
    assert "Traceback" not in run.err, run.err
    assert run.code == 2, (run.code, run.err)
    lines = run.lines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {source}"), run.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not run.out.strip(), run.out
    assert run.peak < CLI_PEAK, f"{label}: peak RSS {run.peak / MiB:.0f} MiB"
    PEAKS[label] = max(PEAKS.get(label, 0), run.peak)
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int] | str]:
    """Every entry under `folder` (links not followed): a link's target, a file's size and mtime."""
    found: dict[str, tuple[int, int] | str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            relative = str(path.relative_to(folder))
            if path.is_symlink():
                found[relative] = "-> " + os.readlink(path)
            elif path.is_file():
                info = path.stat()
                found[relative] = (info.st_size, info.st_mtime_ns)
    return found


def through_every_command(source: Path, label: str, *words: str, tmp_path: Path, report_row: bool = True) -> None:
    """patch (to stdout, -o over an existing file, and --in-place where it applies), check, show: exit 2 with one
    line; report: a "not patchable" row saying why (`report_row`), exit 0. Nothing under the source's folder or
    at -o changes."""
    folder = source if source.is_dir() and not source.is_symlink() else source.parent
    before = snapshot(folder)
    existing = tmp_path / "mine.jinja"
    existing.write_text("the user's own file\n")
    commands = [("patch",), ("patch", "-o", existing), ("check",), ("show",), ("report",)]
    if not str(source).endswith(".gguf"):
        commands.append(("patch", "--in-place"))
    with ThreadPoolExecutor(max_workers=2) as pool:  # independent processes: two at a time
        runs = dict(zip(commands, pool.map(lambda c: cli(c[0], source, *c[1:]), commands)))
    for command, run in runs.items():
        if command[0] != "report":
            assert_one_line_exit_2(run, source, label, *words)
    assert existing.read_text() == "the user's own file\n"
    report = runs[("report",)]
    assert "Traceback" not in report.err and report.code == 0, report
    if report_row:
        assert "not patchable" in report.out and words[-1] in " ".join(report.out.split()), report.out
    assert report.peak < CLI_PEAK
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mine")) == ["mine.jinja"]


# -------------------------------------------------------------------------------------------- huge files


@pytest.fixture(scope="module")
def huge_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200 MB tokenizer_config.json: a good template beside a 200 MB string (a model folder of its own)."""
    folder = tmp_path_factory.mktemp("huge") / "model"
    folder.mkdir()
    path = folder / "tokenizer_config.json"
    head = '{\n  "chat_template": ' + __import__("json").dumps(good_template()) + ',\n  "padding": "'
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(head)
        block = "a" * MiB
        for _ in range(200):
            handle.write(block)
        handle.write('"\n}\n')
    assert path.stat().st_size > 200 * MiB
    return path


def test_a_200_mb_tokenizer_config_is_refused_before_it_is_read(huge_config: Path) -> None:
    for source in (huge_config, huge_config.parent):
        outcome = load_error(source, "200 MB tokenizer_config.json (API)")
        assert outcome.source == str(huge_config)
        assert (
            f"{huge_config.stat().st_size:,} bytes (200.0 MiB)" in outcome.message
            and "over 64 MiB is not read" in outcome.message
        ), outcome.message
        assert outcome.peak < 16 * MiB, outcome  # nothing read


@pytest.mark.subprocess
def test_a_200_mb_tokenizer_config_through_the_cli(huge_config: Path, tmp_path: Path) -> None:
    through_every_command(huge_config, "200 MB tokenizer_config.json (CLI)", "not read", tmp_path=tmp_path)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_an_endless_device_is_refused_before_it_is_read() -> None:
    outcome = load_error("/dev/zero", "/dev/zero as a template")
    assert "a character device, not a regular file" in outcome.message, outcome
    assert outcome.peak < 16 * MiB, outcome  # nothing read


@pytest.mark.slow
def test_a_config_under_the_limit_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """A 48 MiB config (the largest real ones are a few MB) still loads, in a few times its size."""
    path = tmp_path / "tokenizer_config.json"
    path.write_text('{"chat_template": "{{ messages }}", "padding": "' + "a" * (48 * MiB) + '"}')
    outcome = in_child(lambda: [len(t.text) for t in load_templates(path)])
    assert outcome.kind == "returned" and outcome.value == [len("{{ messages }}")], outcome
    assert outcome.peak < 4 * 48 * MiB, outcome
    PEAKS["48 MiB tokenizer_config.json (loads)"] = outcome.peak
    assert MAX_CONFIG_BYTES > 48 * MiB


# ------------------------------------------------------------------------------------------ deep JSON


def _deep_files(folder: Path) -> dict[str, Path]:
    depth = 100_000
    files = {}
    arrays = folder / "arrays" / "tokenizer_config.json"
    arrays.parent.mkdir()
    arrays.write_text("[" * depth + "]" * depth)
    files["arrays"] = arrays
    objects = folder / "objects" / "tokenizer_config.json"
    objects.parent.mkdir()
    objects.write_text('{\n  "eos_token": "</s>",\n  "chat_template": ' + '{"a": ' * depth + "1" + "}" * depth + "\n}")
    files["objects"] = objects
    processor = folder / "processor" / "chat_template.json"
    processor.parent.mkdir()
    processor.write_text('{"chat_template": "{{ \\"[[[[\\" }}", "x": ' + "[" * depth + "]" * depth + "}")
    files["processor"] = processor
    return files


@pytest.mark.parametrize("shape", ["arrays", "objects", "processor"])
def test_json_nested_100000_deep_names_file_line_and_column(tmp_path: Path, shape: str) -> None:
    path = _deep_files(tmp_path)[shape]
    for source in (path, path.parent):
        outcome = load_error(source, f"JSON nested 100,000 deep ({shape})")
        assert outcome.type == "TemplateSourceError" and outcome.source == str(path), outcome
        assert "JSON nested more than 1,000 levels deep" in outcome.message, outcome
        limit = sys.getrecursionlimit()
        expected = {
            "arrays": (1, limit + 1),
            "objects": (3, len('  "chat_template": ') + len('{"a": ') * (limit - 1) + 1),  # the outer object is 1
            # brackets inside the template string are not counted
            "processor": (1, len('{"chat_template": "{{ \\"[[[[\\" }}", "x": ') + limit),
        }[shape]
        assert (outcome.line, outcome.column) == expected, outcome
        assert outcome.peak < 32 * MiB, outcome


@pytest.mark.subprocess
def test_deep_json_through_the_cli(tmp_path: Path) -> None:
    path = _deep_files(tmp_path)["objects"]
    through_every_command(path, "JSON nested 100,000 deep (CLI)", ":3:", "levels deep", tmp_path=tmp_path)


@pytest.mark.subprocess
def test_deep_json_beside_a_good_template_and_as_messages(tmp_path: Path) -> None:
    """show reads the folder's tokenizer_config.json for its special tokens and --messages as JSON: a deep one is
    skipped (special tokens) or one clear line (messages), never a RecursionError."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "chat_template.jinja").write_text(good_template())
    (folder / "tokenizer_config.json").write_text("[" * 100_000 + "]" * 100_000)
    shown = cli("show", folder)
    assert shown.code == 0 and "Traceback" not in shown.err, shown
    messages = tmp_path / "conversation.json"
    messages.write_text('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}")
    run = cli("show", folder / "chat_template.jinja", "--messages", messages)
    assert_one_line_exit_2(run, messages, "deep --messages (CLI)", "levels deep")


# ------------------------------------------------------------------------------------------ lying GGUF


def make_gguf(path: Path) -> Path:
    """A small GGUF file: a vocabulary (strings, int32 types, float32 scores), a chat template, one tensor."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("stand-in")
    writer.add_token_list(["<s>", "</s>", "hello", "\u00e9t\u00e9"])
    writer.add_token_types([3, 3, 1, 1])
    writer.add_token_scores([0.0, 0.0, -1.5, -2.25])
    writer.add_chat_template(good_template())
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _after_key(data: bytes, key: str) -> int:
    """Offset just past the key bytes of metadata entry `key` (where its u32 value type starts)."""
    encoded = key.encode()
    at = data.index(struct.pack("<Q", len(encoded)) + encoded)
    return at + 8 + len(encoded)


def _put(data: bytearray, offset: int, fmt: str, value: int) -> bytearray:
    struct.pack_into(fmt, data, offset, value)
    return data


# name -> how to make the lie (each: the whole file's bytes in, the lying bytes out)
GGUF_LIES: dict[str, Callable[[bytearray], bytearray]] = {
    "template length 2**62": lambda d: _put(d, _after_key(d, "tokenizer.chat_template") + 4, "<Q", 1 << 62),
    "template length one past the end": lambda d: _put(
        d, _after_key(d, "tokenizer.chat_template") + 4, "<Q", len(d) - _after_key(d, "tokenizer.chat_template") - 11
    ),
    "token strings count 2**40": lambda d: _put(d, _after_key(d, "tokenizer.ggml.tokens") + 8, "<Q", 1 << 40),
    "token types count 2**61": lambda d: _put(d, _after_key(d, "tokenizer.ggml.token_type") + 8, "<Q", 1 << 61),
    "a token's length 2**63": lambda d: _put(d, _after_key(d, "tokenizer.ggml.tokens") + 16, "<Q", 1 << 63),
    "metadata count 2**40": lambda d: _put(d, 16, "<Q", 1 << 40),
    "metadata count 100 more": lambda d: _put(d, 16, "<Q", struct.unpack_from("<Q", d, 16)[0] + 100),
    "tensor count 2**50": lambda d: _put(d, 8, "<Q", 1 << 50),
    "key length 2**60": lambda d: _put(d, 24, "<Q", 1 << 60),
    "unknown value type": lambda d: _put(d, _after_key(d, "general.name"), "<I", 77),
    "cut in the vocabulary": lambda d: d[: _after_key(d, "tokenizer.ggml.tokens") + 30],
}


@pytest.mark.parametrize("lie", list(GGUF_LIES))
def test_a_gguf_file_that_lies_is_refused_before_anything_is_allocated(tmp_path: Path, lie: str) -> None:
    whole = bytearray(make_gguf(tmp_path / "good.gguf").read_bytes())
    path = tmp_path / "lying.gguf"
    path.write_bytes(GGUF_LIES[lie](whole))
    outcome = load_error(path, f"GGUF: {lie}")
    assert outcome.type == "TemplateSourceError" and outcome.source == str(path), outcome
    assert ": not a readable GGUF file: " in outcome.message and "(at byte " in outcome.message, outcome
    assert outcome.peak < 16 * MiB and outcome.seconds < 5, outcome


def test_nested_arrays_deeper_than_the_limit_are_refused(tmp_path: Path) -> None:
    """An array of arrays of … (GGUF allows nesting): nine levels are refused by depth, not by recursion."""
    key = b"general.nested"
    value = struct.pack("<I", 9)  # ARRAY
    for _ in range(40):
        value += struct.pack("<IQ", 9, 1)  # an array of one array
    body = struct.pack("<Q", len(key)) + key + value + struct.pack("<IQ", 4, 0)
    path = tmp_path / "nested.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body)
    outcome = load_error(path, "GGUF: arrays nested 40 deep")
    assert "nested more than 8 deep" in outcome.message, outcome


@pytest.mark.subprocess
def test_lying_gguf_files_through_the_cli(tmp_path: Path) -> None:
    for number, lie in enumerate(("template length 2**62", "token strings count 2**40")):
        folder = tmp_path / f"lie{number}"
        folder.mkdir()
        whole = bytearray(make_gguf(folder / "good.gguf").read_bytes())
        (folder / "good.gguf").unlink()
        path = folder / "model.gguf"
        path.write_bytes(GGUF_LIES[lie](whole))
        # patch -o a .gguf target too: nothing is written there
        target = folder / "out.gguf"
        assert_one_line_exit_2(cli("patch", path, "-o", target), path, f"GGUF {lie} (CLI)", "not a readable GGUF")
        assert not target.exists()
        through_every_command(path, f"GGUF {lie} (CLI)", "not a readable GGUF", tmp_path=tmp_path)


@pytest.mark.slow
def test_a_real_sized_vocabulary_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """262,144 tokens with types and scores, 300,000 merges: read without loading an array."""
    import gguf

    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    tokens = [f"token{i}" for i in range(262_144)]
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([f"a{i} b{i}" for i in range(300_000)])
    writer.add_chat_template(good_template())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    outcome = in_child(lambda: [t.name for t in load_templates(path)])
    assert outcome.kind == "returned" and outcome.value == ["default"], outcome
    assert outcome.peak < 16 * MiB and outcome.seconds < 5, outcome
    PEAKS["GGUF with a 262k vocabulary (loads)"] = outcome.peak


# ------------------------------------------------------------------------------------- symbolic link loops


def _loop_folders(root: Path) -> dict[str, Path]:
    """Model folders whose template file, config, extra-templates folder or own path is a link loop."""
    made = {}
    one = root / "self_loop"
    one.mkdir()
    (one / "chat_template.jinja").symlink_to("chat_template.jinja")
    (one / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')  # never silently used instead
    made["chat_template.jinja -> itself"] = one
    two = root / "pair"
    two.mkdir()
    (two / "tokenizer_config.json").symlink_to("other.json")
    (two / "other.json").symlink_to("tokenizer_config.json")
    made["tokenizer_config.json <-> other.json"] = two
    three = root / "extra"
    three.mkdir()
    (three / "additional_chat_templates").symlink_to("additional_chat_templates")
    made["additional_chat_templates -> itself"] = three
    four_a, four_b = root / "folder_a", root / "folder_b"
    four_a.symlink_to(four_b.name)
    four_b.symlink_to(four_a.name)
    made["the folder itself"] = four_a
    return made


@pytest.mark.parametrize("case", ["chat_template.jinja -> itself", "tokenizer_config.json <-> other.json",
                                  "additional_chat_templates -> itself", "the folder itself"])  # fmt: skip
def test_a_model_folder_with_a_symlink_loop(tmp_path: Path, case: str) -> None:
    folder = _loop_folders(tmp_path)[case]
    outcome = load_error(folder, f"symlink loop: {case}")
    assert outcome.type == "TemplateSourceError", outcome
    assert "symbolic link loop" in outcome.message, outcome
    assert outcome.peak < 16 * MiB, outcome


@pytest.mark.subprocess
def test_symlink_loops_through_the_cli(tmp_path: Path) -> None:
    for case, folder in _loop_folders(tmp_path).items():
        if case == "the folder itself":  # its snapshot would be the whole tmp_path: run the commands alone
            for command in ("patch", "check", "show"):
                assert_one_line_exit_2(cli(command, folder), folder, "symlink loop (CLI)", "symbolic link loop")
            continue
        # report looks for template files: a loop where a folder of them should be holds none (no row)
        row = case != "additional_chat_templates -> itself"
        through_every_command(folder, "symlink loop (CLI)", "symbolic link loop", tmp_path=tmp_path, report_row=row)


@pytest.mark.subprocess
def test_report_walks_a_tree_with_a_folder_loop(tmp_path: Path) -> None:
    """A link to a parent folder is not followed (the walk ends); a file link loop is one not-patchable row."""
    tree = tmp_path / "tree"
    (tree / "model").mkdir(parents=True)
    (tree / "model" / "chat_template.jinja").write_text(good_template())
    (tree / "model" / "up").symlink_to("..")
    (tree / "broken").mkdir()
    (tree / "broken" / "chat_template.jinja").symlink_to("chat_template.jinja")
    run = cli("report", tree)
    assert run.code == 0 and "Traceback" not in run.err, run
    assert "1 patched" in run.out and "1 not patchable (of 2)" in run.out, run.out
    assert "symbolic link loop" in run.out
    assert run.peak < CLI_PEAK


# ------------------------------------------------------------------------------------------ binary files


BINARY = {
    "NUL bytes": ("chat_template.jinja", b"{{ messages }}\n\0\0\0\x01\x02", "NUL byte at byte offset 15", (2, 1)),
    "PNG image": ("chat_template.jinja", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "byte 0x89 at byte offset 0", (1, 1)),
    "UTF-16 config": (
        "tokenizer_config.json",
        '{"chat_template": "{{ messages }}"}'.encode("utf-16"),
        "byte 0xff at byte offset 0",
        (1, 1),
    ),
    "Latin-1 on line 3": (
        "chat_template.jinja",
        b"{{ a }}\n{{ b }}\n{{ 'caf\xe9' }}",
        "0xe9 at byte offset 23",
        (3, 8),
    ),
}


@pytest.mark.parametrize("case", list(BINARY))
def test_a_binary_template_file_names_the_byte(tmp_path: Path, case: str) -> None:
    name, content, words, (line, column) = BINARY[case]
    path = tmp_path / name
    path.write_bytes(content)
    for source in (path, tmp_path):
        outcome = load_error(source, f"binary: {case}")
        assert outcome.type == "TemplateSourceError" and outcome.source == str(path), outcome
        assert words in outcome.message, outcome
        assert (outcome.line, outcome.column) == (line, column), outcome


def test_a_40_mb_binary_blob_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as handle:
        handle.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
        handle.truncate(40 * MiB)  # sparse: the size is what counts
    outcome = load_error(path, "40 MB binary blob")
    assert "over 16 MiB is not read" in outcome.message and outcome.peak < 16 * MiB, outcome


@pytest.mark.subprocess
def test_binary_files_through_the_cli(tmp_path: Path) -> None:
    for case in ("NUL bytes", "PNG image"):
        name, content, words, (line, column) = BINARY[case]
        folder = tmp_path / case.replace(" ", "_")
        folder.mkdir()
        path = folder / name
        path.write_bytes(content)
        through_every_command(path, f"binary: {case} (CLI)", f":{line}:{column}:", words, tmp_path=tmp_path)


def test_errors_are_template_kit_errors() -> None:
    """What the harness above checks by name: every refusal is a TemplateSourceError, a TemplateKitError."""
    assert issubclass(TemplateSourceError, TemplateKitError)


def test_print_peaks() -> None:
    """Last in the module: the peak memory of each case, for `pytest -s` (and the README)."""
    for label, peak in sorted(PEAKS.items()):
        print(f"  {label}: {peak / MiB:.1f} MiB")
