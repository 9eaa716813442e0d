import asyncio

import pytest

from .conftest import EXAMPLE

DIRECTION = "Which direction does the red square move?"


@pytest.fixture(scope="module")
def pipe():
    import stormvl

    return stormvl.load()


def _job(loop, pipe, question, options=None, key="clip|16", clip=True):
    from stormvl.serve.scheduler import Job

    return Job(key, question, options, (), 16, 1, loop, clip=pipe.load_clip(EXAMPLE, 16) if clip else None)


async def _result(job):
    pieces = []
    while True:
        kind, value = await asyncio.wait_for(job.events.get(), 60)
        if kind == "text":
            pieces.append(value)
        elif kind in ("done", "error"):
            return kind, value, "".join(pieces)


def test_waiting_questions_are_answered_as_one_batch_and_equal_single_answers(pipe):
    from stormvl.serve.scheduler import Scheduler

    questions = [(DIRECTION, ["left", "right", "up", "down"]), ("What happens in the video?", None),
                 ("How many times does the red square flash?", None), (DIRECTION, None)]  # fmt: skip

    async def main():
        loop = asyncio.get_running_loop()
        sched = Scheduler(pipe, max_batch=8, start=False)
        jobs = [_job(loop, pipe, q, o) for q, o in questions]
        for j in jobs:
            sched.submit(j)
        sched.start()
        out = [await _result(j) for j in jobs]
        sched.close()
        return sched, out

    sched, out = asyncio.run(main())
    assert sched.stats["largest_batch"] == 4 and sched.stats["videos_encoded"] == 1
    for (q, o), (kind, answer, streamed) in zip(questions, out):
        assert kind == "done"
        assert answer.text == pipe.answer(EXAMPLE, q, o, num_frames=16, max_new_tokens=16).text == streamed


def test_admission_is_bounded_and_a_bad_clip_fails_alone(pipe):
    from stormvl.serve.scheduler import QueueFull, Scheduler

    async def main():
        loop = asyncio.get_running_loop()
        sched = Scheduler(pipe, max_queue=2, start=False)
        good = _job(loop, pipe, DIRECTION)
        lost = _job(loop, pipe, DIRECTION, key="gone|16", clip=False)  # evicted before it was answered
        other = _job(loop, pipe, DIRECTION)
        sched.acquire(good)
        sched.acquire(lost)
        with pytest.raises(QueueFull):
            sched.acquire(other)
        sched.finish(lost)
        sched.finish(lost)  # idempotent: a slot is freed once
        assert sched.in_flight == 1
        sched.acquire(lost)  # a freed slot is free again
        sched.submit(good)
        sched.submit(lost)
        sched.start()
        res = await _result(good), await _result(lost)
        sched.close()
        return (*res, sched.in_flight)

    (kind_good, _, _), (kind_lost, (status, message), _), in_flight = asyncio.run(main())
    assert in_flight == 0  # the model thread freed both slots when it ended their jobs
    assert kind_good == "done"
    assert kind_lost == "error" and status == 400 and "send it again" in message


def test_a_question_that_cannot_be_asked_fails_alone(pipe):
    from stormvl.serve.scheduler import Scheduler

    async def main():
        loop = asyncio.get_running_loop()
        sched = Scheduler(pipe, start=False)
        good = _job(loop, pipe, "What happens in the video?")
        long = _job(loop, pipe, "word " * 5000)  # over the model's context: respond refuses it
        for j in (good, long):
            sched.submit(j)
        sched.start()
        res = await _result(good), await _result(long)
        sched.close()
        return res

    (kind_good, _, text), (kind_long, (status, message), _) = asyncio.run(main())
    assert kind_good == "done" and text
    assert kind_long == "error" and status == 400 and "reads at most" in message


def test_a_follow_up_asked_alone_computes_only_its_new_tokens(pipe):
    """The scheduler keeps the conversation's KV cache: the follow-up's prefill covers only the
    tokens after the first turn's prompt and reply, and its answer equals one computed afresh."""
    from stormvl.pipeline import Request
    from stormvl.serve.scheduler import Scheduler

    lm = pipe.model.language_model
    lengths = []
    hook = lm.register_forward_pre_hook(lambda _m, _a, kw: lengths.append(kw["inputs_embeds"].shape[1]),
                                        with_kwargs=True)  # fmt: skip
    first_q, follow_q = "What happens in the video?", DIRECTION

    async def ask(sched, question, history):
        job = _job(asyncio.get_running_loop(), pipe, question)
        job.history = history
        sched.submit(job)
        return await _result(job)

    async def main():
        sched = Scheduler(pipe, max_batch=8)
        _, first, _ = await ask(sched, first_q, ())
        lengths.clear()
        kind, follow, streamed = await ask(sched, follow_q, ((first_q, first.text),))
        sched.close()
        return first, kind, follow, streamed

    try:
        first, kind, follow, streamed = asyncio.run(main())
        prefill = lengths[0]
    finally:
        hook.remove()
    assert kind == "done" and follow.text == streamed
    video = pipe.encode([pipe.load_clip(EXAMPLE, 16)], 1)[0]
    fresh = pipe.respond([Request(video, follow_q, None, ((first_q, first.text),), 16)])[0]
    assert follow.text == fresh.text
    # Only the new turn's tokens ran through the LLM, not the video's or the first turn's.
    assert prefill < follow.prompt_tokens - video.features.shape[0] - first.prompt_tokens // 2
    assert 0 < prefill, (prefill, follow.prompt_tokens, first.prompt_tokens)


def _hold(monkeypatch, pipe, method: str):
    """Makes `pipe.<method>` wait, once entered, until released: (entered, release) events."""
    import threading

    entered, release = threading.Event(), threading.Event()
    real = getattr(pipe, method)

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe, method, held)
    return entered, release


async def _submit_until_held(sched, pipe, entered, key):
    """Submits a question about the example clip and waits until it sits in the held stage."""
    loop = asyncio.get_running_loop()
    job = _job(loop, pipe, DIRECTION, key=key)
    sched.submit(job)
    assert await loop.run_in_executor(None, entered.wait, 60)
    return job


async def _encoded_after(sched, n, seconds):
    """The scheduler's count of encoded videos once it reaches n, or after `seconds`."""
    import time

    deadline = time.time() + seconds
    while sched.stats["videos_encoded"] < n and time.time() < deadline:
        await asyncio.sleep(0.01)
    return sched.stats["videos_encoded"]


def test_a_question_that_breaks_the_tokenizer_fails_alone_with_500(pipe, monkeypatch):
    """Not a user error the pipeline knows (a bug, or text no tokenizer takes): the batch is
    answered question by question, and only that one fails (500), the others as if alone."""
    from stormvl.serve.scheduler import Scheduler

    prompt_ids = type(pipe).prompt_token_ids

    def breaking(self, prompt, video):
        if "BREAK" in prompt:
            raise TypeError("TextEncodeInput must be Union[...]")
        return prompt_ids(self, prompt, video)

    monkeypatch.setattr(type(pipe), "prompt_token_ids", breaking)

    async def main():
        loop = asyncio.get_running_loop()
        sched = Scheduler(pipe, start=False)
        jobs = [_job(loop, pipe, DIRECTION), _job(loop, pipe, "BREAK"), _job(loop, pipe, "What happens in the video?")]
        for j in jobs:
            sched.submit(j)
        sched.start()
        res = [await _result(j) for j in jobs]
        sched.close()
        return res

    (k1, a1, _), (k2, (status, message), _), (k3, a3, _) = asyncio.run(main())
    assert (k1, k3, k2, status) == ("done", "done", "error", 500) and "TypeError" in message
    assert a1.text == pipe.answer(EXAMPLE, DIRECTION, num_frames=16, max_new_tokens=16).text
    assert a3.text == pipe.answer(EXAMPLE, "What happens in the video?", num_frames=16, max_new_tokens=16).text


def test_below_a_full_batch_the_stages_take_turns_and_a_full_batch_is_encoded_meanwhile(pipe, monkeypatch):
    """While the LLM answers, a lone request waits for its turn (its batch may still grow, and the
    encoder will have both cores); once a full batch waits, it is encoded while the LLM answers."""
    from stormvl.serve.scheduler import Scheduler

    in_llm, release = _hold(monkeypatch, pipe, "respond")

    async def main():
        loop = asyncio.get_running_loop()
        sched = Scheduler(pipe, max_batch=2, turn_wait_s=60)
        jobs = [await _submit_until_held(sched, pipe, in_llm, "first|16")]
        jobs.append(_job(loop, pipe, DIRECTION, key="second|16"))
        sched.submit(jobs[-1])
        alone = await _encoded_after(sched, 2, 1.0)
        jobs.append(_job(loop, pipe, DIRECTION, key="third|16"))
        sched.submit(jobs[-1])
        full = await _encoded_after(sched, 3, 60)
        release.set()
        out = [await _result(j) for j in jobs]
        sched.close()
        return alone, full, out, sched.stats

    alone, full, out, stats = asyncio.run(main())
    assert (alone, full) == (1, 3)  # the lone second video waited; with the third, both were encoded
    assert stats["batches"] == 2 and stats["largest_batch"] == 2
    expected = pipe.answer(EXAMPLE, DIRECTION, num_frames=16, max_new_tokens=16).text
    assert [(kind, answer.text) for kind, answer, _ in out] == [("done", expected)] * 3


def test_a_stage_waits_its_turn_at_most_turn_wait_s(pipe, monkeypatch):
    """A long reply does not hold the next request's encoding for longer than `turn_wait_s`."""
    from stormvl.serve.scheduler import Scheduler

    in_llm, release = _hold(monkeypatch, pipe, "respond")

    async def main():
        sched = Scheduler(pipe, turn_wait_s=0.2)
        first = await _submit_until_held(sched, pipe, in_llm, "first|16")
        second = _job(asyncio.get_running_loop(), pipe, DIRECTION, key="second|16")
        sched.submit(second)
        encoded_while_held = await _encoded_after(sched, 2, 60)
        release.set()
        out = await _result(first), await _result(second)
        sched.close()
        return encoded_while_held, out

    encoded_while_held, out = asyncio.run(main())
    assert encoded_while_held == 2
    assert [kind for kind, _, _ in out] == ["done", "done"]


def test_the_llm_waits_for_a_batch_the_encoder_is_finishing(pipe, monkeypatch):
    """Requests that arrive together are answered together: a follow-up (its video held) that
    reaches the LLM while the encoder works on another request's video joins that batch."""
    from stormvl.serve.scheduler import Scheduler

    video = pipe.encode([pipe.load_clip(EXAMPLE, 16)], 1)[0]
    in_encoder, release = _hold(monkeypatch, pipe, "encode")

    async def main():
        sched = Scheduler(pipe, turn_wait_s=60)
        other = await _submit_until_held(sched, pipe, in_encoder, "other|16")
        follow = _job(asyncio.get_running_loop(), pipe, DIRECTION, key="held|16", clip=False)
        follow.video = video
        sched.submit(follow)
        await asyncio.sleep(0.5)
        answered_early = sched.stats["answered"]
        release.set()
        out = await _result(follow), await _result(other)
        sched.close()
        return answered_early, out, sched.stats

    answered_early, out, stats = asyncio.run(main())
    assert answered_early == 0 and stats["batches"] == 1 and stats["largest_batch"] == 2
    assert [kind for kind, _, _ in out] == ["done", "done"]


def test_a_question_about_an_encoded_video_does_not_wait_for_the_encoder(pipe, monkeypatch):
    """A follow-up whose video the server already holds goes straight to the LLM stage, and is
    answered while the encoder is still busy with another request's video (after `turn_wait_s`)."""
    from stormvl.serve.scheduler import Scheduler

    video = pipe.encode([pipe.load_clip(EXAMPLE, 16)], 1)[0]
    in_encoder, release = _hold(monkeypatch, pipe, "encode")

    async def main():
        sched = Scheduler(pipe)
        busy = await _submit_until_held(sched, pipe, in_encoder, "other|16")
        follow = _job(asyncio.get_running_loop(), pipe, DIRECTION, key="held|16", clip=False)
        follow.video = video
        sched.submit(follow)
        answered = await _result(follow)  # while the encoder is still held
        release.set()
        other = await _result(busy)
        sched.close()
        return answered, other

    (kind, answer, _), (other_kind, _, _) = asyncio.run(main())
    assert kind == other_kind == "done"
    assert answer.text == pipe.answer(EXAMPLE, DIRECTION, num_frames=16, max_new_tokens=16).text


@pytest.mark.parametrize("flops, small", [(1e15, True), (0, False)])
def test_a_small_prompt_pass_runs_the_llm_stage_on_one_thread(pipe, monkeypatch, flops, small):
    """Below `parallel_prefill_flops` of prompt pass the whole LLM stage runs on one thread (its
    own thread pool would stall the encoder's); above it, the prefill keeps every thread."""
    import torch

    from stormvl.serve.scheduler import Scheduler

    expected = pipe.answer(EXAMPLE, DIRECTION, num_frames=16, max_new_tokens=16).text
    seen = []
    respond = type(pipe).respond

    def counting(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return respond(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "respond", counting)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the stage threads start with the process's count: two, even on one core

    async def main():
        sched = Scheduler(pipe, parallel_prefill_flops=flops)
        job = _job(asyncio.get_running_loop(), pipe, DIRECTION)
        sched.submit(job)
        kind, answer, _ = await _result(job)
        sched.close()
        return kind, answer

    try:
        kind, answer = asyncio.run(main())
    finally:
        torch.set_num_threads(before)
    assert kind == "done" and answer.text == expected
    assert seen == [1 if small else 2]


@pytest.mark.parametrize("hold_s, early", [(0, True), (60, False)])
def test_a_short_reply_is_given_out_before_the_longer_ones_of_its_batch_end(pipe, monkeypatch, hold_s, early):
    """A complete answer waits for the rest of its batch at most `hold_s`: held for 0 s, the
    one-word reply's "done" comes while the longer reply batched with it is still being streamed;
    held longer than the batch runs, it comes at the batch's end."""
    from stormvl.serve.scheduler import Job, Scheduler

    order = []
    emit = Job.emit

    def recording(self, kind, value=None):
        order.append((self.question, kind))
        emit(self, kind, value)

    monkeypatch.setattr(Job, "emit", recording)
    long_q = "What happens in the video?"

    async def main():
        loop = asyncio.get_running_loop()
        sched = Scheduler(pipe, start=False, hold_s=hold_s)
        jobs = [_job(loop, pipe, long_q), _job(loop, pipe, DIRECTION)]
        for j in jobs:
            sched.submit(j)
        sched.start()
        out = [await _result(j) for j in jobs]
        sched.close()
        return sched.stats, out

    stats, out = asyncio.run(main())
    assert stats["batches"] == 1 and [kind for kind, _, _ in out] == ["done", "done"]
    assert out[1][1].text == "right" and len(out[0][1].text.split()) > 2
    last_long_text = max(k for k, e in enumerate(order) if e == (long_q, "text"))
    assert (order.index((DIRECTION, "done")) < last_long_text) == early
    assert order.count((DIRECTION, "done")) == 1 and order.count((long_q, "done")) == 1


def test_an_answer_given_out_before_its_batch_fails_stays_the_only_word_to_its_client(pipe, monkeypatch):
    """A batch that breaks after one answer went out (a bug mid-decoding): that client keeps its
    answer and gets no error after it; the others get a 500."""
    from stormvl.serve.scheduler import Job, Scheduler

    long_q = "What happens in the video?"
    finals, pieces = [], []
    emit = Job.emit

    def breaking(self, kind, value=None):
        if kind != "text":
            finals.append((self.question, kind))
        elif self.question == long_q:
            pieces.append(value)
            if len(pieces) == 2:
                raise RuntimeError("a bug while streaming")
        emit(self, kind, value)

    monkeypatch.setattr(Job, "emit", breaking)

    async def main():
        loop = asyncio.get_running_loop()
        sched = Scheduler(pipe, start=False, hold_s=0)
        jobs = [_job(loop, pipe, long_q), _job(loop, pipe, DIRECTION)]
        for j in jobs:
            sched.submit(j)
        sched.start()
        out = [await _result(j) for j in jobs]
        await asyncio.sleep(0.2)  # anything sent after the final events would be counted now
        sched.close()
        return out

    (long_kind, (status, message), _), (kind, answer, _) = asyncio.run(main())
    assert (long_kind, status, kind, answer.text) == ("error", 500, "done", "right")
    assert "RuntimeError" in message
    assert sorted(finals) == sorted([(DIRECTION, "done"), (long_q, "error")])
