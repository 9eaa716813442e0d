"""One worker thread owns the model; requests queue for it, and those waiting together are
answered as one batch (video encoding grouped by length, the LLM's prefill and decode shared).

Encoded videos are kept (least recently used first out), so a follow-up question about the same
video content runs neither the decoder nor the vision tower nor the temporal encoder again. The
LLM's KV cache of the last conversation about each video is kept too (fewer of them: they are
larger): a follow-up asked alone computes only the tokens after what the cache already covers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import StormError, first_line
from ..generation import PrefixCache
from ..pipeline import EncodedVideo, Request, StormPipeline
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
        start=True,
    ):
        self.pipe = pipe
        self.batch_wait_s = batch_wait_s
        self._decoding = 0  # requests admitted and still decoding their video
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.cache_videos = cache_videos
        self._cache: OrderedDict[str, EncodedVideo] = OrderedDict()
        self.cache_conversations = cache_conversations
        self._prefixes: OrderedDict[str, PrefixCache] = OrderedDict()  # touched by the model thread only
        self._lock = threading.Lock()
        self._jobs: list[Job] = []
        self._wake = threading.Condition(self._lock)
        self._slots = 0  # admitted and not yet finished or abandoned
        self._stop = False
        self.stats = {"videos_encoded": 0, "batches": 0, "answered": 0, "largest_batch": 0}
        self._thread = threading.Thread(target=self._run, name="stormvl-model", daemon=True)
        if start:
            self._thread.start()

    def start(self):
        self._thread.start()

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
        with self._wake:
            self._jobs.append(job)
            self._wake.notify()

    def close(self):
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # -- the model's thread ---------------------------------------------------------------------
    def _run(self):
        while True:
            with self._wake:
                while not self._jobs and not self._stop:
                    self._wake.wait()
                until = time.perf_counter() + self.batch_wait_s
                while self._decoding and len(self._jobs) < self.max_batch and not self._stop:
                    left = until - time.perf_counter()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                if self._stop:
                    return
                # Everything waiting now goes in one batch: under load, requests pile up while
                # the previous batch runs, so batches grow exactly when it pays.
                batch, self._jobs = self._jobs[: self.max_batch], self._jobs[self.max_batch :]
            batch = [j for j in batch if not j.cancelled]
            try:
                if batch:
                    self._answer(batch)
            except Exception as e:  # a bug: these requests fail with 500, logged; the worker lives on
                log.exception("answering a batch failed")
                self._prefixes.clear()  # a forward that failed midway may have left a cache half-extended
                for j in batch:
                    j.emit("error", (500, f"internal error ({type(e).__name__}); see the server log"))
            finally:
                for j in batch:
                    self.finish(j)

    def _answer(self, batch: list[Job]):
        try:
            videos = self._encode(batch)
            ready = batch
        except StormError:  # one bad clip must not fail the others: encode them one by one
            videos, ready = {}, []
            for job in batch:
                try:
                    videos.update(self._encode([job]))
                    ready.append(job)
                except StormError as e:
                    job.emit("error", (400, first_line(e)))
        if not ready:
            return
        requests = [Request(videos[j.key], j.question, j.options, j.history, j.max_new_tokens) for j in ready]
        try:
            answers = self.pipe.respond(
                requests, on_text=lambda i, piece: ready[i].emit("text", piece), cancelled=lambda i: ready[i].cancelled,
                prefix=self._prefix(ready[0]) if len(ready) == 1 else None,
            )  # fmt: skip
        except StormError:  # one request cannot be asked (too long, ...): it alone fails
            answers = [self._alone(j, r) for j, r in zip(ready, requests)]
        self.stats["batches"] += 1
        self.stats["answered"] += len(ready)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(ready))
        for j, a in zip(ready, answers):
            if isinstance(a, StormError):
                j.emit("error", (400, first_line(a)))
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

    def _encode(self, jobs: list[Job]) -> dict[str, EncodedVideo]:
        """The jobs' encoded videos: from the cache, or encoded now (equal sampling together)."""
        found, todo = {}, {}
        with self._lock:
            for j in jobs:
                if j.video is not None:
                    found[j.key] = j.video
                elif j.key in self._cache:
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
            j.clip, j.video = None, None  # frames and tokens are no longer needed here
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
            self.s._wake.notify()
