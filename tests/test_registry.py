"""trainables/registry.py: names to builders, with errors that say what is valid."""

from __future__ import annotations

import pytest

from trainables.registry import DuplicateNameError, Registry, UnknownNameError


def test_a_registered_name_is_found_and_listed() -> None:
    models = Registry[object]("model")

    @models.register("small")
    def small() -> str:
        return "small"

    models.register("big", owner="plugin_a")(lambda: "big")
    assert models.get("small") is small and models.get("big")() == "big"
    assert models.names() == ["big", "small"]
    assert "small" in models and "huge" not in models
    assert models.owner("small") == __name__ and models.owner("big") == "plugin_a"


def test_an_unknown_name_lists_the_valid_ones() -> None:
    models = Registry[object]("model")
    models.register("mlp", owner="x")(object)
    models.register("cnn", owner="x")(object)
    with pytest.raises(UnknownNameError) as caught:
        models.get("lstm")
    assert str(caught.value) == "unknown model 'lstm'; choose one of: cnn, mlp"
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)


def test_a_name_registered_twice_names_both_modules_and_forget_frees_it() -> None:
    models = Registry[object]("dataset")
    models.register("digits", owner="plugin_a")(object)
    with pytest.raises(DuplicateNameError, match="by plugin_a and by plugin_b; rename one"):
        models.register("digits", owner="plugin_b")(dict)
    assert models.get("digits") is object  # the first stays
    models.forget("plugin_a")  # plugin_a is imported again
    assert models.names() == []
    models.register("digits", owner="plugin_b")(dict)
    assert models.get("digits") is dict
