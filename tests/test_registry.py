from __future__ import annotations

import sys
import types

import six

import fws
from fws import FilterBase, FilterMeta, Registry, WebSocketMessageFilter
from fws.registry import filters_defined_in


def test_seed_chain_example_prints_foo_then_bar(capsys):
    class AFilter(FilterMeta):
        pass

    @six.add_metaclass(AFilter)
    class A(FilterBase):
        pass

    class B(A):
        @classmethod
        def filter(cls, web_socket_instance):
            print("foo")

    class C(A):
        @classmethod
        def filter(cls, web_socket_instance):
            print("bar")

    A.run(object())
    assert capsys.readouterr().out == "foo\nbar\n"


def test_python3_metaclass_spelling_of_the_seed_example(capsys):
    class A(FilterBase, metaclass=FilterMeta):
        pass

    class B(A):
        @classmethod
        def filter(cls, web_socket_instance, data):
            print("foo", data)

    class C(A):
        @classmethod
        def filter(cls, web_socket_instance, data):
            print("bar", data)

    A.run(None, 1)
    assert capsys.readouterr().out == "foo 1\nbar 1\n"


def test_subclassing_an_event_records_in_definition_order(fresh_registry):
    class First(WebSocketMessageFilter):
        @classmethod
        def filter(cls, ws, data):
            return data + "1"

    class Second(WebSocketMessageFilter):
        @classmethod
        def filter(cls, ws, data):
            return data + "2"

    assert fresh_registry.filters(WebSocketMessageFilter) == (First, Second)
    assert fresh_registry.pipeline(WebSocketMessageFilter).run(None, "") == "12"
    assert fresh_registry.filters(fws.WebSocketDisconnectFilter) == ()


def test_isolated_registries_do_not_see_each_other():
    with fws.isolated_registry() as inner:

        class Inside(WebSocketMessageFilter):
            @classmethod
            def filter(cls, ws, data):
                pass

    assert inner.filters(WebSocketMessageFilter) == (Inside,)
    assert Inside not in fws.active_registry().filters(WebSocketMessageFilter)


def test_classes_without_filter_are_not_recorded(fresh_registry):
    class Helpers(WebSocketMessageFilter):
        """An intermediate base with no filter() of its own."""

    class Concrete(Helpers):
        @classmethod
        def filter(cls, ws, data):
            pass

    assert fresh_registry.filters(WebSocketMessageFilter) == (Concrete,)


def test_from_modules_takes_only_classes_each_module_defines_in_module_order():
    first = types.ModuleType("first_filters")
    second = types.ModuleType("second_filters")
    sys.modules.update(first_filters=first, second_filters=second)
    try:
        exec(
            "from fws import WebSocketMessageFilter\n"
            "class One(WebSocketMessageFilter):\n"
            "    @classmethod\n"
            "    def filter(cls, ws, data): return data + '1'\n",
            first.__dict__,
        )
        exec(
            "from fws import WebSocketMessageFilter\n"
            "from first_filters import One\n"
            "class Two(One):\n"
            "    @classmethod\n"
            "    def filter(cls, ws, data): return data + '2'\n",
            second.__dict__,
        )
        assert [c.__name__ for c in filters_defined_in(second)] == ["Two"]
        registry = Registry.from_modules([second, first])
        assert registry.pipeline(WebSocketMessageFilter).run(None, "") == "21"
    finally:
        del sys.modules["first_filters"], sys.modules["second_filters"]


def test_recording_twice_is_an_error():
    registry = Registry()

    class Once(WebSocketMessageFilter):
        @classmethod
        def filter(cls, ws, data):
            pass

    registry.record(Once)
    try:
        registry.record(Once)
    except ValueError as exc:
        assert "already registered" in str(exc)
    else:
        raise AssertionError("a duplicate was accepted")
