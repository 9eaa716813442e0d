import numpy as np
import pytest
import torch

FRAMES = np.random.default_rng(0).integers(0, 255, (8, 40, 40, 3), dtype=np.uint8)


def test_option_ranking_matches_separate_forward_passes(tiny_model):
    """The likelihood choice mode shares one video encoding across options; the scores must be
    those of scoring each option with its own full forward pass (float64)."""
    from stormvl.pipeline import StormPipeline
    from stormvl.video import VideoClip

    model, proc = tiny_model(temporal_pool=2, choice_mode="likelihood", video_position="after")
    model.double()
    clip = VideoClip(frames=FRAMES, timestamps=np.arange(8) / 4.0, indices=np.arange(8), info=None)
    options = ["red", "blue square", "green", "four"]
    pipe = StormPipeline(model, proc)
    scores = pipe.option_scores(clip, "what happens ?", options)
    ref = []
    for opt in options:
        b = proc([FRAMES], [proc.prompt_text("what happens ?")], answers=[opt])
        b["pixel_values_videos"] = b["pixel_values_videos"].double()
        with torch.no_grad():
            logp = model(**b).logits[0, :-1].log_softmax(-1)
        lab = b["labels"][0, 1:]
        ref.append(sum(logp[i, t] for i, t in enumerate(lab.tolist()) if t != -100))
    torch.testing.assert_close(scores.double(), torch.stack(ref), rtol=1e-9, atol=1e-9)
    ans = pipe.answer(clip, "what happens ?", options)
    best = int(torch.stack(ref).argmax())
    assert ans.letter == "ABCD"[best] and ans.text == f"{'ABCD'[best]}. {options[best]}"


def test_greedy_decode_equals_transformers_generate_alone_and_batched(tiny_model):
    """One decoding loop serves answer, answer_batch, chats and the server: alone it gives what
    transformers' generate gives, and a row gives the same tokens whatever it is batched with
    (rows of different lengths are left-padded)."""
    from stormvl.generation import greedy_decode

    model, proc = tiny_model()
    model.double()
    lm = model.language_model
    emb = lm.get_input_embeddings()
    torch.manual_seed(0)
    prompts = [torch.randint(5, 40, (n,)) for n in (7, 3, 11)]
    embeds = [emb(p) for p in prompts]
    alone = [greedy_decode(lm, [e], 6, stop_ids=set())[0] for e in embeds]
    for p, toks in zip(prompts, alone):
        ref = lm.generate(inputs_embeds=emb(p)[None], max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert toks == ref[0].tolist()
    assert greedy_decode(lm, embeds, 6, stop_ids=set()) == alone
    # A stop id ends its row only; a cancelled row ends at once.
    stop = alone[0][2]
    cut = greedy_decode(lm, embeds, 6, stop_ids={stop}, cancelled=lambda row: row == 2)
    assert cut[0] == alone[0][: alone[0].index(stop)]
    assert cut[2] == []


def test_each_row_is_reported_finished_as_soon_as_it_stops(tiny_model):
    """`on_finish(row, tokens)` runs once per row, at the step where the row stops (its limit, a
    stop id, cancelled), while longer rows decode on; alone with a prefix cache, at the end."""
    from stormvl.generation import PrefixCache, greedy_decode

    model, _ = tiny_model()
    lm = model.language_model
    emb = lm.get_input_embeddings()
    torch.manual_seed(0)
    embeds = [emb(torch.randint(5, 40, (n,))) for n in (7, 3, 5, 4)]
    events = []
    out = greedy_decode(
        lm, embeds, [6, 2, 0, 6], stop_ids=set(), cancelled=lambda row: row == 3 and len(events) > 4,
        on_token=lambda row, tokens: events.append(("token", row, len(tokens))),
        on_finish=lambda row, tokens: events.append(("finish", row, list(tokens))),
    )  # fmt: skip
    finished = [e for e in events if e[0] == "finish"]
    assert sorted(row for _, row, _ in finished) == [0, 1, 2, 3]
    assert {row: tokens for _, row, tokens in finished} == dict(enumerate(out))
    assert events[0] == ("finish", 2, [])  # a zero-token limit is finished before any step
    # Row 1 (limit 2) is reported right after its second token, before row 0's third.
    assert events.index(("finish", 1, out[1])) == events.index(("token", 1, 2)) + 1
    assert events.index(("finish", 1, out[1])) < events.index(("token", 0, 3))
    assert len(out[3]) < 6 and events[-1] == ("finish", 0, out[0])
    ids = torch.randint(5, 40, (6,))
    seen = []
    alone = greedy_decode(lm, [emb(ids)], 3, set(), prefix=PrefixCache(), prompt_ids=ids.tolist(),
                          on_finish=lambda row, tokens: seen.append((row, list(tokens))))  # fmt: skip
    assert seen == [(0, alone[0])]


def test_decode_steps_run_on_one_thread_and_prefill_on_all(tiny_model):
    # Token steps are too small to gain from a second thread and stall when a core is busy
    # elsewhere (generation.one_thread); the prompt's pass keeps every thread, and the caller's
    # thread count is back afterwards, also when a step raises.
    from stormvl.generation import PrefixCache, greedy_decode

    model, _ = tiny_model()
    lm = model.language_model
    seen = []
    hook = lm.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        embeds = [lm.get_input_embeddings()(torch.randint(5, 40, (n,))) for n in (7, 3)]
        greedy_decode(lm, embeds, 4, stop_ids=set())
        assert seen == [2, 1, 1, 1]
        seen.clear()
        ids = torch.randint(5, 40, (6,))
        greedy_decode(lm, [lm.get_input_embeddings()(ids)], 3, set(), prefix=PrefixCache(), prompt_ids=ids.tolist())
        assert seen == [2, 1, 1] and torch.get_num_threads() == 2

        def boom(row, tokens):
            raise RuntimeError("a client callback failed")

        with pytest.raises(RuntimeError, match="callback"):
            greedy_decode(lm, embeds, 4, stop_ids=set(), on_token=boom)
        assert torch.get_num_threads() == 2
    finally:
        hook.remove()
        torch.set_num_threads(before)


def test_text_stream_pieces_join_to_the_final_text():
    from stormvl.generation import TextStream

    words = {1: " the", 2: " red ", 3: "square", 4: " ", 5: "moves"}
    stream = TextStream(lambda ids: "".join(words[i] for i in ids).strip())
    ids, pieces = [], []
    for t in [1, 2, 3, 4, 5, 4]:
        ids.append(t)
        pieces.append(stream.push(ids))
    pieces.append(stream.finish(ids))
    assert "".join(pieces) == "the red square moves"
    assert not any(p.endswith(" ") for p in pieces[:-1])  # whitespace waits for what follows


def _three_clips(tmp_path):
    import random

    from stormvl.data.synthetic import make_sample
    from stormvl.video import write_video

    paths = []
    for i, task in enumerate(["direction", "count", "order"]):
        frames, *_ = make_sample(random.Random(i), task, 16)
        paths.append(tmp_path / f"clip{i}.mp4")
        write_video(paths[-1], frames, fps=8)
    return paths


def test_answer_batch_equals_one_at_a_time(tmp_path):
    """8 questions over 3 clips, multiple choice and open: the batch gives exactly the answers of
    one call each, and decodes each clip once."""
    from unittest import mock

    import stormvl
    from stormvl import pipeline as pipeline_module

    pipe = stormvl.load()
    clips = _three_clips(tmp_path)
    direction = ["left", "right", "up", "down"]
    items = [
        (clips[0], "Which direction does the red square move?", direction),
        (clips[1], "How many times does the blue circle flash?", ["one", "two", "three", "four"]),
        (clips[2], "What happens in the video?"),
        (clips[0], "What happens in the video?"),
        (clips[1], "Which direction does the red square move?", direction),
        (clips[2], "Which shape is shown first?", ["red square", "blue circle", "green triangle", "red circle"]),
        (clips[0], "How many times does the blue circle flash?"),
        (clips[2], "Which direction does the red square move?", direction),
    ]
    one_by_one = [pipe.answer(*it) for it in items]
    with mock.patch.object(pipeline_module, "load_video", wraps=pipeline_module.load_video) as decode:
        batched = pipe.answer_batch(items, batch_size=8)
    assert decode.call_count == 3
    assert [a.text for a in batched] == [a.text for a in one_by_one]
    assert [a.letter for a in batched] == [a.letter for a in one_by_one]
    assert [a.visual_tokens for a in batched] == [a.visual_tokens for a in one_by_one]
    assert [a.text for a in pipe.answer_batch(items, batch_size=3)] == [a.text for a in one_by_one]
    assert any(a.completion_tokens > 0 for a in batched)  # the open questions were generated


def test_each_answer_is_given_out_as_soon_as_it_is_complete():
    """`respond(on_done=...)`: a ranked choice is given out before any reply is generated, and a
    short reply before the longer ones batched with it have finished; the answers are those of
    asking alone."""
    from pathlib import Path

    import stormvl
    from stormvl.pipeline import Request

    pipe = stormvl.load()
    video = pipe.encode([pipe.load_clip(Path(__file__).parents[1] / "examples" / "clip.mp4", 16)])[0]
    asked = [("What happens in the video?", None), ("Which direction does the red square move?", None),
             ("Which direction does the red square move?", ["left", "right", "up", "down"])]  # fmt: skip
    requests = [Request(video, q, o, (), 16) for q, o in asked]
    events = []
    answers = pipe.respond(
        requests,
        on_text=lambda i, piece: events.append(("text", i)),
        on_done=lambda i, a: events.append(("done", i, a)),
    )
    done = [e for e in events if e[0] == "done"]
    assert [i for _, i, _ in done] == [2, 1, 0]
    assert [a for _, _, a in sorted(done, key=lambda e: e[1])] == answers
    # "right" is out while "the red square moves right" is still being written.
    assert events.index(done[1]) < max(k for k, e in enumerate(events) if e == ("text", 0))
    for r, a in zip(requests, answers):
        assert a.text == pipe.respond([r])[0].text
    assert answers[0].completion_tokens > answers[1].completion_tokens == 1


def test_chat_follow_up_encodes_nothing_and_equals_a_fresh_session(tmp_path, monkeypatch):
    import stormvl
    from stormvl.pipeline import Request

    pipe = stormvl.load()
    clip = _three_clips(tmp_path)[0]
    calls = []
    pipe.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    chat = pipe.chat(clip)
    assert len(calls) == 1
    first = chat.ask("What happens in the video?")
    streamed = []
    second = chat.ask("Which direction does the red square move?", ["left", "right", "up", "down"])
    third = chat.ask("How many times does the blue circle flash?", on_text=streamed.append)
    assert len(calls) == 1  # neither question ran the vision tower
    assert "".join(streamed) == third.text
    # The LLM computed only the follow-up's new tokens: the conversation so far came from its cache.
    widths = []
    hook = pipe.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: widths.append(kw["inputs_embeds"].shape[1]), with_kwargs=True
    )
    fourth = chat.ask("What happens in the video?")
    hook.remove()
    prompt = pipe.processor.prompt_text("What happens in the video?", history=tuple(chat.history[:3]))
    full = len(pipe.prompt_token_ids(prompt, chat.video))
    assert widths[0] < full - 16  # not even the 16 visual tokens again
    uncached = pipe.respond([Request(chat.video, "What happens in the video?", history=tuple(chat.history[:3]))])[0]
    assert fourth.text == uncached.text
    # The same conversation, encoded afresh and asked in one go, gives the same replies.
    fresh = pipe.chat(clip)
    assert fresh.ask("What happens in the video?").text == first.text
    history = tuple(chat.history[:2])
    again = pipe.respond([Request(fresh.video, "How many times does the blue circle flash?", history=history)])[0]
    assert again.text == third.text
    assert second.letter in "ABCD"
    # The follow-up's prompt carries the earlier turns and still one video.
    prompt = pipe.processor.prompt_text("q ?", history=history)
    assert prompt.count("<video>") == 1 and first.text in prompt


def test_a_prefix_cache_that_parts_from_the_prompt_is_cut_back(tmp_path):
    """A cache shared with another conversation (the server keeps one per video) covers tokens
    the new prompt does not have: they are dropped, and the answer equals an uncached one."""
    import stormvl
    from stormvl.generation import PrefixCache
    from stormvl.pipeline import Request

    pipe = stormvl.load()
    video = pipe.encode([pipe.load_clip(_three_clips(tmp_path)[1], 16)])[0]
    prefix = PrefixCache()
    pipe.respond([Request(video, "What happens in the video?", history=(("Describe it.", "a square"),))],
                 prefix=prefix)  # fmt: skip
    covered = len(prefix.ids)
    question = "Which direction does the red square move?"
    got = pipe.respond([Request(video, question)], prefix=prefix)[0]
    assert got.text == pipe.respond([Request(video, question)])[0].text
    assert len(prefix.ids) == prefix.cache.get_seq_length() != covered


def test_a_timestamped_model_reads_the_clips_own_times(tiny_model):
    """Same frames, other times: other scores, each equal to a forward pass over the prompt that
    names those times (float64)."""
    from stormvl.pipeline import StormPipeline
    from stormvl.video import VideoClip

    model, proc = tiny_model(temporal_pool=2, choice_mode="likelihood", video_position="after", prompt_timestamps=True)
    model.double()
    pipe = StormPipeline(model, proc)
    options = ["red", "blue square"]
    got = []
    for step in (0.25, 3.0):
        clip = VideoClip(frames=FRAMES, timestamps=np.arange(8) * step, indices=np.arange(8), info=None)
        scores = pipe.option_scores(clip, "what happens ?", options)
        prompt = proc.prompt_text("what happens ?", times=(7 * step, list(np.arange(8) * step)))
        b = proc([FRAMES] * 2, [prompt] * 2, answers=options)
        b["pixel_values_videos"] = b["pixel_values_videos"].double()
        with torch.no_grad():
            logp = model(**b).logits[:, :-1].log_softmax(-1)
        lab = b["labels"][:, 1:]
        ref = (logp.gather(-1, lab.clamp(min=0)[..., None])[..., 0] * (lab != -100)).sum(1)
        torch.testing.assert_close(scores.double(), ref, rtol=1e-9, atol=1e-9)
        got.append(scores)
    assert not torch.allclose(got[0], got[1])


def test_a_bicubic_tower_gets_frames_resized_as_its_processor_would(tiny_model, tmp_path):
    # The decoder scales frames to the tower's size. A bicubic tower (SigLIP's processor) must get
    # the processor's own resize of each RGB frame, not FFmpeg's area scaling of the YUV frame.
    from stormvl.pipeline import StormPipeline
    from stormvl.processing import resize_frames
    from stormvl.video import load_video, write_video

    rng = np.random.default_rng(1)
    path = write_video(tmp_path / "noise.mp4", rng.integers(0, 255, (6, 96, 160, 3), dtype=np.uint8), fps=6)
    full = load_video(path, 6).frames  # (6, 96, 160, 3)
    for resample, exact in (("bicubic", True), ("bilinear", False)):
        model, proc = tiny_model(resample=resample)
        side = model.config.vision_config.image_size
        got = StormPipeline(model, proc).load_clip(path, 6).frames
        assert got.shape == (6, side, side, 3)
        assert np.array_equal(got, resize_frames(full, side, "bicubic")) == exact
        assert np.array_equal(got, load_video(path, 6, size=side).frames) != exact  # bilinear: FFmpeg's area path
