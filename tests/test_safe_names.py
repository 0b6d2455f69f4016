"""tuner/safe_names.py: a name read from a shared store becomes a plain file name, or a relative
path that stays below its folder, or is refused; a hostile name never turns into a path that
leaves the folder."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from tuner.safe_names import UnsafeName, bucket_path, file_name, is_file_name, relative_key


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("study-1_v2.0", "study-1_v2.0"),  # letters, digits and _.- are kept as they are
        ("my study", "my_study"),
        ("../../.bashrc", "_.._.bashrc"),  # slashes become _, so no part climbs
        ("/etc/passwd", "_etc_passwd"),
        ("a\\b", "a_b"),
        ("nul\0byte", "nul_byte"),
        ("étude", "_tude"),  # non-ASCII letters too
        (".hidden", "hidden"),  # never a hidden file
        ("...x", "x"),
    ],
)
def test_file_name_keeps_safe_characters_and_replaces_the_rest(name: str, expected: str) -> None:
    made = file_name(name)
    assert made == expected
    assert "/" not in made and not made.startswith(".")


@pytest.mark.parametrize("name", ["", ".", "..", "...."])
def test_file_name_falls_back_when_nothing_is_left(name: str) -> None:
    assert file_name(name) == "study"
    assert file_name(name, fallback="run") == "run"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("study-1_v2.0", True),
        ("a.b", True),
        ("", False),  # empty is no file name, though file_name("", "") is ""
        (".hidden", False),
        ("..", False),
        ("a/b", False),
        ("my study", False),
        ("a\\b", False),
    ],
)
def test_is_file_name_only_for_what_file_name_leaves_unchanged(name: str, expected: bool) -> None:
    assert is_file_name(name) is expected


@pytest.mark.parametrize("name", ["../x", "/abs", "a b", ".x", "ok_name"])
def test_file_name_makes_a_file_name(name: str) -> None:
    assert is_file_name(file_name(name))


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        ("run/artifacts/model.pt", ("run", "artifacts", "model.pt")),
        ("a/./b", ("a", "b")),
        ("a..b/c", ("a..b", "c")),  # dots inside a part are no climb
        ("file", ("file",)),
    ],
)
def test_relative_key_keeps_a_key_that_stays_below(key: str, parts: tuple[str, ...]) -> None:
    path = relative_key(key, "artifact key")
    assert isinstance(path, PurePosixPath)
    assert path.parts == parts and not path.is_absolute()


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../x", "a/../../x", "a/..", "..", "a\\..\\x", "a\\b", "a\0b"],
)
def test_relative_key_refuses_empty_absolute_climbing_or_odd_keys(key: str) -> None:
    with pytest.raises(UnsafeName) as caught:
        relative_key(key, "artifact key")
    message = str(caught.value)
    assert message.startswith(f"artifact key {key!r} must be a relative path")
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError catch it too


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/studies/a", "bucket/studies/a"),
        ("s3://bucket", "bucket"),
        ("gs://bucket/x/", "bucket/x"),
        ("s3://user:p%40ss@bucket/path", "bucket/path"),  # never the user or password
    ],
)
def test_bucket_path_is_the_bucket_and_path_without_credentials(uri: str, expected: str) -> None:
    assert bucket_path(uri) == PurePosixPath(expected)


@pytest.mark.parametrize(
    "uri", ["s3://bucket/../../home", "s3://bucket/a/../../..", "s3://:secret@/../x", "s3://"]
)
def test_bucket_path_refuses_a_uri_that_climbs_and_never_shows_its_password(uri: str) -> None:
    with pytest.raises(UnsafeName) as caught:
        bucket_path(uri)
    message = str(caught.value)
    assert message.startswith("storage 's3://': bucket and path")
    assert "secret" not in message
