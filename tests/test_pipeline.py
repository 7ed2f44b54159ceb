from __future__ import annotations

import pytest

import fws
from fws import DROP, FilterError, Pipeline, WebSocketMessageFilter


class Upper(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        return data.upper()


class Exclaim(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        return data + "!"


class Record(WebSocketMessageFilter):
    seen: list = []

    @classmethod
    def filter(cls, web_socket_instance, data):
        cls.seen.append(data)


def test_pipe_of_two_classes_runs_left_to_right():
    pipeline = Upper | Exclaim
    assert isinstance(pipeline, Pipeline)
    assert pipeline.run(None, "hi") == "HI!"
    assert (Exclaim | Upper).run(None, "hi") == "HI!"
    assert (Exclaim | Exclaim | Upper).run(None, "a") == "A!!"


def test_repr_reads_like_a_shell_pipe():
    assert repr(Upper | Exclaim | Record) == "Pipeline(Upper | Exclaim | Record)"


def test_pipeline_is_immutable_and_or_returns_a_new_one():
    first = Pipeline(Upper)
    second = first | Exclaim
    assert first.filters == (Upper,)
    assert second.filters == (Upper, Exclaim)
    with pytest.raises(AttributeError):
        first.extra = 1  # type: ignore[attr-defined]


def test_pipeline_of_pipelines_flattens():
    combined = (Upper | Exclaim) | (Exclaim | Upper)
    assert combined.filters == (Upper, Exclaim, Exclaim, Upper)
    assert Pipeline(Pipeline(Upper), Exclaim) == Upper | Exclaim


def test_none_passes_data_on_unchanged():
    Record.seen = []
    assert (Record | Upper).run(None, "x") == "X"
    assert Record.seen == ["x"]


def test_drop_stops_the_pipeline():
    def grep_v_secret(ws, data):
        return DROP if "secret" in data else None

    Record.seen = []
    pipeline = grep_v_secret | Record
    assert pipeline.run(None, "top secret") is DROP
    assert pipeline.run(None, "public") == "public"
    assert Record.seen == ["public"]
    assert repr(DROP) == "fws.DROP"


def test_functions_instances_and_plain_method_classes_are_filters():
    class Suffix:
        def __init__(self, suffix):
            self.suffix = suffix

        def filter(self, web_socket_instance, data):
            return data + self.suffix

    class PlainMethod(fws.FilterBase):
        def filter(self, web_socket_instance, data):
            return data * 2

    # Two plain objects have no | of their own: start from a Pipeline or a filter class.
    pipeline = Pipeline(lambda ws, data: data + "1") | Suffix("2") | PlainMethod
    assert pipeline.run(None, "0") == "012012"
    assert len(pipeline) == 3


def test_a_plain_method_class_is_instantiated_once_when_piped():
    made = []

    class Counted:
        def __init__(self):
            made.append(self)

        def filter(self, web_socket_instance, data):
            return data

    pipeline = Pipeline(Upper) | Counted
    assert pipeline.run(None, "a") == "A"
    assert len(made) == 1


def test_filter_taking_only_the_instance_is_called_without_data():
    calls = []

    def on_instance(web_socket_instance):
        calls.append(web_socket_instance)

    assert Pipeline(on_instance, Upper).run("ws", "a") == "A"
    assert calls == ["ws"]


def test_or_with_a_non_filter_is_a_type_error():
    with pytest.raises(TypeError):
        Pipeline(Upper) | 42  # noqa: B018
    with pytest.raises(TypeError):
        42 | Pipeline(Upper)  # noqa: B018
    assert Pipeline(Upper).__or__(42) is NotImplemented
    with pytest.raises(TypeError, match="not a filter"):
        Pipeline("not a filter")


def test_raising_filter_is_reported_by_name_with_the_cause():
    def explode(ws, data):
        raise ValueError("boom")

    Record.seen = []
    with pytest.raises(FilterError) as info:
        (Upper | explode | Record).run(None, "a")
    assert "explode" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    assert Record.seen == []


def test_empty_pipeline_returns_the_data():
    assert Pipeline().run(None, "a") == "a"
    assert not Pipeline()
