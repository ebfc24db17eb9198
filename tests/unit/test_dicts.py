"""core/dicts.py: the dict-path and keyed-list helpers, by table."""

from __future__ import annotations

import pytest

from warmup_operator.core.dicts import dedupe_by_name, deep_merge, get_path, nest


@pytest.mark.parametrize("obj, path, want", [
    ({"a": {"b": 1}}, ("a", "b"), 1),
    ({"a": {"b": 1}}, ("a",), {"b": 1}),
    ({"a": {"b": 1}}, (), {"a": {"b": 1}}),
    ({"a": {"b": 1}}, ("a", "c"), None),
    ({"a": None}, ("a", "b"), None),
    ({"a": [1]}, ("a", "0"), None),
    ({}, ("x",), None),
])
def test_get_path(obj, path, want):
    assert get_path(obj, path) == want


@pytest.mark.parametrize("path, value, want", [
    ((), 1, 1),
    (("spec",), {"x": 1}, {"spec": {"x": 1}}),
    (("spec", "template"), {}, {"spec": {"template": {}}}),
])
def test_nest(path, value, want):
    assert nest(path, value) == want


@pytest.mark.parametrize("a, b, want", [
    ({}, {"a": 1}, {"a": 1}),
    ({"a": {"x": 1}}, {"a": {"y": 2}}, {"a": {"x": 1, "y": 2}}),
    ({"a": {"x": 1}}, {"a": 2}, {"a": 2}),
    ({"a": [1]}, {"a": [2]}, {"a": [2]}),  # lists are replaced, not merged
])
def test_deep_merge(a, b, want):
    before = repr(a)
    assert deep_merge(a, b) == want
    assert repr(a) == before  # the inputs are not changed


@pytest.mark.parametrize("items, want", [
    ([], []),
    ([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]),
    ([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "A", "value": "3"}],
     [{"name": "A", "value": "3"}, {"name": "B", "value": "2"}]),
])
def test_dedupe_by_name_last_wins_first_position_kept(items, want):
    assert dedupe_by_name(items) == want
