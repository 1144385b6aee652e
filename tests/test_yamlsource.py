from __future__ import annotations

import time

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.yamlsource import MAX_FILE_BYTES, load_yaml


def problems(raw: bytes) -> list[str]:
    return [str(p) for p in load_yaml("f.yaml", raw)[1]]


def test_locations_of_keys_values_and_items() -> None:
    doc, found = load_yaml("f.yaml", b"a: 1\nlist:\n  - x: hello\n    y: [1, 2]\n")
    assert found == []
    assert doc is not None
    assert doc.data == {"a": 1, "list": [{"x": "hello", "y": [1, 2]}]}
    assert str(doc.locate(["a"])) == "f.yaml:1:4"
    assert str(doc.locate(["a"], at_key=True)) == "f.yaml:1:1"
    assert str(doc.locate(["list", 0])) == "f.yaml:3:5"
    assert str(doc.locate(["list", 0, "y", 1])) == "f.yaml:4:12"
    # A missing key stops at the deepest container reached.
    assert str(doc.locate(["list", 0, "missing"])) == "f.yaml:3:5"


def test_timestamps_stay_as_written() -> None:
    doc, _ = load_yaml("f.yaml", b"t: 2026-12-01T00:00:00+08:00\nd: 2026-12-01\n")
    assert doc is not None
    assert doc.data == {"t": "2026-12-01T00:00:00+08:00", "d": "2026-12-01"}


def test_duplicate_key_names_both_lines() -> None:
    assert problems(b"a: 1\nb: 2\na: 3\n") == [
        "f.yaml:3:1: duplicate key 'a' (first at line 1); each key may appear once"
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"1: x\n", "f.yaml:1:1: key '1' is read as an integer"),
        (b"yes: x\n", "f.yaml:1:1: key 'yes' is read as a boolean"),
        (b"~: x\n", "f.yaml:1:1: key '~' is read as null"),
        (b"? [a, b]\n: x\n", "f.yaml:1:3: mapping keys must be plain strings"),
    ],
)
def test_non_string_keys(raw: bytes, expected: str) -> None:
    found = problems(raw)
    assert len(found) == 1
    assert found[0].startswith(expected)


def test_merge_keys_explicit_wins() -> None:
    raw = b"base: &b {x: 1, y: 2}\nitem:\n  <<: *b\n  y: 3\n"
    doc, found = load_yaml("f.yaml", raw)
    assert found == []
    assert doc is not None
    assert doc.data["item"] == {"x": 1, "y": 3}
    assert str(doc.locate(["item", "x"])) == "f.yaml:1:14"


def test_alias_bomb_is_refused_quickly() -> None:
    lines = [b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        prev = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]".encode())
    started = time.perf_counter()
    found = problems(b"\n".join(lines) + b"\n")
    assert time.perf_counter() - started < 1.0
    assert len(found) == 1
    assert "alias bomb" in found[0]
    assert found[0].startswith("f.yaml:")


def test_legitimate_aliases_are_fine() -> None:
    raw = b"d: &d {project_id: p}\nitems:\n" + b"".join(
        b"  - {<<: *d, n: %d}\n" % i for i in range(500)
    )
    doc, found = load_yaml("f.yaml", raw)
    assert found == []
    assert doc is not None
    assert len(doc.data["items"]) == 500


def test_recursive_alias() -> None:
    found = problems(b"a: &a [1, *a]\n")
    assert found == ["f.yaml:1:11: alias *a refers to its own enclosing node"]


def test_undefined_alias() -> None:
    found = problems(b"a: *nothing\n")
    assert len(found) == 1
    assert found[0].startswith("f.yaml:1:4:")


def test_deep_flow_nesting_does_not_crash() -> None:
    found = problems(b"[" * 200_000)
    assert len(found) == 1
    assert "nesting" in found[0]
    assert found[0].startswith("f.yaml:1:")


def test_deep_block_nesting_is_bounded() -> None:
    raw = "".join(" " * i + "k:\n" for i in range(100)).encode()
    found = problems(raw)
    assert len(found) == 1
    assert found[0].startswith("f.yaml:65:")
    assert "nesting deeper than 64 levels" in found[0]


def test_file_too_large() -> None:
    found = problems(b"#" * (MAX_FILE_BYTES + 1))
    assert found == ["f.yaml:1:1: file is 8.0 MiB; desired files are limited to 8 MiB"]


def test_ten_megabytes_of_schedules_is_a_located_error() -> None:
    raw = b"schedules:\n" + b"  - name: x\n" * (10 * 1024 * 1024 // 12)
    found = problems(raw)
    assert len(found) == 1
    assert found[0].startswith("f.yaml:1:1: file is 10.0 MiB")


@pytest.mark.parametrize(
    ("raw", "prefix"),
    [
        (b"a: 1\nb: \xff\xfe\n", "f.yaml:2:4: not valid UTF-8"),
        (b"\x00\x01\x02\x03", "f.yaml:1:1: character U+0000 is not allowed"),
        (b"a: [1, 2\nb: 3\n", "f.yaml:2:2: YAML syntax"),
        (b"a: 1\n---\nb: 2\n", "f.yaml:2:1: more than one YAML document"),
        (b"a: !!python/object:os.system x\n", "f.yaml:1:4: unsupported YAML tag"),
        (b"a: !!binary aGVsbG8=\n", "f.yaml:1:4: unsupported YAML tag"),
        (b"a: !custom {x: 1}\n", "f.yaml:1:4: unsupported YAML tag '!custom'"),
        (b"a:\n\tb: 1\n", "f.yaml:2:1: YAML syntax"),
    ],
)
def test_bad_bytes_are_located(raw: bytes, prefix: str) -> None:
    found = problems(raw)
    assert found, raw
    assert found[0].startswith(prefix), found


def test_utf8_bom_and_utf16() -> None:
    assert load_yaml("f.yaml", b"\xef\xbb\xbfa: 1\n")[0].data == {"a": 1}  # type: ignore[union-attr]
    doc, found = load_yaml("f.yaml", "a: ü\n".encode("utf-16"))
    assert found == []
    assert doc is not None
    assert doc.data == {"a": "ü"}


def test_python_object_tag_never_instantiated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    raw = f"a: !!python/object/apply:os.system ['touch {marker}']\n".encode()
    found = problems(raw)
    assert found
    assert not marker.exists()


class _TextTimestamps(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader on the same libyaml parser, but timestamps stay as written, as
    load_yaml keeps them."""


_TextTimestamps.add_constructor("tag:yaml.org,2002:timestamp",
                                lambda loader, node: loader.construct_scalar(node))

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["yes", "No", "on", "~", "null", "0x1f", "0o17", "1_000", "1e3", ".inf",
                     "-.NaN", "2026-12-01", "2026-12-01T00:00:00+08:00", "12:30", "<<", "=",
                     "!", "&", "*", "+1", "-", "0 0 2 * * ?", "Asia/Shanghai", ""]),
)
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_documents, st.sampled_from([None, False, True]), st.sampled_from([None, "'", '"']))
def test_data_is_what_pyyaml_reads(document: object, flow: bool | None, style: str | None) -> None:
    """Whatever the scalars and their quoting, a document that loads without problems holds
    exactly the data PyYAML's safe loader reads (the fast paths of the builder included)."""
    text = yaml.safe_dump(document, default_flow_style=flow, default_style=style,
                          allow_unicode=True)
    for source in (text, text.replace("'", "")):  # quoted, and as plain as possible
        try:
            expected = yaml.load(source, Loader=_TextTimestamps)
        except yaml.YAMLError:
            continue
        doc, found = load_yaml("f.yaml", source.encode())
        if doc is None or found:
            continue  # refused (duplicate or non-string keys...): other tests cover those
        assert doc.data == expected
