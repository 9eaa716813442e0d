"""Load on `stormvl serve` (the embedded model, 127.0.0.1): 1, 4 and 16 concurrent clients, each
sending a fixed number of streamed requests about distinct synthetic clips (base64 mp4, so every
request decodes and encodes its own video), then a conversation run (first question against a
follow-up about the same video) and a mixed run where a quarter of the requests are bad.

    python benchmarks/serve_load.py [--requests 20] [--clients 1 4 16] [--rounds 5]
                                    [--model DIR] [--max-tokens N] [--uneven SHORT LONG]
                                    [--out runs/serve_load]

`--model` serves a saved STORM folder instead of the embedded model; `--max-tokens` caps every
reply (an untrained model's replies run to the cap, so all client counts generate alike).
`--uneven SHORT LONG` adds a run of question pairs asked together, one capped at SHORT tokens and
one at LONG (one batch): how long the short reply waits for the long one.

Reports requests per second (the median of the rounds), p50/p95/p99 latency and time to first
token over all rounds, errors, and the server's peak memory (VmHWM). Bounded: it stops by itself
once every client has sent its requests.
"""

import argparse
import base64
import json
import random
import statistics
import threading
import time
from pathlib import Path

from stormvl.testing import start_server

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What happens in the video?", "Which direction does the red square move?"]
MODEL = {"name": "stormvl-default", "max_tokens": None}  # what every request sends, set by main()


def make_clips(out: Path, n: int, frames: int = 16, seed: int = 0) -> list[Path]:
    """n distinct synthetic clips (seeds seed .. seed + n - 1): distinct content, so the server's
    cache of encoded videos never answers for a clip it has not seen."""
    from stormvl.data.synthetic import TASKS, make_sample
    from stormvl.video import write_video

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = out / f"clip{i:04d}.mp4"
        if not p.exists():
            rng = random.Random(seed + i)
            sample, *_ = make_sample(rng, TASKS[i % len(TASKS)], frames)
            write_video(p, sample, fps=8)
        paths.append(p)
    return paths


def data_url(path: Path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def messages(url: str, question: str, **part):
    return [{"role": "user", "content": [{"type": "text", "text": question},
                                        {"type": "video_url", "video_url": {"url": url}, **part}]}]  # fmt: skip


def one_request(client, msgs, **extra):
    """(status, seconds, seconds to first token); status 200 or the error's HTTP status. A plain
    httpx client parsing the SSE stream: on 2 cores shared with the server, the openai client's
    per-chunk parsing would be measured as server time (the tests use the openai client)."""
    import httpx

    body = {"model": MODEL["name"], "messages": msgs, "stream": True, **extra}
    if MODEL["max_tokens"]:
        body["max_tokens"] = MODEL["max_tokens"]
    t0 = time.perf_counter()
    first = None
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, time.perf_counter() - t0, None
            for line in r.iter_lines():
                if (
                    first is None
                    and line.startswith("data: {")
                    and '"content": "' in line
                    and '"content": ""' not in line
                ):
                    first = time.perf_counter()
    except httpx.HTTPError:
        return -1, time.perf_counter() - t0, None
    t1 = time.perf_counter()
    return 200, t1 - t0, (first or t1) - t0


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def load_run(url, clips, clients, per_client, bad_fraction=0.0, allowed=None, seed=0):
    import httpx

    results = []
    lock = threading.Lock()
    rng = random.Random(seed)
    plan = []  # (client, kind, clip) fixed before the run, so runs are repeatable
    for c in range(clients):
        for r in range(per_client):
            kind = "good"
            if rng.random() < bad_fraction:
                kind = rng.choice(["truncated", "forbidden", "too_many_frames"])
            plan.append((c, kind, clips[(c * per_client + r) % len(clips)]))

    # Each client's httpx client is made before the clock starts: making one loads a TLS context
    # (25-100 ms here, and the threads make theirs one after another), which is neither a request
    # nor the server's work.
    sessions = [httpx.Client(base_url=url, timeout=300) for _ in range(clients)]

    def worker(c):
        client = sessions[c]
        for cc, kind, clip in plan:
            if cc != c:
                continue
            q = QUESTIONS[hash(clip.name) % len(QUESTIONS)]
            if kind == "good":
                msgs, extra = messages(data_url(clip), q), {}
            elif kind == "truncated":
                data = clip.read_bytes()
                msgs, extra = messages("data:video/mp4;base64," + base64.b64encode(data[: len(data) // 3]).decode(),
                                       q), {}  # fmt: skip
            elif kind == "forbidden":
                msgs, extra = messages(str(Path(allowed) / ".." / "secret.mp4"), q), {}
            else:
                msgs, extra = messages(data_url(clip), q, num_frames=100000), {}
            status, secs, ttft = one_request(client, msgs, **extra)
            with lock:
                results.append({"kind": kind, "status": status, "seconds": secs, "ttft": ttft})

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for client in sessions:
        client.close()
    return results, wall


def summarize(results, wall):
    good = [r for r in results if r["kind"] == "good" and r["status"] == 200]
    expected = {"truncated": 400, "forbidden": 403, "too_many_frames": 400}
    errors = sum(1 for r in results if r["kind"] == "good" and r["status"] != 200)
    wrong_4xx = sum(1 for r in results if r["kind"] != "good" and r["status"] != expected[r["kind"]])
    lat = [r["seconds"] for r in good] or [float("nan")]
    ttft = [r["ttft"] for r in good] or [float("nan")]
    return {
        "requests": len(results),
        "rps": len(results) / wall,
        "p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
        "ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95), "ttft_p99": pct(ttft, 99),
        "errors": errors,
        "bad": sum(1 for r in results if r["kind"] != "good"),
        "bad_with_wrong_status": wrong_4xx,
    }  # fmt: skip


def conversation_run(url, clips, frames):
    """First question about a fresh video against a follow-up in the same conversation (medians)."""
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    firsts, follows = [], []
    for clip in clips:
        msgs = messages(data_url(clip), QUESTIONS[0], num_frames=frames)
        t = time.perf_counter()
        cap = {"max_tokens": MODEL["max_tokens"]} if MODEL["max_tokens"] else {}
        r = client.chat.completions.create(model=MODEL["name"], messages=msgs, **cap)
        firsts.append(time.perf_counter() - t)
        msgs += [{"role": "assistant", "content": r.choices[0].message.content},
                 {"role": "user", "content": QUESTIONS[1]}]  # fmt: skip
        t = time.perf_counter()
        client.chat.completions.create(model=MODEL["name"], messages=msgs, **cap)
        follows.append(time.perf_counter() - t)
    return statistics.median(firsts), statistics.median(follows)


def uneven_run(url, clips, short, long_):
    """Pairs of questions sent together, capped at `short` and `long_` tokens, answered without
    streaming: each cap's median seconds and completion tokens, the pairs, and the LLM batches
    they took (one a pair when they were answered together)."""
    import httpx

    times = {short: [], long_: []}
    tokens, failed = {}, []
    # One client each, made beforehand: making an httpx client (its TLS context) takes longer
    # than the embedded model's answer.
    clients = {cap: httpx.Client(base_url=url, timeout=600) for cap in times}

    def ask(clip, cap):
        body = {"model": MODEL["name"], "messages": messages(data_url(clip), QUESTIONS[0]), "max_tokens": cap}
        t = time.perf_counter()
        r = clients[cap].post("/v1/chat/completions", json=body)
        if r.status_code != 200:
            failed.append(f"{r.status_code} {r.text[:200]}")
            return
        times[cap].append(time.perf_counter() - t)
        tokens[cap] = r.json()["usage"]["completion_tokens"]

    before = httpx.get(url + "/health", timeout=10).json()["batches"]
    pairs = list(zip(clips[::2], clips[1::2]))
    for a, b in pairs:
        pair = [threading.Thread(target=ask, args=(a, short)), threading.Thread(target=ask, args=(b, long_))]
        for t in pair:
            t.start()
        for t in pair:
            t.join()
    for c in clients.values():
        c.close()
    if failed:
        raise SystemExit(f"uneven run: {len(failed)} request(s) failed, the first: {failed[0]}")
    batches = httpx.get(url + "/health", timeout=10).json()["batches"] - before
    medians = {cap: (statistics.median(v), tokens[cap]) for cap, v in times.items()}
    return {"medians": medians, "pairs": len(pairs), "batches": batches}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=5, help="times the 1/4/16-client runs go round")
    ap.add_argument("--model", help="a saved STORM model folder (default: the embedded model)")
    ap.add_argument("--max-tokens", type=int, help="cap on every reply's tokens (default: the server's)")
    ap.add_argument("--uneven", type=int, nargs=2, metavar=("SHORT", "LONG"),
                    help="also ask pairs of questions together, capped at SHORT and LONG tokens")  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "runs" / "serve_load"))
    a = ap.parse_args()
    if a.max_tokens is not None and a.max_tokens < 1:
        ap.error("--max-tokens must be at least 1")
    if a.uneven and not 1 <= a.uneven[0] < a.uneven[1]:
        ap.error("--uneven takes SHORT LONG with 1 <= SHORT < LONG")
    MODEL["max_tokens"] = a.max_tokens
    import httpx

    out = Path(a.out)
    total = a.requests * (sum(a.clients) * a.rounds + 4) + 20
    clips = make_clips(out / "clips", total)
    allowed = out / "allowed"
    allowed.mkdir(parents=True, exist_ok=True)
    (out / "secret.mp4").write_bytes(clips[0].read_bytes())
    model = ["--model", a.model, "--served-model-name", "bench"] if a.model else []
    if a.max_tokens or a.uneven:  # the server's own limit must allow them
        model += ["--max-tokens", str(max(a.max_tokens or 0, *(a.uneven or ()), 512))]
    proc, url = start_server("--allowed-local-media-path", allowed, "--max-frames", "64", "--max-queue", "256", *model)
    MODEL["name"] = "bench" if a.model else "stormvl-default"
    rows, offset = {}, 0
    try:
        # Warm-up (spare clips): the first call pays for lazy initialisation, and the first batches
        # of each size for their own first runs; neither belongs to the measured rows.
        load_run(url, clips[-1:], 1, 1)
        load_run(url, clips[-9:-1], 4, 2)
        # The client counts take turns, round after round: on a shared machine whose speed drifts
        # by tens of percent over a minute, each count's median round is compared, not one run each.
        rounds = {n: [] for n in a.clients}
        batched = {n: [0, 0] for n in a.clients}  # questions answered, batches they went in
        for r in range(a.rounds):
            for n in a.clients:
                used = clips[offset : offset + n * a.requests]
                offset += n * a.requests
                before = httpx.get(url + "/health", timeout=10).json()
                rounds[n].append(load_run(url, used, n, a.requests))
                after = httpx.get(url + "/health", timeout=10).json()
                batched[n][0] += after["answered"] - before["answered"]
                batched[n][1] += after["batches"] - before["batches"]
                print(f"round {r + 1}, {n} client{'s' * (n != 1)}: {rounds[n][-1][1]:.2f} s", flush=True)
        for n, runs in rounds.items():
            row = summarize([x for results, _ in runs for x in results], sum(wall for _, wall in runs))
            row["rps"] = statistics.median(len(results) / wall for results, wall in runs)
            row["rps_rounds"] = [len(results) / wall for results, wall in runs]
            row["mean_batch"] = batched[n][0] / max(1, batched[n][1])
            rows[f"{n} client{'s' * (n != 1)}"] = row
        used = clips[offset : offset + 4 * a.requests]
        offset += 4 * a.requests
        results, wall = load_run(url, used, 4, a.requests, bad_fraction=0.25, allowed=allowed, seed=1)
        rows["4 clients, 25% bad"] = summarize(results, wall)
        health = httpx.get(url + "/health", timeout=10)
        alive = health.status_code == 200 and health.json()["in_flight"] == 0
        conversations = {}
        for frames in (16, 64):  # the model's default, and a longer read of 64-frame clips
            long_clips = make_clips(out / f"clips{frames}", 10, frames=frames, seed=10**6)
            conversations[frames] = conversation_run(url, long_clips, frames)
        uneven = uneven_run(url, make_clips(out / "clips_uneven", 10, seed=2 * 10**6), *a.uneven) if a.uneven else {}
        stats = httpx.get(url + "/health", timeout=10).json()
        peak = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    head = "| run | requests | req/s | p50 s | p95 s | p99 s | TTFT p50 s | TTFT p95 s | TTFT p99 s | errors |"
    lines = [head + " bad (wrong status) |", "|---" * 11 + "|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['requests']} | {r['rps']:.2f} | {r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} "
            f"| {r['ttft_p50']:.3f} | {r['ttft_p95']:.3f} | {r['ttft_p99']:.3f} | {r['errors']} "
            f"| {r['bad']} ({r['bad_with_wrong_status']}) |"
        )
    base = rows.get("1 client")
    # Each round's 4-client run against the 1-client run just before it: the machine's drift between
    # rounds cancels, which the ratio of the two medians does not do.
    ratios = (
        [f / o for o, f in zip(base["rps_rounds"], rows["4 clients"]["rps_rounds"])]
        if base and "4 clients" in rows
        else []
    )
    summary = [
        "",
        f"- throughput at 4 clients / 1 client: {rows['4 clients']['rps'] / base['rps']:.2f}x (median rounds); "
        f"round by round {', '.join(f'{x:.2f}x' for x in ratios)} (median {statistics.median(ratios):.2f}x)"
        if ratios
        else "",
        *(
            f"- req/s per round, {name}: "
            + ", ".join(f"{x:.2f}" for x in r["rps_rounds"])
            + f"; {r['mean_batch']:.2f} questions per batch"
            for name, r in rows.items()
            if "rps_rounds" in r
        ),
        *(
            f"- conversation on {n}-frame clips: first question {f:.3f} s, follow-up {u:.3f} s (medians of 10): "
            f"{100 * u / f:.0f}% of the first"
            for n, (f, u) in conversations.items()
        ),
        *(
            f"- asked together: a reply of {tokens} token{'s' * (tokens != 1)} (cap {cap}) took {secs:.3f} s "
            f"(median of {uneven['pairs']} pairs, answered in {uneven['batches']} batches)"
            for cap, (secs, tokens) in (uneven["medians"].items() if uneven else ())
        ),
        f"- server peak memory (VmHWM): {peak:.0f} MiB; largest batch {stats['largest_batch']}, "
        f"{stats['batches']} batches for {stats['answered']} answers",
        f"- after the mixed run the server answered /health: {alive}",
    ]
    text = "\n".join(lines + [s for s in summary if s])
    out.mkdir(parents=True, exist_ok=True)
    results = {"rows": rows, "ratios_4_to_1": ratios, "conversations": conversations, "peak_mib": peak, "stats": stats,
               "alive": alive, "uneven": uneven}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
