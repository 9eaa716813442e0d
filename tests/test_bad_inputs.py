"""Every verb meets bad input with one line on stderr, exit status 2, no traceback, and nothing a
user wrote lost. One row per case; the media, model folders, configs and annotation files are
generated damaged on purpose by the fixtures below."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stormvl.cli import main
from stormvl.data.synthetic import generate_split
from stormvl.pipeline import DEFAULT_MODEL
from stormvl.video import write_video

SENTINEL = "results a user wants to keep\n"


def _mdat_span(data: bytes) -> tuple[int, int]:
    i = data.find(b"mdat")
    return i + 4, i - 4 + int.from_bytes(data[i - 4 : i], "big")


@pytest.fixture(scope="module")
def w(tmp_path_factory, audio_only_file_module):
    """A workspace of good and damaged inputs; `w / name` is a path in it."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    good = write_video(d / "good.mp4", rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8), fps=8)
    data = Path(good).read_bytes()
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("not a video\n" * 50)
    (d / "noise.mp4").write_bytes(rng.integers(0, 255, 20000, dtype=np.uint8).tobytes())
    for pct in (10, 50, 90):  # moov atom at the end: a cut file has no index
        (d / f"cut{pct}.mp4").write_bytes(data[: len(data) * pct // 100])
    a, b = _mdat_span(data)
    zero = bytearray(data)
    zero[a:b] = bytes(b - a)  # every video packet unreadable
    (d / "zero_frames.mp4").write_bytes(bytes(zero))
    shutil.copy(audio_only_file_module, d / "audio.m4a")
    _wav(d / "audio.wav")
    shutil.copy(d / "audio.wav", d / "wav_named.mp4")  # the wrong container for its name
    _image(d / "still.png", "png")
    _image(d / "still.jpg", "mjpeg")
    (d / "dir.mp4").mkdir()
    _model_folders(d)
    _annotations(d)
    _train_configs(d)
    _batch_files(d)
    (d / "a_file").write_text(SENTINEL)
    (d / "results").mkdir()
    (d / "results" / "keep.txt").write_text(SENTINEL)
    (d / "bench_out").mkdir()  # where a rerun of bench would move its earlier results, a file
    (d / "bench_out" / "previous").write_text(SENTINEL)
    (d / "own_run").mkdir()  # the user's own log, by the name a train run writes
    (d / "own_run" / "log.jsonl").write_text(SENTINEL)
    (d / "own_results").mkdir()  # the user's own results, by the names an eval run writes
    (d / "own_results" / "summary.json").write_text(SENTINEL)
    (d / "own_split").mkdir()  # the user's own annotations, by the name synth writes
    (d / "own_split" / "annotations.jsonl").write_text(SENTINEL)
    return d


@pytest.fixture(scope="module")
def audio_only_file_module(tmp_path_factory):
    import av

    path = tmp_path_factory.mktemp("audio") / "audio.m4a"
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in [*s.encode(frame), *s.encode()]:
            out.mux(p)
    return path


def _wav(path):
    import wave

    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes(bytes(1600))


def _image(path, codec):
    import av

    with av.open(str(path), "w", format="image2") as out:
        s = out.add_stream(codec, rate=1)
        s.width, s.height = 32, 32
        s.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), format="rgb24")
        for p in [*s.encode(frame), *s.encode()]:
            out.mux(p)


def _model_folders(d):
    def copy(name):
        shutil.copytree(DEFAULT_MODEL, d / name)
        return d / name

    (d / "m_empty").mkdir()
    (copy("m_badjson") / "config.json").write_text("{not json")
    cfg = json.loads((DEFAULT_MODEL / "config.json").read_text())
    (copy("m_llama") / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    (copy("m_unknown_key") / "config.json").write_text(json.dumps({**cfg, "temporal_pol": 4}))
    (copy("m_bad_value") / "config.json").write_text(json.dumps({**cfg, "temporal_pool": 0}))
    m = copy("m_pickle")
    (m / "model.safetensors").rename(m / "pytorch_model.bin")
    (copy("m_notok") / "tokenizer_config.json").unlink()
    w = copy("m_truncated") / "model.safetensors"
    w.write_bytes(w.read_bytes()[:5000])
    from safetensors.torch import load_file, save_file

    weights = load_file(DEFAULT_MODEL / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("projector.")},
              copy("m_missing") / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    shaped = {k: (v[:-1] if k == "projector.net.bias" else v) for k, v in weights.items()}
    save_file(shaped, copy("m_shape") / "model.safetensors", metadata={"format": "pt"})


def _annotations(d):
    generate_split(d / "split", 4, frames=16, seed=3)
    rec = json.loads((d / "split" / "annotations.jsonl").read_text().splitlines()[0])
    rec["video"] = str(d / "split" / rec["video"])

    def jl(name, *rows):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    jl("dup_ids.jsonl", rec, rec)
    (d / "not_objects.jsonl").write_text("5\n")
    jl("opts_str.jsonl", {**rec, "options": "left right"})
    jl("ans_bad.jsonl", {**rec, "answer": "Z"})
    jl("ans_int.jsonl", {**rec, "answer": 1})
    jl("q_missing.jsonl", {k: v for k, v in rec.items() if k != "question"})
    jl("many_opts.jsonl", {**rec, "options": [f"o{i}" for i in range(27)], "answer": "A"})
    jl("missing_video.jsonl", {**rec, "video": str(d / "nowhere.mp4")})
    (d / "not_utf8.json").write_bytes(b'[{"question": "caf\xe9"}]')
    (d / "bad.json").write_text("[{")
    (d / "dict.json").write_text('{"version": 1}')
    (d / "ints.json").write_text("[1, 2]")
    (d / "vmme_noid.json").write_text(json.dumps([{"question": "q", "options": ["A. a", "B. b"], "answer": "A"}]))
    (d / "mlvu_badans.json").write_text(
        json.dumps([{"video": "v.mp4", "question": "q", "candidates": ["a", "b"], "answer": "c"}])
    )
    (d / "lvb_range.json").write_text(
        json.dumps([{"video_path": "v.mp4", "question": "q", "option0": "a", "option1": "b", "correct_choice": 5}])
    )
    (d / "mvb_empty").mkdir()
    (d / "vmme_optstr.json").write_text(
        json.dumps([{"videoID": "v", "question": "q", "options": "A. a B. b", "answer": "A"}])
    )
    (d / "mlvu_qint.json").write_text(json.dumps([{"video_name": "v.mp4", "question": 7, "answer": "A"}]))
    (d / "mvb").mkdir()
    mvb = [{"video": 5, "question": "q", "candidates": ["a"], "answer": "a"}]
    (d / "mvb" / "task.json").write_text(json.dumps(mvb))
    jl("task_dict.jsonl", {**rec, "task_type": {"t": 1}})
    (d / "lvb_bool.json").write_text(
        json.dumps([{"video_path": "v.mp4", "question": "q", "option0": "a", "option1": "b", "correct_choice": True}])
    )


def _train_configs(d):
    ann = str(d / "split" / "annotations.jsonl")
    base = {"output_dir": str(d / "train_run"), "data": {"train": [ann], "num_frames": 8}, "stages": [{"steps": 1}]}

    def cfg(name, **over):
        c = json.loads(json.dumps(base))
        for path, value in over.items():
            node, *keys = c, *path.split(".")
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
        (d / name).write_text(json.dumps(c))

    cfg("t_unknown.json", optimiser="adam")
    cfg("t_nested.json", **{"model.tiny.hiden": 8})
    cfg("t_type.json", stages=[{"steps": "ten"}])
    cfg("t_storm_value.json", **{"model.storm.temporal_pool": 0})
    cfg("t_storm_key.json", **{"model.storm.temporal_pol": 2})
    cfg("t_frames_twice.json", **{"model.storm.num_frames": 8})
    cfg("t_parts.json", **{"model.init": "parts", "model.vision_path": str(d / "siglip"), "model.llm_path": "x"})
    cfg("t_pretrained.json", **{"model.init": "pretrained", "model.path": str(d / "m_empty")})
    cfg("t_no_ann.json", **{"data.train": [str(d / "none.jsonl")]})
    cfg("t_bad_ann.json", **{"data.train": [str(d / "ans_bad.jsonl")]})
    cfg("t_no_videos.json", **{"data.train": [str(d / "missing_video.jsonl")]})
    cfg("t_out_file.json", output_dir=str(d / "a_file"))
    cfg("t_out_users.json", output_dir=str(d / "own_run"))  # a good config, but the folder holds a log.jsonl
    cfg("t_strategy.json", strategy="horovod")
    (d / "t_yaml.yaml").write_text("data: [unclosed\n")
    (d / "t_utf8.yaml").write_bytes(b"output_dir: caf\xe9\n")


def _batch_files(d):
    def jsonl(name, *rows):
        (d / name).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

    ok = {"video": "good.mp4", "question": Q}
    jsonl("b_badjson.jsonl", ok, "{not json")
    jsonl("b_noq.jsonl", ok, {"video": "good.mp4"})
    jsonl("b_novideo.jsonl", {"video": "missing.mp4", "question": Q})
    jsonl("b_opts.jsonl", {**ok, "options": "left"})
    jsonl("b_emptyopt.jsonl", {**ok, "options": ["left", " "]})
    jsonl("b_corrupt.jsonl", ok, {"video": "cut50.mp4", "question": Q})
    (d / "b_empty.jsonl").write_text("\n")
    latin1 = json.dumps({**ok, "question": "Où?"}, ensure_ascii=False).encode("latin-1")
    (d / "b_latin1.jsonl").write_bytes(latin1 + b"\n")


Q = "Which direction does the square move?"
ANSWER = [
    # (case, argv after "answer", message)
    ("missing", ["{w}/missing.mp4", Q], "no such file"),
    ("empty", ["{w}/empty.mp4", Q], "empty file"),
    ("directory", ["{w}/dir.mp4", Q], "is a directory"),
    ("text", ["{w}/text.mp4", Q], "not a readable video"),
    ("noise", ["{w}/noise.mp4", Q], "not a readable video"),
    ("cut at 10%", ["{w}/cut10.mp4", Q], "not a readable video"),
    ("cut at 50%", ["{w}/cut50.mp4", Q], "not a readable video"),
    ("cut at 90%", ["{w}/cut90.mp4", Q], "not a readable video"),
    ("no decodable frame", ["{w}/zero_frames.mp4", Q], "no decodable video frames"),
    ("audio-only m4a", ["{w}/audio.m4a", Q], "audio-only"),
    ("audio-only wav", ["{w}/audio.wav", Q], "audio-only"),
    ("wav named .mp4", ["{w}/wav_named.mp4", Q], "audio-only"),
    ("png image", ["{w}/still.png", Q], "still image"),
    ("jpeg image", ["{w}/still.jpg", Q], "still image"),
    ("zero frames", ["{w}/good.mp4", Q, "--frames", "0"], "num_frames"),
    ("negative frames", ["{w}/good.mp4", Q, "--frames", "-3"], "num_frames"),
    ("too many frames", ["{w}/good.mp4", Q, "--frames", "5000"], "num_frames"),
    ("zero stride", ["{w}/good.mp4", Q, "--temporal-sample", "0"], "--temporal-sample must be >= 1"),
    ("negative stride", ["{w}/good.mp4", Q, "--temporal-sample", "-2"], "--temporal-sample must be >= 1"),
    ("model missing", ["{w}/good.mp4", Q, "--model", "{w}/nomodel"], "model folder not found"),
    ("model is a file", ["{w}/good.mp4", Q, "--model", "{w}/a_file"], "is a file"),
    ("model empty", ["{w}/good.mp4", Q, "--model", "{w}/m_empty"], "no config.json"),
    ("model bad json", ["{w}/good.mp4", Q, "--model", "{w}/m_badjson"], "not valid JSON"),
    ("model not storm", ["{w}/good.mp4", Q, "--model", "{w}/m_llama"], "not 'storm'"),
    ("model unknown key", ["{w}/good.mp4", Q, "--model", "{w}/m_unknown_key"], "temporal_pol"),
    ("model bad value", ["{w}/good.mp4", Q, "--model", "{w}/m_bad_value"], "temporal_pool must be"),
    ("model pickled", ["{w}/good.mp4", Q, "--model", "{w}/m_pickle"], "pickled weights"),
    ("model no tokenizer", ["{w}/good.mp4", Q, "--model", "{w}/m_notok"], "no tokenizer"),
    ("model truncated", ["{w}/good.mp4", Q, "--model", "{w}/m_truncated"], "cannot load the model"),
    ("model missing tensors", ["{w}/good.mp4", Q, "--model", "{w}/m_missing"], "do not fit the model (2 missing"),
    ("model wrong shape", ["{w}/good.mp4", Q, "--model", "{w}/m_shape"], "cannot load the model"),
    ("empty question", ["{w}/good.mp4", "  "], "must not be empty"),
    ("empty option", ["{w}/good.mp4", Q, "--options", "left", ""], "must not be empty"),
    ("27 options", ["{w}/good.mp4", Q, "--options", *[f"o{i}" for i in range(27)]], "1 to 26 options"),
    ("question too long", ["{w}/good.mp4", "word " * 5000], "the model reads at most"),
    ("no question", ["{w}/good.mp4"], "needs a VIDEO and a QUESTION"),
    ("batch missing", ["--batch", "{w}/none.jsonl"], "no such file"),
    ("batch and video", ["{w}/good.mp4", "--batch", "{w}/b_noq.jsonl"], "give no video or question"),
    ("batch bad json", ["--batch", "{w}/b_badjson.jsonl"], "b_badjson.jsonl:2: not valid JSON"),
    ("batch no question", ["--batch", "{w}/b_noq.jsonl"], 'b_noq.jsonl:2: each line needs "video" and "question"'),
    ("batch video missing", ["--batch", "{w}/b_novideo.jsonl"], "b_novideo.jsonl:1: no such video 'missing.mp4'"),
    ("batch options a string", ["--batch", "{w}/b_opts.jsonl"], "options must be a list"),
    ("batch empty option", ["--batch", "{w}/b_emptyopt.jsonl"], "must not be empty"),
    ("batch empty file", ["--batch", "{w}/b_empty.jsonl"], "no questions"),
    ("batch file not UTF-8", ["--batch", "{w}/b_latin1.jsonl"], "b_latin1.jsonl:1: not UTF-8"),
    (
        "batch answers over its own questions",
        ["--batch", "{w}/b_empty.jsonl", "--out", "{w}/b_empty.jsonl"],
        "questions file itself",
    ),
    ("batch corrupt video", ["--batch", "{w}/b_corrupt.jsonl"], "cut50.mp4: not a readable video"),
    ("batch zero size", ["--batch", "{w}/b_noq.jsonl", "--batch-size", "0"], "--batch-size"),
    ("batch out is a folder", ["--batch", "{w}/b_corrupt.jsonl", "--out", "{w}/results"], "results"),
]

CHAT = [
    ("missing", ["{w}/missing.mp4"], "no such file"),
    ("corrupt", ["{w}/cut50.mp4"], "not a readable video"),
    ("zero frames", ["{w}/good.mp4", "--frames", "0"], "num_frames"),
    ("model missing", ["{w}/good.mp4", "--model", "{w}/nomodel"], "model folder not found"),
]

SERVE = [
    ("media dir missing", ["--allowed-local-media-path", "{w}/nodir"], "no such directory"),
    ("bad port", ["--port", "70000"], "--port must be in [0, 65535]"),
    ("zero batch", ["--max-batch", "0"], "--max-batch"),
    ("zero upload", ["--max-upload-mb", "0"], "must be positive"),
    ("model missing", ["--model", "{w}/nomodel"], "model folder not found"),
]

SPLIT = ["--benchmark", "synthetic", "--annotations", "{w}/split/annotations.jsonl"]
EVAL = [
    ("unknown benchmark", ["--benchmark", "nope", "--annotations", "{w}/a_file"], "unknown benchmark"),
    ("missing annotations", ["--benchmark", "synthetic", "--annotations", "{w}/none.jsonl"], "no such annotation"),
    ("invalid json", ["--benchmark", "videomme", "--annotations", "{w}/bad.json"], "not valid JSON"),
    ("not utf-8", ["--benchmark", "videomme", "--annotations", "{w}/not_utf8.json"], "not UTF-8"),
    ("not a list", ["--benchmark", "videomme", "--annotations", "{w}/dict.json"], "expected a list"),
    ("records not objects", ["--benchmark", "mlvu", "--annotations", "{w}/ints.json"], "not an object"),
    ("videomme no videoID", ["--benchmark", "videomme", "--annotations", "{w}/vmme_noid.json"], "'videoID'"),
    ("videomme options a string", ["--benchmark", "videomme", "--annotations", "{w}/vmme_optstr.json"], "a list"),
    ("mvbench video a number", ["--benchmark", "mvbench", "--annotations", "{w}/mvb"], "'video' must be a str"),
    ("task type a mapping", ["--benchmark", "synthetic", "--annotations", "{w}/task_dict.jsonl"], "task type"),
    ("lvb choice a bool", ["--benchmark", "longvideobench", "--annotations", "{w}/lvb_bool.json"], "out of range"),
    ("videos a file", [*SPLIT, "--videos", "{w}/a_file"], "--videos must be a folder"),
    ("mlvu question a number", ["--benchmark", "mlvu", "--annotations", "{w}/mlvu_qint.json"], "must be a str"),
    ("mlvu answer", ["--benchmark", "mlvu", "--annotations", "{w}/mlvu_badans.json"], "not one of its candidates"),
    ("lvb choice", ["--benchmark", "longvideobench", "--annotations", "{w}/lvb_range.json"], "out of range"),
    ("mvbench empty folder", ["--benchmark", "mvbench", "--annotations", "{w}/mvb_empty"], "no MVBench"),
    ("duplicate ids", ["--benchmark", "synthetic", "--annotations", "{w}/dup_ids.jsonl"], "duplicate question id"),
    ("a JSONL line not an object", ["--benchmark", "synthetic", "--annotations", "{w}/not_objects.jsonl"],
     "not an object"),
    ("options a string", ["--benchmark", "synthetic", "--annotations", "{w}/opts_str.jsonl"], "options must be"),
    ("answer not a letter", ["--benchmark", "synthetic", "--annotations", "{w}/ans_bad.jsonl"], "option letters"),
    ("answer an int", ["--benchmark", "synthetic", "--annotations", "{w}/ans_int.jsonl"], "option letters"),
    ("no question", ["--benchmark", "synthetic", "--annotations", "{w}/q_missing.jsonl"], "'question'"),
    ("27 options", ["--benchmark", "synthetic", "--annotations", "{w}/many_opts.jsonl"], "at most 26"),
    ("zero frames", [*SPLIT, "--frames", "0"], "--frames"),
    ("zero stride", [*SPLIT, "--temporal-sample", "0"], "--temporal-sample"),
    ("zero limit", [*SPLIT, "--limit", "0"], "--limit"),
    ("model missing", [*SPLIT, "--model", "{w}/x"], "model folder not found"),
    ("no such device", [*SPLIT, "--device", "cuda:7"], "device cuda:7"),
    ("nothing evaluable", ["--benchmark", "synthetic", "--annotations", "{w}/missing_video.jsonl"], "nothing could"),
]  # fmt: skip

SYNTH = [
    ("zero samples", ["--num", "0"], "--num must be >= 1"),
    ("too few frames", ["--frames", "4"], "--frames must be in [8, 4096]"),
    ("unknown task", ["--tasks", "juggling"], "unknown task type"),
]

TRAIN = [
    ("missing config", ["{w}/none.yaml"], "no such config file"),
    ("unparseable yaml", ["{w}/t_yaml.yaml"], "cannot parse"),
    ("config not utf-8", ["{w}/t_utf8.yaml"], "cannot parse"),
    ("unknown key", ["{w}/t_unknown.json"], "unknown key(s) ['optimiser']"),
    ("unknown nested key", ["{w}/t_nested.json"], "unknown key(s) ['hiden']"),
    ("wrong type", ["{w}/t_type.json"], "expected int, got 'ten'"),
    ("bad storm value", ["{w}/t_storm_value.json"], "temporal_pool must be"),
    ("unknown storm key", ["{w}/t_storm_key.json"], "temporal_pol"),
    ("frames twice", ["{w}/t_frames_twice.json"], "data.num_frames"),
    ("parts not local", ["{w}/t_parts.json"], "not a local model folder"),
    ("pretrained not a model", ["{w}/t_pretrained.json"], "no config.json"),
    ("annotations missing", ["{w}/t_no_ann.json"], "no such annotation file"),
    ("annotations malformed", ["{w}/t_bad_ann.json"], "option letters"),
    ("no video exists", ["{w}/t_no_videos.json"], "exist"),
    ("output is a file", ["{w}/t_out_file.json"], "is not a folder"),
    ("output folder holds the user's log", ["{w}/t_out_users.json"], "no train_config.json of a stormvl train run"),
    ("unknown strategy", ["{w}/t_strategy.json"], "strategy must be"),
]

BENCH = [
    ("frames not a number", ["--frames", "x"], "invalid int value"),
    ("unknown setting", ["--settings", "nope"], "unknown setting"),
    ("zero frames", ["--frames", "0"], "--frames values"),
    ("zero repeats", ["--repeats", "0"], "--repeats"),
    ("zero max seconds", ["--max-seconds", "0"], "--max-seconds"),
    ("unknown device", ["--device", "gpu0"], "not a device name"),
    ("no cuda", ["--device", "cuda:7"], "device cuda:7"),
    ("video missing", ["--size", "tiny", "--frames", "4", "--video", "{w}/missing.mp4"], "no such file"),
]

CASES = (
    [("answer", *c) for c in ANSWER]
    + [("chat", *c) for c in CHAT]
    + [("serve", *c) for c in SERVE]
    + [("eval", c[0], [*c[1], "--out", "{w}/results", "--no-progress"], c[2]) for c in EVAL]
    + [("eval", "output folder holds the user's own results", [*SPLIT, "--out", "{w}/own_results"], "no run.json")]
    + [("synth", c[0], [*c[1], "--out", "{w}/results"], c[2]) for c in SYNTH]
    + [("synth", "output is a file", ["--out", "{w}/a_file"], "not a folder")]
    + [("synth", "output folder holds the user's annotations", ["--out", "{w}/own_split"], "no synth.json")]
    + [("train", *c) for c in TRAIN]
    + [("bench", c[0], [*c[1], "--out", "{w}/results"], c[2]) for c in BENCH]
    + [("bench", "output is a file", ["--size", "tiny", "--out", "{w}/a_file"], "not a folder")]
    + [("bench", "output's previous/ is a file", ["--size", "tiny", "--out", "{w}/bench_out"], "previous")]
)


@pytest.mark.parametrize("verb,case,argv,message", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_cli_bad_input(w, capsys, verb, case, argv, message):
    argv = [a.replace("{w}", str(w)) for a in argv]
    assert main([verb, *argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("stormvl: warning:")]
    assert len(lines) == 1 and lines[0].startswith("stormvl: error: "), err
    assert message in lines[0], err
    assert "Traceback" not in err
    # Nothing a user wrote is lost or changed.
    assert (w / "a_file").read_text() == SENTINEL
    assert (w / "results" / "keep.txt").read_text() == SENTINEL
    assert (w / "own_run" / "log.jsonl").read_text() == SENTINEL
    assert (w / "bench_out" / "previous").read_text() == SENTINEL
    assert (w / "own_results" / "summary.json").read_text() == SENTINEL
    assert (w / "own_split" / "annotations.jsonl").read_text() == SENTINEL


def test_python_api_raises_storm_errors(w):
    import stormvl
    from stormvl.errors import ConfigError, InputError, ModelFolderError, VideoError
    from stormvl.evaluation.readers import read_benchmark

    with pytest.raises(ModelFolderError, match="model folder not found"):
        stormvl.load(w / "nomodel")
    with pytest.raises(VideoError, match="audio-only"):
        stormvl.load_video(w / "audio.m4a", 4)
    with pytest.raises(VideoError, match="num_frames"):
        stormvl.load_video(w / "good.mp4", 0)
    with pytest.raises(ConfigError, match="temporal_pol"):
        stormvl.StormConfig(temporal_pol=1)
    with pytest.raises(stormvl.StormError, match="unknown benchmark"):
        read_benchmark("nope", w / "a_file")
    with pytest.raises(InputError, match="not a device name"):
        stormvl.load(device="gpu0")
    pipe = stormvl.load()
    with pytest.raises(InputError, match="1 to 26 options"):
        pipe.answer(w / "good.mp4", Q, [f"o{i}" for i in range(27)])
    for e in (ModelFolderError, VideoError, ConfigError, InputError):
        assert issubclass(e, stormvl.StormError) and issubclass(e, ValueError)


def test_eval_will_not_mix_settings_in_one_folder_and_retries_skipped_questions(w, tmp_path, capsys):
    out = tmp_path / "e"
    ann = str(w / "split" / "annotations.jsonl")
    base = ["eval", "--benchmark", "synthetic", "--annotations", ann, "--out", str(out), "--no-progress"]
    assert main([*base, "--videos", str(tmp_path)]) == 2  # every video missing: nothing evaluated
    assert "nothing could be evaluated" in capsys.readouterr().err
    assert main([*base, "--frames", "8", "--videos", str(w / "split")]) == 2  # another setting, same folder
    assert "holds results of another setting (num_frames, visual_tokens differ)" in capsys.readouterr().err
    assert main([*base, "--videos", str(w / "split")]) == 0  # the skipped questions run again
    assert json.loads((out / "summary.json").read_text())["answered"] == 4
