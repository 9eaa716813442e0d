"""A real `stormvl serve` on 127.0.0.1, spoken to with the official openai client."""

import base64
import json
import math
import subprocess
import sys

import httpx
import openai
import pytest

from .conftest import API_KEY, EXAMPLE

pytestmark = pytest.mark.slow

DIRECTION = "Which direction does the red square move?"
OPEN = "What happens in the video?"


def data_url(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def video_message(url: str, question: str, **part_fields):
    return [{"role": "user", "content": [{"type": "text", "text": question},
                                        {"type": "video_url", "video_url": {"url": url}, **part_fields}]}]  # fmt: skip


def cli_answer(*args):
    r = subprocess.run([sys.executable, "-m", "stormvl.cli", "answer", *map(str, args), "--json"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_streamed_answer_equals_the_cli_and_reports_usage(client):
    stream = client.chat.completions.create(
        model="stormvl-default",
        messages=video_message(data_url(EXAMPLE.read_bytes()), OPEN, num_frames=16, temporal_sample=2),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    expected = cli_answer(EXAMPLE, OPEN, "--frames", 16, "--temporal-sample", 2)
    assert text == expected["answer"] and text
    # The README's formula: ceil(ceil(T / k_t) / s) * (h / k_s) * (w / k_s), here T=16, k_t=4, s=2,
    # and a 4x4 token grid (64-pixel frames, 8-pixel patches, 2x2 pixel shuffle) pooled 2x2.
    assert usage.visual_tokens == math.ceil(math.ceil(16 / 4) / 2) * (4 // 2) * (4 // 2) == expected["visual_tokens"]
    assert usage.num_frames == 16 and usage.completion_tokens > 0
    assert usage.model_extra["visual_tokens_before_reduction"] == 16 * 4 * 4


def test_stream_ends_with_done(server):
    body = {"model": "stormvl-default", "stream": True, "messages": video_message(data_url(EXAMPLE.read_bytes()), OPEN)}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:  # fmt: skip
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_options_answer_with_letter_and_text(client, media_dir):
    for url in (str(media_dir[0] / "clip.mp4"), (media_dir[0] / "clip.mp4").as_uri()):
        r = client.chat.completions.create(
            model="stormvl-default", messages=video_message(url, DIRECTION),
            extra_body={"options": ["left", "right", "up", "down"]},
        )  # fmt: skip
        assert r.choices[0].message.content == "B. right"


def test_follow_up_reuses_the_encoded_video(client, server):
    def encoded():
        return httpx.get(server + "/health").json()["videos_encoded"]

    url = data_url(EXAMPLE.read_bytes())
    messages = video_message(url, OPEN, num_frames=12)
    first = client.chat.completions.create(model="stormvl-default", messages=messages)
    before = encoded()
    follow = messages + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": DIRECTION},
    ]
    r = client.chat.completions.create(model="stormvl-default", messages=follow)
    assert encoded() == before  # neither decoded nor encoded again
    assert r.choices[0].message.content


@pytest.mark.parametrize("where", ["outside", "dotdot", "symlink"])
def test_paths_outside_the_allowed_directories_get_403(client, media_dir, where):
    allowed, outside = media_dir
    path = {
        "outside": outside / "secret.mp4",
        "dotdot": f"{allowed}/../{outside.name}/secret.mp4",
        "symlink": allowed / "escape.mp4",
    }[where]
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="stormvl-default", messages=video_message(str(path), DIRECTION))
    assert e.value.status_code == 403 and "outside" in e.value.body["message"]


def test_bad_requests_get_one_line_4xx(client):
    data = EXAMPLE.read_bytes()
    cases = [
        (video_message(data_url(data[: len(data) // 3]), DIRECTION), {}, 400),  # truncated video
        (video_message("data:video/mp4;base64,@@@", DIRECTION), {}, 400),  # not base64
        (video_message("http://example.com/v.mp4", DIRECTION), {}, 400),  # remote, not allowed
        (video_message(data_url(data), DIRECTION, num_frames=65), {}, 400),  # over --max-frames
        (video_message(data_url(data), DIRECTION), {"max_tokens": 10**6}, 400),
        ([{"role": "user", "content": DIRECTION}], {}, 400),  # no video
        (video_message(data_url(data), DIRECTION), {"extra_body": {"stream": "false"}}, 400),
    ]
    for messages, extra, status in cases:
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="stormvl-default", messages=messages, **extra)
        assert e.value.status_code == status, e.value.body
        message = e.value.body["message"]
        assert message and "\n" not in message and "Traceback" not in message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=video_message(data_url(data), DIRECTION))


def test_text_that_is_not_valid_unicode_gets_400(server):
    # JSON may escape a lone surrogate (the openai client cannot even send one): no tokenizer takes it.
    body = {"model": "stormvl-default", "messages": video_message(data_url(EXAMPLE.read_bytes()), "What \ud800 moves?")}
    r = httpx.post(server + "/v1/chat/completions", content=json.dumps(body),
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]


def test_unknown_routes_and_methods_answer_in_openais_error_shape(server):
    for method, path, status in [("GET", "/v1/nope", 404), ("GET", "/v1/chat/completions", 405)]:
        r = httpx.request(method, server + path, headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == status and r.json()["error"]["code"] == status


def test_a_bad_uploaded_video_is_named_without_the_servers_temporary_file(client):
    data = EXAMPLE.read_bytes()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="stormvl-default",
                                       messages=video_message(data_url(data[: len(data) // 3]), DIRECTION))  # fmt: skip
    assert "stormvl-" not in e.value.body["message"] and "/tmp" not in e.value.body["message"]


def test_truncated_video_names_the_problem(client):
    data = EXAMPLE.read_bytes()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="stormvl-default",
                                       messages=video_message(data_url(data[: len(data) // 3]), DIRECTION))  # fmt: skip
    assert "video" in e.value.body["message"].lower()


def test_body_over_the_limit_gets_413(server):
    body = {"model": "stormvl-default", "messages": video_message(data_url(b"\0" * (3 * 2**20)), DIRECTION)}
    r = httpx.post(server + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


def test_api_key_is_required(server):
    from openai import OpenAI

    for key in ("wrong", ""):
        c = OpenAI(base_url=server + "/v1", api_key=key or "x", max_retries=0)
        headers = {} if key else {"Authorization": ""}
        with pytest.raises(openai.AuthenticationError):
            c.with_options(default_headers=headers).models.list()
    assert httpx.get(server + "/v1/models").status_code == 401
    assert httpx.get(server + "/health").status_code == 200  # health needs no key


def test_disconnect_mid_stream_frees_the_slot(server):
    body = {"model": "stormvl-default", "stream": True, "max_tokens": 200,
            "messages": video_message(data_url(EXAMPLE.read_bytes()), OPEN)}  # fmt: skip
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:  # fmt: skip
        next(r.iter_lines())  # the first chunk, then hang up
    import time

    for _ in range(50):
        if httpx.get(server + "/health").json()["in_flight"] == 0:
            break
        time.sleep(0.1)
    assert httpx.get(server + "/health").json()["in_flight"] == 0


def test_readme_serve_examples_run_as_written(tmp_path):
    """The README's `stormvl serve` command, its openai client example and its curl example."""
    import re
    import shlex
    import shutil

    from stormvl.testing import start_server

    from .conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Serve") :]
    bash, python, curl = re.findall(r"```(?:bash|python)\n(.*?)```", section, flags=re.S)[:3]
    serve = next(line for line in bash.splitlines() if line.startswith("stormvl serve"))
    args = shlex.split(serve)[2:]
    args = [a for i, a in enumerate(args) if a != "--port" and (i == 0 or args[i - 1] != "--port")]
    proc, url = start_server(*args, cwd=ROOT)
    try:
        code = python.replace("http://127.0.0.1:8000", url)
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        out = r.stdout.split()
        assert out == ["right", "16", "visual", "tokens"]
        if shutil.which("curl"):
            command = curl.split("\n# ->")[0].replace("http://127.0.0.1:8000", url)
            r = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert json.loads(r.stdout)["choices"][0]["message"]["content"] == "B. right"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_full_queue_gets_429_and_a_slow_request_504():
    from fastapi.testclient import TestClient

    import stormvl
    from stormvl.serve.app import ServeSettings, create_app

    pipe = stormvl.load()
    body = {"model": "stormvl", "messages": video_message(data_url(EXAMPLE.read_bytes()), DIRECTION)}
    app = create_app(pipe, ServeSettings(max_queue=1))
    with TestClient(app) as c:
        from stormvl.serve.scheduler import Job

        holder = Job("k", "q", None, (), 1, 1, None)
        app.state.scheduler.acquire(holder)  # the one slot is taken
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        app.state.scheduler.finish(holder)
        assert c.post("/v1/chat/completions", json=body).status_code == 200
    with TestClient(create_app(pipe, ServeSettings(request_timeout=1e-4))) as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 504 and "longer than" in r.json()["error"]["message"]


def test_a_visual_token_budget_picks_the_sampling(client):
    r = client.chat.completions.create(
        model="stormvl-default", messages=video_message(data_url(EXAMPLE.read_bytes()), OPEN, num_frames=16),
        extra_body={"max_visual_tokens": 8},
    )  # fmt: skip
    assert r.usage.visual_tokens == 8 and r.usage.model_extra["temporal_sample"] == 2
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="stormvl-default", messages=video_message(data_url(EXAMPLE.read_bytes()),
                                       OPEN), extra_body={"max_visual_tokens": 2})  # fmt: skip
    assert "smallest budget" in e.value.body["message"]


def test_the_video_placeholder_in_text_is_refused(client):
    messages = video_message(data_url(EXAMPLE.read_bytes()), "what is <video> ?")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="stormvl-default", messages=messages)
    assert "placeholder" in e.value.body["message"]


def test_a_taken_port_is_one_line_before_the_model_loads():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "stormvl.cli", "serve", "--port", str(port)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in r.stderr and "serving" not in r.stderr
