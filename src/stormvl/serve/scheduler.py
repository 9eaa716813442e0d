"""Two worker threads own the model, one stage each: the encoder thread runs the vision tower and
the temporal encoder, the LLM thread the prefill and decoding. Requests queue for the encoder;
those waiting together are encoded as one batch (grouped by length) and then answered as one
batch (the LLM's prefill and decode shared).

Below a full batch the stages take turns on one growing batch: the encoder waits for the LLM to
finish its batch, and the LLM for the encoder, each for at most `turn_wait_s` (a long reply or a
long video holds the other stage's requests no longer). Requests that arrive together then stay
together, and the encoder has both cores: with 4 clients on 2 cores, batches of 4 taking turns
gave 26-35 req/s against 19-29 for two batches of 2 in the two stages at once (the encoder on one
core beside the decoding LLM). Once a full batch waits, the stages overlap: while the LLM decodes
one batch, a step at a time on one core, the next batch's videos are encoded on the other.

A batch's answers go out one by one: an answer complete while longer replies in its batch are
still decoding waits for them for `hold_s` at most, counted at its decode steps (a real LLM's long
reply can take seconds).

Encoded videos are kept (least recently used first out), so a follow-up question about the same
video content runs neither the decoder nor the vision tower nor the temporal encoder again. The
LLM's KV cache of the last conversation about each video is kept too (fewer of them: they are
larger): a follow-up asked alone computes only the tokens after what the cache already covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import StormError, first_line
from ..generation import PrefixCache, one_thread
from ..pipeline import Answer, EncodedVideo, Request, StormPipeline
from ..video import VideoClip

log = logging.getLogger("stormvl.serve")


class QueueFull(Exception):
    pass


@dataclass
class Job:
    key: str  # the encoded-video cache key: content and sampling settings
    question: str
    options: list[str] | None
    history: tuple
    max_new_tokens: int
    temporal_sample: int
    loop: asyncio.AbstractEventLoop
    clip: VideoClip | None = None  # the decoded frames, when the video still has to be encoded
    video: EncodedVideo | None = None  # the encoded video, when the cache had it at admission
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    holds_slot: bool = False
    answered: bool = False  # its answer went out before its batch ended

    def emit(self, kind: str, value=None):
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Scheduler:
    def __init__(
        self,
        pipe: StormPipeline,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        cache_videos: int = 32,
        cache_conversations: int = 8,
        batch_wait_s: float = 0.02,
        turn_wait_s: float = 0.1,
        hold_s: float = 0.05,
        parallel_prefill_flops: float = 2e9,
        start=True,
    ):
        self.pipe = pipe
        lm = pipe.model.language_model
        # Weights a prompt token is multiplied through (the embedding table is only looked up).
        self._llm_weights = sum(p.numel() for p in lm.parameters()) - lm.get_input_embeddings().weight.numel()
        self.parallel_prefill_flops = parallel_prefill_flops
        self.batch_wait_s = batch_wait_s
        self._decoding = 0  # requests admitted and still decoding their video
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.cache_videos = cache_videos
        self._cache: OrderedDict[str, EncodedVideo] = OrderedDict()
        self.cache_conversations = cache_conversations
        self._prefixes: OrderedDict[str, PrefixCache] = OrderedDict()  # touched by the model thread only
        self._lock = threading.Lock()
        self._jobs: list[Job] = []  # admitted, waiting for the encoder
        self._ready: list[Job] = []  # encoded, waiting for the LLM
        self._wake = threading.Condition(self._lock)
        self._slots = 0  # admitted and not yet finished or abandoned
        self._stop = False
        self._llm_busy = False
        self._encoding = False
        self.turn_wait_s = turn_wait_s
        self.hold_s = hold_s
        self.stats = {"videos_encoded": 0, "batches": 0, "answered": 0, "largest_batch": 0}
        self._threads = [
            threading.Thread(target=self._encode_loop, name="stormvl-encoder", daemon=True),
            threading.Thread(target=self._llm_loop, name="stormvl-llm", daemon=True),
        ]
        if start:
            self.start()

    def start(self):
        for t in self._threads:
            t.start()

    # -- admission, from the event loop ---------------------------------------------------------
    def acquire(self, job: Job) -> None:
        """Take a slot for `job`; QueueFull when none is left. The slot is freed by `finish`,
        whichever comes first: the model thread ending the job, or its client being done."""
        with self._lock:
            if self._slots >= self.max_queue:
                raise QueueFull
            self._slots += 1
            job.holds_slot = True

    def finish(self, job: Job) -> None:
        with self._lock:
            if job.holds_slot:
                job.holds_slot = False
                self._slots -= 1

    @property
    def in_flight(self) -> int:
        return self._slots

    def lookup(self, key: str) -> EncodedVideo | None:
        with self._lock:
            return self._cache.get(key)

    def decoding(self):
        """Marks a request whose video is being decoded: a batch about to start waits a moment
        (at most `batch_wait_s`) for it rather than leaving it for the next batch."""
        return _Decoding(self)

    def submit(self, job: Job) -> None:
        """Queues `job` for the encoder, or straight for the LLM when its video is already encoded
        (a follow-up): it need not wait behind other videos' encoding."""
        with self._wake:
            (self._jobs if job.video is None else self._ready).append(job)
            self._wake.notify_all()  # both stages wait on this condition

    def close(self):
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def _wait_below_full(self, queued, waiting, seconds: float) -> None:
        """Holding the condition: waits while `waiting()` is true and `queued()` is below a full
        batch, at most `seconds`."""
        until = time.perf_counter() + seconds
        while waiting() and queued() < self.max_batch and not self._stop:
            left = until - time.perf_counter()
            if left <= 0:
                return
            self._wake.wait(left)

    # -- the encoder's thread -------------------------------------------------------------------
    def _encode_loop(self):
        while True:
            with self._wake:
                while not self._jobs and not self._stop:
                    self._wake.wait()
                self._wait_below_full(lambda: len(self._jobs), lambda: self._decoding, self.batch_wait_s)
                # Below a full batch the stages take turns.
                self._wait_below_full(lambda: len(self._jobs), lambda: self._llm_busy, self.turn_wait_s)
                if self._stop:
                    return
                # Everything waiting now goes in one batch: under load, requests pile up while
                # the previous batch runs, so batches grow exactly when it pays.
                batch, self._jobs = self._jobs[: self.max_batch], self._jobs[self.max_batch :]
                llm_busy = self._llm_busy
                self._encoding = True
            ready = []
            try:
                # While the LLM decodes (one thread), the encoder takes the other core only: two
                # threads here would stall on the core the decoder holds (see `one_thread`).
                with one_thread() if llm_busy else contextlib.nullcontext():
                    ready = self._encode_batch([j for j in batch if not j.cancelled])
            except Exception as e:  # a bug: these requests fail with 500, logged; the thread lives on
                log.exception("encoding a batch failed")
                for j in batch:
                    j.emit("error", (500, f"internal error ({type(e).__name__}); see the server log"))
            finally:
                passed = {id(j) for j in ready}
                for j in batch:
                    if id(j) not in passed:
                        self.finish(j)
            with self._wake:
                self._ready += ready
                self._encoding = False
                self._wake.notify_all()

    def _encode_batch(self, batch: list[Job]) -> list[Job]:
        """Encodes the jobs' videos; returns the jobs ready for the LLM, each holding its video.
        One bad clip must not fail the others: on an error they are encoded one by one."""
        if not batch:
            return []
        try:
            videos = self._encode(batch)
            ready = batch
        except StormError:
            videos, ready = {}, []
            for job in batch:
                try:
                    videos.update(self._encode([job]))
                    ready.append(job)
                except StormError as e:
                    job.emit("error", (400, first_line(e)))
        for j in ready:
            j.video = videos[j.key]
        return ready

    # -- the LLM's thread -----------------------------------------------------------------------
    def _llm_loop(self):
        while True:
            with self._wake:
                while not self._ready and not self._stop:
                    self._wake.wait()
                # A batch the encoder is finishing joins this one, unless that takes long: a
                # follow-up (its video held) need not wait for a long video's encoding.
                self._wait_below_full(lambda: len(self._ready), lambda: self._encoding, self.turn_wait_s)
                if self._stop:
                    return
                batch, self._ready = self._ready[: self.max_batch], self._ready[self.max_batch :]
                self._llm_busy = True
            live = [j for j in batch if not j.cancelled]
            try:
                if live:
                    self._answer(live)
            except Exception as e:  # a bug: these requests fail with 500, logged; the thread lives on
                log.exception("answering a batch failed")
                self._prefixes.clear()  # a forward that failed midway may have left a cache half-extended
                for j in live:
                    if not j.answered:
                        j.emit("error", (500, f"internal error ({type(e).__name__}); see the server log"))
            finally:
                with self._wake:
                    self._llm_busy = False
                    self._wake.notify_all()
                for j in batch:
                    self.finish(j)

    def _small(self, requests: list[Request]) -> bool:
        """Whether the batch's prompt pass is too small to pay for a second thread pool. Each stage
        thread that runs parallel work keeps its own OpenMP workers, and when the stages hand the
        cores back and forth those workers stall each other: on the embedded model with 4 clients,
        batches took 58-71 ms with the LLM's prefill on every thread and 49-60 ms with the whole
        LLM stage on one (in-process), although that prefill alone runs 4.8 ms on two threads and
        6.8 on one; through the server, 1.02x the requests per second with 4 clients and 1.07x with
        one (paired runs). Large prompt passes (SmolLM2-135M: 6 GFLOP at 30 tokens, 91 ms on two
        threads and 125 on one) keep every thread. The prompt's text is estimated at 64 tokens plus
        4 characters a token of history."""
        tokens = 0
        for r in requests:
            history = sum(len(q) + len(a) for q, a in r.history)
            tokens += r.video.features.shape[0] + 64 + (len(r.question) + history) // 4
        return 2 * self._llm_weights * tokens < self.parallel_prefill_flops

    def _answer(self, ready: list[Job]):
        requests = [Request(j.video, j.question, j.options, j.history, j.max_new_tokens) for j in ready]
        for j in ready:
            j.video = None  # the tokens are no longer needed here
        streamed = False
        # A complete answer is held while the rest of its batch finishes, for `hold_s` (checked at
        # every decode step), then given out. Given out at once, on the embedded model with 4
        # clients, its client's next question was decoded and its reply sent in the middle of the
        # batch's decode steps, which slowed them (0.95-0.97x the requests per second); a real
        # LLM's longer replies run on for seconds (SmolLM2-135M: 40 ms a token), which a short
        # answer should not wait for.
        held: dict[int, tuple[Answer, float]] = {}  # row -> (answer, when it was complete)

        def on_text(i, piece):
            nonlocal streamed
            streamed = True
            ready[i].emit("text", piece)

        def on_done(i, answer):
            held[i] = (answer, time.perf_counter())
            give_out_due()

        def give_out_due(wait=self.hold_s):
            now = time.perf_counter()
            for i, (answer, since) in list(held.items()):
                if now - since >= wait:
                    del held[i]
                    ready[i].answered = True
                    ready[i].emit("done", answer)

        def cancelled(i):  # asked for every row still decoding at every step
            if held:
                give_out_due()
            return ready[i].cancelled

        try:
            with one_thread() if self._small(requests) else contextlib.nullcontext():
                answers = self.pipe.respond(
                    requests, on_text=on_text, cancelled=cancelled,
                    prefix=self._prefix(ready[0]) if len(ready) == 1 else None, on_done=on_done,
                )  # fmt: skip
        except Exception as e:  # one request cannot be asked (too long, a bug, ...): it alone fails
            give_out_due(0)  # complete answers are not lost with the batch
            if streamed:  # replies already under way would be sent twice: the rest fail (500)
                raise
            if not isinstance(e, StormError):
                log.exception("a batch failed before any reply; its questions are answered one by one")
            answers = [None if j.answered else self._alone(j, r) for j, r in zip(ready, requests)]
        self.stats["batches"] += 1
        self.stats["answered"] += len(ready)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(ready))
        for j, a in zip(ready, answers):
            if j.answered:
                continue
            if isinstance(a, StormError):
                j.emit("error", (400, first_line(a)))
            elif isinstance(a, Exception):
                j.emit("error", (500, f"internal error ({type(a).__name__}); see the server log"))
            else:
                j.emit("done", a)

    def _prefix(self, job: Job) -> PrefixCache:
        """The KV cache of the latest conversation about this job's video (a new one if none).
        Any prompt may use it: the decoder reuses only the token ids it shares with the cache, so
        another conversation about the same video takes over the cache from where they part."""
        prefix = self._prefixes.pop(job.key, None) or PrefixCache()
        self._prefixes[job.key] = prefix
        while len(self._prefixes) > self.cache_conversations:
            self._prefixes.popitem(last=False)
        return prefix

    def _alone(self, job: Job, request: Request):
        try:
            out = self.pipe.respond([request], on_text=lambda _i, piece: job.emit("text", piece),
                                    cancelled=lambda _i: job.cancelled)  # fmt: skip
            return out[0]
        except StormError as e:
            return e
        except Exception as e:  # a bug this request alone runs into: logged, a 500 for it alone
            log.exception("answering one question failed")
            return e

    def _encode(self, jobs: list[Job]) -> dict[str, EncodedVideo]:
        """The jobs' encoded videos: from the cache, or encoded now (equal sampling together)."""
        found, todo = {}, {}
        with self._lock:
            for j in jobs:
                if j.key in self._cache:
                    self._cache.move_to_end(j.key)
                    found[j.key] = self._cache[j.key]
                elif j.clip is not None:
                    todo.setdefault(j.temporal_sample, {})[j.key] = j.clip
                else:  # evicted between admission and now
                    raise StormError("the video left the server's cache before it was answered: send it again")
        for s, clips in todo.items():
            encoded = dict(zip(clips, self.pipe.encode(list(clips.values()), s)))
            self.stats["videos_encoded"] += len(encoded)
            found.update(encoded)
            with self._lock:
                self._cache.update(encoded)
                while len(self._cache) > self.cache_videos:
                    self._cache.popitem(last=False)
        for j in jobs:
            j.clip = None  # the frames are no longer needed
        return found


class _Decoding:
    def __init__(self, scheduler: Scheduler):
        self.s = scheduler

    def __enter__(self):
        with self.s._wake:
            self.s._decoding += 1

    def __exit__(self, *exc):
        with self.s._wake:
            self.s._decoding -= 1
            self.s._wake.notify_all()
