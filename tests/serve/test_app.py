"""Reading a chat request (`serve.app.parse_request`), without a server."""

import pytest

from stormvl.serve.app import ApiError, ServeSettings, parse_request


@pytest.fixture(scope="module")
def pipe():
    import stormvl

    return stormvl.load()


def body(**fields):
    video = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "Which way?"}, video]}], **fields}


def test_max_tokens_left_out_stays_within_the_servers_limit(pipe):
    assert parse_request(body(), ServeSettings(max_tokens=8), pipe).max_tokens == 8
    assert parse_request(body(), ServeSettings(), pipe).max_tokens == ServeSettings().default_max_tokens
    # max_completion_tokens (the newer name) wins; a null one leaves max_tokens in force.
    assert parse_request(body(max_tokens=5, max_completion_tokens=None), ServeSettings(), pipe).max_tokens == 5
    assert parse_request(body(max_tokens=5, max_completion_tokens=7), ServeSettings(), pipe).max_tokens == 7


@pytest.mark.parametrize("fields, param", [
    ({"stream": "false"}, "stream"),  # a string is not a boolean: it would have streamed
    ({"options": ["left", "ri\ud800ght"]}, "messages"),  # JSON can carry a lone surrogate
    ({"n": 2}, "n"),  # greedy decoding: a second choice would copy the first, not be one
    ({"n": True}, "n"),
    ({"num_frames": 100000}, "num_frames"),
    ({"mm_processor_kwargs": {"num_frames": 100000}}, "num_frames"),
])  # fmt: skip
def test_values_a_client_cannot_mean_are_refused(pipe, fields, param):
    with pytest.raises(ApiError) as e:
        parse_request(body(**fields), ServeSettings(), pipe)
    assert e.value.status == 400 and e.value.param == param
    e.value.message.encode("utf-8")
    assert parse_request(body(n=1), ServeSettings(), pipe).question == "Which way?"
