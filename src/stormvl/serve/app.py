"""The HTTP server: OpenAI-style `/v1/chat/completions` with `video_url` content parts (the
convention of vLLM, SGLang and VILA's server), `/v1/models`, `/health`, and the web page at `/`.

Every refusal is a JSON error in OpenAI's shape with a one-line message; nothing a client sends
can produce a traceback in a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import StormError, first_line
from ..frame_plan import MAX_FRAMES
from ..pipeline import StormPipeline
from ..processing import check_text
from .media import MediaError, MediaPolicy
from .scheduler import Job, QueueFull, Scheduler

STATIC = Path(__file__).parent / "static"
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    504: "timeout_error",
}


@dataclass
class ServeSettings:
    model_name: str = "stormvl"
    media: MediaPolicy = field(default_factory=MediaPolicy)
    api_key: str | None = None
    max_upload_mb: float = 100.0
    max_frames: int = 256
    max_tokens: int = 512
    default_max_tokens: int = 64
    request_timeout: float = 300.0
    max_batch: int = 8
    max_queue: int = 64
    decode_workers: int = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": status}}  # fmt: skip


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status)


# -- reading a request ----------------------------------------------------------------------------
def _text_of(content, where: str) -> tuple[str, list[dict]]:
    """A message's text and its video parts. `content` is a string or a list of parts."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts")
    texts, videos = [], []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "video_url" and isinstance(part.get("video_url"), (dict, str)):
            videos.append(part)
        else:
            raise ApiError(400, f"{where}.content[{i}]: expected a text or video_url part, got {kind!r}")
    return "\n".join(texts), videos


def _int_field(value, name: str, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ApiError(400, f"{name} must be an integer {bound}, got {value!r}", name)
    return value


@dataclass
class ChatRequest:
    url: str
    video_uuid: str | None
    question: str
    history: tuple
    options: list[str] | None
    num_frames: int
    fps: float | None
    temporal_sample: int
    max_tokens: int
    stream: bool
    include_usage: bool


def parse_request(body, settings: ServeSettings, pipe: StormPipeline) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model not in (None, settings.model_name):
        raise ApiError(404, f"model {model!r} is not served here; this server serves {settings.model_name!r}", "model")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        # Decoding is greedy: more choices would be copies of the first.
        raise ApiError(400, f"n must be 1 (this server returns one choice), got {n!r}", "n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    turns, videos = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] must be an object with role system, user or assistant", "messages")
        text, parts = _text_of(m.get("content", ""), f"messages[{i}]")
        if parts and m["role"] != "user":
            raise ApiError(400, f"messages[{i}]: only user messages may carry a video", "messages")
        videos += parts
        if m["role"] != "system":  # the model was not trained with system prompts: they are ignored
            turns.append((m["role"], text))
    if len(videos) != 1:
        raise ApiError(400, f"a request takes exactly one video_url part, got {len(videos)}", "messages")
    if not turns or turns[-1][0] != "user":
        raise ApiError(400, "the last message must be the user's question", "messages")
    history, pending = [], None
    for role, text in turns[:-1]:
        if role == "user":
            pending = text if pending is None else pending + "\n" + text
        elif pending is not None:
            history.append((pending.strip(), text.strip()))
            pending = None
    question = (turns[-1][1] if pending is None else pending + "\n" + turns[-1][1]).strip()
    if not question:
        raise ApiError(400, "the question is empty", "messages")
    part = videos[0]
    inner = part["video_url"] if isinstance(part["video_url"], dict) else {"url": part["video_url"]}
    # Sampling: on the part (VILA's convention), then mm_processor_kwargs / extra_body (vLLM's),
    # then the model's defaults.
    mm = body.get("mm_processor_kwargs") or {}
    if not isinstance(mm, dict):
        raise ApiError(400, "mm_processor_kwargs must be an object", "mm_processor_kwargs")

    def pick(name):
        for source in (inner, part, mm, body):
            if source.get(name) is not None:
                return source[name]
        return None

    cfg = pipe.config
    num_frames = pick("num_frames")
    if num_frames is not None:
        num_frames = _int_field(num_frames, "num_frames", 1, None)
        if num_frames > settings.max_frames:
            raise ApiError(
                400, f"num_frames {num_frames} exceeds this server's limit of {settings.max_frames}", "num_frames"
            )
    budget = pick("max_visual_tokens")
    fps = pick("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 240):
        raise ApiError(400, f"fps must be a number in (0, 240], got {fps!r}", "fps")
    s = pick("temporal_sample")
    if s is not None:
        s = _int_field(s, "temporal_sample", 1, MAX_FRAMES)
    if budget is not None:
        from ..token_budget import plan_budget

        budget = _int_field(budget, "max_visual_tokens", 1, None)
        try:  # the server's frame limit caps what a budget may choose
            plan = plan_budget(cfg, budget, num_frames=num_frames, temporal_sample=s, video_frames=settings.max_frames)
        except StormError as e:
            raise ApiError(400, first_line(e), "max_visual_tokens") from None
        num_frames, s = plan.num_frames, plan.temporal_sample
    num_frames = cfg.num_frames if num_frames is None else num_frames
    temporal_sample = cfg.temporal_sample if s is None else s
    options = body.get("options")
    if options is not None:
        if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
            raise ApiError(400, "options must be a list of non-empty strings", "options")
        if not 1 <= len(options) <= 26:
            raise ApiError(400, f"options takes 1 to 26 entries, got {len(options)}", "options")
    max_tokens = body.get("max_completion_tokens")
    max_tokens = body.get("max_tokens") if max_tokens is None else max_tokens
    # Left out, a reply may be as long as the default, within what the server allows.
    max_tokens = min(settings.default_max_tokens, settings.max_tokens) if max_tokens is None else max_tokens
    max_tokens = _int_field(max_tokens, "max_tokens", 1, settings.max_tokens)
    stream_options = body.get("stream_options") or {}
    video_uuid = inner.get("uuid") or part.get("uuid")
    if video_uuid is not None and (not isinstance(video_uuid, str) or not 0 < len(video_uuid) <= 256):
        raise ApiError(400, "uuid must be a string of 1 to 256 characters", "uuid")
    token = cfg.video_token
    texts = [question, *(t for pair in history for t in pair), *(options or [])]
    if any(token in t for t in texts):
        raise ApiError(400, f"the text may not contain the model's video placeholder {token!r}", "messages")
    try:
        check_text(*texts)
    except StormError as e:
        raise ApiError(400, first_line(e), "messages") from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", "stream")
    return ChatRequest(
        url=inner.get("url"),
        video_uuid=video_uuid,
        question=question,
        history=tuple(history),
        options=options,
        num_frames=num_frames,
        fps=None if fps is None else float(fps),
        temporal_sample=temporal_sample,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
    )


# -- the app --------------------------------------------------------------------------------------
class Guard:
    """Refuses a `/v1` request without the API key (401) and a body whose declared length passes
    the limit (413) before anything reads it. Plain ASGI rather than `@app.middleware("http")`:
    Starlette's BaseHTTPMiddleware relays every request and response through an extra task and
    memory streams, which cost a follow-up question a third of its server time."""

    def __init__(self, app, *, api_key: str | None, max_body: int, max_upload_mb: float):
        self.app, self.api_key, self.max_body, self.max_upload_mb = app, api_key, max_body, max_upload_mb

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])  # lower-case byte names, as ASGI gives them
            refusal = None
            if self.api_key is not None and scope["path"].startswith("/v1"):
                given = headers.get(b"authorization", b"")
                if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                    refusal = error_response(401, "missing or wrong API key: send Authorization: Bearer <key>")
            length = headers.get(b"content-length", b"")
            if refusal is None and length.isdigit() and int(length) > self.max_body:
                refusal = error_response(413, f"the request body is larger than the server's {self.max_upload_mb:g} MB")
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(pipe: StormPipeline, settings: ServeSettings) -> FastAPI:
    scheduler = Scheduler(pipe, max_batch=settings.max_batch, max_queue=settings.max_queue,
                          cache_videos=max(32, 2 * settings.max_batch))  # fmt: skip
    decoders = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="stormvl-decode")
    max_body = int(settings.max_upload_mb * 2**20)
    settings.media.max_bytes = max_body

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        scheduler.close()
        decoders.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="stormvl", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.scheduler = scheduler
    app.add_middleware(Guard, api_key=settings.api_key, max_body=max_body, max_upload_mb=settings.max_upload_mb)

    @app.exception_handler(Exception)
    async def _bug(request, exc):  # anything unforeseen: logged by uvicorn, a plain 500 to the client
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.exception_handler(StarletteHTTPException)
    async def _routing(request, exc):  # an unknown route or method, in OpenAI's error shape too
        return error_response(exc.status_code, str(exc.detail))

    @app.get("/health")
    def health():
        return {"status": "ok", "in_flight": scheduler.in_flight, **scheduler.stats}

    @app.get("/v1/models")
    def models():
        cfg = pipe.config
        return {"object": "list", "data": [{
            "id": settings.model_name, "object": "model", "created": 0, "owned_by": "stormvl",
            "num_frames": cfg.num_frames, "temporal_pool": cfg.temporal_pool, "spatial_pool": cfg.spatial_pool,
            "temporal_sample": cfg.temporal_sample, "max_frames": settings.max_frames,
        }]}  # fmt: skip

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def read_body(request: Request) -> bytes:
        """The body, refused as soon as it passes the limit (a chunked upload has no length)."""
        parts, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > max_body:
                raise ApiError(413, f"the request body is larger than the server's {settings.max_upload_mb:g} MB")
            parts.append(part)
        return b"".join(parts)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started = time.perf_counter()
        try:
            raw = await read_body(request)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd numbers or nesting
                raise ApiError(400, "the request body is not valid JSON") from None
            req = parse_request(body, settings, pipe)
            media = settings.media.resolve(req.url)
        except ApiError as e:
            return error_response(e.status, e.message, e.param)
        except MediaError as e:
            return error_response(e.status, str(e), "video_url")
        # A client-given uuid names the video's content (vLLM's convention): clients that share a
        # server and its uuids see each other's videos under them.
        sampling = f"{req.num_frames}:{req.fps}:{req.temporal_sample}"
        key = f"{'uuid:' + req.video_uuid if req.video_uuid else media.key}|{sampling}"
        loop = asyncio.get_running_loop()
        job = Job(key, req.question, req.options, req.history, req.max_tokens, req.temporal_sample, loop)
        try:
            scheduler.acquire(job)
        except QueueFull:
            return error_response(429, f"the server is busy ({settings.max_queue} requests in flight); retry later")

        def release():  # the client is done with it (answered, failed, gone): idempotent
            job.cancelled = True
            scheduler.finish(job)

        def decode():  # in a decoder thread: the file is written, read and removed there
            try:
                return pipe.load_clip(media.open(), req.num_frames, fps=req.fps)
            finally:
                media.cleanup()

        try:
            job.video = scheduler.lookup(key)  # held by the job: a later eviction cannot lose it
            if job.video is None:  # decoding runs beside the event loop and the model
                with scheduler.decoding():
                    job.clip = await asyncio.wait_for(loop.run_in_executor(decoders, decode), settings.request_timeout)
            else:
                media.cleanup()
        except MediaError as e:
            release()
            return error_response(e.status, str(e), "video_url")
        except StormError as e:
            release()
            message = first_line(e)
            if media.temporary and media.path is not None:  # the server's own temporary file
                message = message.replace(str(media.path), "the video")
            return error_response(400, message, "video_url")
        except asyncio.TimeoutError:
            release()
            return error_response(504, f"decoding the video took longer than {settings.request_timeout:g} s")
        except BaseException:  # anything else (a bug, a cancelled request): the slot is not lost
            release()
            raise
        scheduler.submit(job)
        deadline = started + settings.request_timeout
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def usage(answer, first_token_at):
            cfg = pipe.config
            done = time.perf_counter()
            return {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
                "visual_tokens": answer.visual_tokens,
                "visual_tokens_before_reduction": answer.num_frames * cfg.grid_size[0] * cfg.grid_size[1],
                "num_frames": answer.num_frames,
                "timestamps": answer.timestamps,
                "temporal_pool": cfg.temporal_pool,
                "spatial_pool": cfg.spatial_pool,
                "temporal_sample": req.temporal_sample,
                "time_to_first_token_s": round((first_token_at or done) - started, 4),
                "total_time_s": round(done - started, 4),
                "warnings": answer.warnings,
            }

        async def next_event():
            left = deadline - time.perf_counter()
            if left <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(job.events.get(), left)

        def chunk(delta, finish=None, use=None):
            choices = [] if use is not None else [{"index": 0, "delta": delta, "finish_reason": finish}]
            c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": settings.model_name,
                 "choices": choices}  # fmt: skip
            if use is not None:
                c["usage"] = use
            return f"data: {json.dumps(c)}\n\n"

        if not req.stream:
            pieces, first = [], None
            try:
                while True:
                    kind, value = await next_event()
                    if kind == "text":
                        first = first or time.perf_counter()
                        pieces.append(value)
                    elif kind == "error":
                        return error_response(*value)
                    elif kind == "done":
                        answer = value
                        break
            except asyncio.TimeoutError:
                return error_response(504, f"the answer took longer than {settings.request_timeout:g} s")
            finally:
                release()
            finish = "length" if answer.completion_tokens >= req.max_tokens else "stop"
            return {
                "id": rid, "object": "chat.completion", "created": created, "model": settings.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "finish_reason": finish}],
                "usage": usage(answer, first),
            }  # fmt: skip

        async def events():
            first = None
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    try:
                        kind, value = await next_event()
                    except asyncio.TimeoutError:
                        yield f"data: {json.dumps(error_body(504, 'the answer took too long'))}\n\n"
                        break
                    if kind == "text":
                        first = first or time.perf_counter()
                        yield chunk({"content": value})
                    elif kind == "error":
                        yield f"data: {json.dumps(error_body(*value))}\n\n"
                        break
                    elif kind == "done":
                        finish = "length" if value.completion_tokens >= req.max_tokens else "stop"
                        yield chunk({}, finish)
                        if req.include_usage:
                            yield chunk(None, use=usage(value, first))
                        break
                yield "data: [DONE]\n\n"
            finally:  # also when the client goes away mid-stream: its slot and its row are freed
                release()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app
