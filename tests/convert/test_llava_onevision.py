"""`stormvl convert-model --from llava-onevision`: a tiny random LLaVA-OneVision, built here from
transformers configs and saved as a real folder is, converts into a STORM folder that answers
exactly as the source does; then STORM's reductions apply to it and its temporal encoder trains."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import stormvl
from stormvl.cli import main
from stormvl.models.storm import StormForConditionalGeneration

transformers = pytest.importorskip("transformers")
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration  # noqa: E402

IMAGE, PATCH = 30, 6  # a 5x5 patch grid: bilinear pooling to ceil(5/2) = 3 makes 3x3 per frame
POOLED = math.ceil(IMAGE // PATCH / 2) ** 2
QUESTION = "what happens in the video ?"
# A template of LLaVA-OneVision's shape: videos, then text parts, of each message.
TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' ' }}"
    "{% for p in m['content'] if p['type'] == 'video' %}{{ '<video>' }}{% endfor %}"
    "{% for p in m['content'] if p['type'] == 'text' %}{{ '\n' + p['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VIDEO_PROCESSOR = {
    "video_processor_type": "LlavaOnevisionVideoProcessor",
    "size": {"height": IMAGE, "width": IMAGE},
    "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
}


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    words = sorted(set(QUESTION.split()) | {"user", "assistant", "a", "red", "square", "moves", "left", "right"})
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(special + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<image>", "<video>"],
    )  # fmt: skip
    fast.chat_template = TEMPLATE
    return fast


def save_source(path: Path, **config) -> Path:
    """A random LlavaOnevisionForConditionalGeneration with its tokenizer and processor settings,
    saved as transformers saves one (safetensors)."""
    tok = tiny_tokenizer()
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=2, image_size=IMAGE, patch_size=PATCH)  # fmt: skip
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=False,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)  # fmt: skip
    cfg = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="full", **config,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # larger than the 0.02 init, so logits and greedy tokens differ between inputs
        for p in model.parameters():
            p.mul_(5.0 if p.dim() > 1 else 1.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_PROCESSOR))
    proc = {"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": (IMAGE // PATCH) ** 2,
            "vision_feature_select_strategy": "full", "video_token": "<video>", "image_token": "<image>"}  # fmt: skip
    (path / "processor_config.json").write_text(json.dumps(proc))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("llava")
    src = save_source(d / "llava-ov")
    assert main(["convert-model", "--from", "llava-onevision", str(src), str(d / "storm")]) == 0
    return src, d / "storm"


def source_video_tokens(src: Path, frames: int) -> int:
    """What LLaVA-OneVision's own processor inserts for a video of `frames` frames: its
    `replace_video_token`, run on the settings it saves (the processor itself needs torchvision)."""
    from transformers import LlavaOnevisionProcessor

    saved = json.loads((src / "processor_config.json").read_text())
    fake = SimpleNamespace(num_image_tokens=saved["num_image_tokens"], video_token=saved["video_token"])
    video = {"pixel_values_videos": [torch.zeros(frames, 3, IMAGE, IMAGE)]}
    return LlavaOnevisionProcessor.replace_video_token(fake, video, 0).count(saved["video_token"])


def source_prompt_ids(src: Path, frames: int) -> torch.Tensor:
    """The question as LLaVA-OneVision's processor writes it: its chat template over parts, the
    video token repeated as its processor repeats it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    content = [{"type": "video"}, {"type": "text", "text": QUESTION}]
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    text = text.replace("<video>", "<video>" * source_video_tokens(src, frames))
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])  # (1, L)


def test_converted_model_answers_exactly_as_the_source(folders):
    src, dst = folders
    source = LlavaOnevisionForConditionalGeneration.from_pretrained(src, local_files_only=True).eval()
    pipe = stormvl.load(dst)
    frames = 4
    torch.manual_seed(1)
    pixel = torch.randn(1, frames, 3, IMAGE, IMAGE)  # (B, T, 3, S, S)
    ids = source_prompt_ids(src, frames)
    # The same prompt from STORM's processor: same ids, same visual-token count as the source's processor.
    assert pipe.config.tokens_per_video(frames) == source_video_tokens(src, frames) == frames * POOLED + 1
    storm_ids = pipe.processor.prompt_ids(pipe.processor.prompt_text(QUESTION), pipe.config.tokens_per_video(frames))
    assert storm_ids == ids[0].tolist()
    with torch.no_grad():
        want = source(input_ids=ids, pixel_values_videos=pixel).logits
        got = pipe.model(input_ids=ids, pixel_values_videos=pixel).logits
    diff = (want - got).abs().max().item()
    print(f"max abs logit difference {diff:.3g} (logit scale {want.abs().max().item():.3g})")
    assert want.shape == got.shape and diff < 1e-5
    greedy = dict(max_new_tokens=8, do_sample=False)
    src_tokens = source.generate(input_ids=ids, pixel_values_videos=pixel, **greedy)[0, ids.shape[1] :]
    storm_tokens = pipe.model.generate(ids, pixel_values_videos=pixel, **greedy)[0]
    assert len(src_tokens) > 0 and src_tokens.tolist() == storm_tokens.tolist()


def test_pipeline_answers_a_video_file_as_the_source_generates_and_chats_on(folders, tmp_path):
    from stormvl.video import write_video

    src, dst = folders
    source = LlavaOnevisionForConditionalGeneration.from_pretrained(src, local_files_only=True).eval()
    rng = np.random.default_rng(3)
    path = write_video(tmp_path / "clip.mp4", rng.integers(0, 255, (8, 48, 64, 3), dtype=np.uint8), fps=4)
    pipe = stormvl.load(dst)
    ans = pipe.answer(path, QUESTION, num_frames=4, max_new_tokens=8)
    pixel = pipe.processor.preprocess(pipe.load_clip(path, 4).frames)[None]  # what the pipeline read
    ids = source_prompt_ids(src, 4)
    with torch.no_grad():
        out = source.generate(input_ids=ids, pixel_values_videos=pixel, max_new_tokens=8, do_sample=False)
    assert ans.visual_tokens == 4 * POOLED + 1 and ans.prompt_tokens == ids.shape[1]
    assert ans.completion_tokens > 0 and ans.text == pipe.processor.decode(out[0, ids.shape[1] :])
    chat = pipe.chat(path, num_frames=4)  # a follow-up renders the assistant turn as parts too
    chat.ask(QUESTION, max_new_tokens=4)
    assert chat.ask("what moves ?", max_new_tokens=4).visual_tokens == 4 * POOLED + 1


def test_converted_config_and_preprocessing_read_the_source_settings(folders):
    src, dst = folders
    cfg = StormForConditionalGeneration.config_class.from_pretrained(dst)
    assert (cfg.projector_type, cfg.downsample) == ("mlp2x_gelu", 1)
    assert (cfg.spatial_pool, cfg.spatial_pool_mode) == (2, "bilinear")
    assert (cfg.vision_feature_layer, cfg.video_newline, cfg.chat_content) == (-2, True, "parts")
    assert (cfg.temporal_pool, cfg.temporal_sample, cfg.use_temporal_encoder) == (1, 1, True)
    # The tower keeps the layers up to hidden state -2 only (of 3), and no final norm.
    model = StormForConditionalGeneration.from_folder(dst)
    body = getattr(model.vision_tower, "vision_model", model.vision_tower)
    assert len(body.encoder.layers) == 2 and isinstance(body.post_layernorm, torch.nn.Identity)
    # Frames are resized and normalised as the saved video processor says, computed here with PIL.
    from PIL import Image

    from stormvl.processing import preprocess_frames

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 40, 52, 3), dtype=np.uint8)  # noise: the resampling filter shows most
    got = stormvl.load(dst).processor.preprocess(frames)
    resized = np.stack([np.asarray(Image.fromarray(f).resize((IMAGE, IMAGE), Image.BICUBIC)) for f in frames])
    mean, std = (torch.tensor(VIDEO_PROCESSOR[k]).view(1, 3, 1, 1) for k in ("image_mean", "image_std"))
    want = (torch.from_numpy(resized).permute(0, 3, 1, 2) / 255 - mean) / std
    # In pixel levels: PIL rounds to uint8 between its two passes, stormvl resizes in float.
    levels = ((got - want) * std * 255).abs()
    assert got.shape == want.shape and levels.mean() < 1 and levels.max() < 10
    bilinear = preprocess_frames(frames, IMAGE, mean.flatten().tolist(), std.flatten().tolist(), "bilinear")
    assert ((bilinear - want) * std * 255).abs().mean() > 3  # the check tells the filters apart


def test_temporal_sampling_and_pooling_apply_at_once(folders):
    src, dst = folders
    source = LlavaOnevisionForConditionalGeneration.from_pretrained(src, local_files_only=True).eval()
    torch.manual_seed(2)
    pixel = torch.randn(1, 8, 3, IMAGE, IMAGE)
    with torch.no_grad():
        per_frame = source.model.get_video_features(pixel).pooler_output[0, :-1].reshape(8, POOLED, -1)
        # Sampling 2 reads half the frames' tokens: exactly the source on frames 0, 2, 4, 6.
        sampled = StormForConditionalGeneration.from_folder(dst, temporal_sample=2)
        assert sampled.config.tokens_per_video(8) == 4 * POOLED + 1
        feats = sampled.get_video_features(pixel)[0]
        want = source.model.get_video_features(pixel[:, ::2]).pooler_output[0]
        # Float32 rounding, scaled to the features (up to ~50 here): stormvl computes the tower's
        # tanh-GELU in other steps than PyTorch's kernel (`vision.TanhGELU`), equal up to rounding.
        tol = 1e-6 * want.abs().max()
        assert feats.shape == want.shape and torch.allclose(feats, want, rtol=0, atol=tol)
        # Pooling 2 and sampling 2 together: 8 -> 4 -> 2 frames, each the mean of two encoded frames.
        both = StormForConditionalGeneration.from_folder(dst, temporal_pool=2, temporal_sample=2)
        assert both.config.tokens_per_video(8) == 2 * POOLED + 1
        feats = both.get_video_features(pixel)[0]
        pooled = per_frame.reshape(4, 2, POOLED, -1).mean(1)[::2].reshape(-1, per_frame.shape[-1])
        assert feats.shape == (2 * POOLED + 1, per_frame.shape[-1])
        assert torch.allclose(feats[:-1], pooled, rtol=0, atol=tol) and torch.equal(feats[-1], both.video_newline)
    # The processor sizes the prompt for the same count, and the model accepts it.
    pipe = stormvl.load(dst)
    pipe.config.with_overrides({"temporal_pool": 2})
    batch = pipe.processor([pixel[0]], [pipe.processor.prompt_text(QUESTION)], temporal_sample=2)
    assert (batch["input_ids"] == pipe.config.video_token_id).sum() == 2 * POOLED + 1
    with torch.no_grad():
        assert pipe.model(**batch).logits.shape[1] == batch["input_ids"].shape[1]
    # The plan printout counts the newline too.
    from stormvl.token_budget import plan_budget, reduction_steps

    assert reduction_steps(pipe.config, 8, 2)[-1] == ("newline token after the frames", 2 * POOLED + 1)
    assert plan_budget(pipe.config, 2 * POOLED + 1, temporal_sample=2).num_frames == 8


@pytest.mark.slow
def test_temporal_encoder_stage_trains_the_converted_model(folders, tmp_path):
    from stormvl.data.synthetic import generate_split
    from stormvl.train.config import load_train_config
    from stormvl.train.trainer import Trainer

    _, dst = folders
    generate_split(tmp_path / "synth", 4, frames=8, seed=3)
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "data": {"train": [str(tmp_path / "synth" / "annotations.jsonl")], "num_frames": 4},
        "model": {"init": "pretrained", "path": str(dst)},
        "stages": [{"name": "storm", "train": "temporal_encoder", "steps": 2, "lr": 1e-2}],
        "batch_size": 2,
        "warmup_steps": 0,
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    t = Trainer(load_train_config(tmp_path / "cfg.json"), progress=False)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    final = t.run()
    after = t.model.state_dict()
    assert {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])} == {"temporal_encoder"}
    assert stormvl.load(final).config.video_newline


def _bad_cases(tmp: Path):
    (tmp / "a_file").write_text("keep\n")
    (tmp / "other").mkdir()
    (tmp / "other" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (tmp / "pickled").mkdir()
    (tmp / "pickled" / "config.json").write_text(json.dumps({"model_type": "llava_onevision"}))
    (tmp / "pickled" / "pytorch_model.bin").write_bytes(b"not loaded")
    (tmp / "full").mkdir()
    (tmp / "full" / "keep.txt").write_text("keep\n")
    return [
        ("SRC missing", [str(tmp / "none"), str(tmp / "out1")], "no such folder"),
        ("SRC a file", [str(tmp / "a_file"), str(tmp / "out2")], "is a file"),
        ("SRC not LLaVA-OneVision", [str(tmp / "other"), str(tmp / "out3")], "model_type is 'llava'"),
        ("SRC pickled weights", [str(tmp / "pickled"), str(tmp / "out4")], "pickled weights"),
        ("DST not empty", [str(tmp / "{src}"), str(tmp / "full")], "already exists and is not empty"),
        ("DST a file", [str(tmp / "{src}"), str(tmp / "a_file")], "already exists"),
    ]


def test_bad_inputs_are_one_line_errors_and_change_nothing(folders, tmp_path, capsys):
    src, _ = folders
    for case, (s, d), message in _bad_cases(tmp_path):
        s = s.replace(str(tmp_path / "{src}"), str(src))
        assert main(["convert-model", "--from", "llava-onevision", s, d]) == 2, case
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("stormvl: error: ") and message in err[0], (case, err)
    assert (tmp_path / "a_file").read_text() == "keep\n"
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial folder left behind
    assert main(["convert-model", "--from", "vila", str(src), str(tmp_path / "x")]) == 2


def test_dst_is_written_whole_or_not_at_all(folders, tmp_path, monkeypatch):
    src, _ = folders
    from stormvl.processing import StormProcessor

    def fail(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StormProcessor, "save_pretrained", fail)
    assert main(["convert-model", "--from", "llava-onevision", str(src), str(tmp_path / "out")]) == 2
    assert list(tmp_path.iterdir()) == []
    # An empty DST folder is fine (and is replaced by the converted one).
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()
    assert main(["convert-model", "--from", "llava-onevision", str(src), str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "model.safetensors").is_file()
