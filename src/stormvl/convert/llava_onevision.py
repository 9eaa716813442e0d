"""LLaVA-OneVision -> STORM: a transformers `LlavaOnevisionForConditionalGeneration` folder becomes a
STORM model folder with the same weights and a fresh temporal encoder after the projector.

LLaVA-OneVision's video path, and where each part lands in STORM:
  SigLIP hidden state `vision_feature_layer`      -> vision tower, cut at that layer (`vision_feature_layer`)
  multi_modal_projector: Linear, GELU, Linear     -> projector `mlp2x_gelu` (no pixel shuffle: downsample 1)
  (new) temporal encoder at the LLM width         -> the identity until trained (out_proj starts at zero)
  per-frame 2x2 bilinear pooling (apply_pooling)  -> spatial_pool 2, spatial_pool_mode bilinear
  image_newline, once after all frames            -> video_newline (counted by tokens_per_video)
  Qwen2 LLM, tokenizer and chat template          -> language_model, the saved tokenizer
  video processor: size, resample, mean, std      -> image_size, resample, image_mean, image_std
Temporal pooling and sampling start at 1, so the converted model answers exactly as the source
does; both then apply without training.

The folder checks use only the standard library, so a wrong argument fails before torch loads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import InputError, MissingFileError, ModelFolderError, first_line

MODEL_TYPE = "llava_onevision"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes, as saved processor configs write them
PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")  # the video one first

# Source parameter names -> STORM's, first matching prefix wins. transformers >= 4.52 keeps the
# parts under `model.`; older releases kept them at the top with the LLM as a whole CausalLM.
RENAMES = (
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.linear_1.", "projector.net.0."),
    ("model.multi_modal_projector.linear_2.", "projector.net.2."),
    ("model.image_newline", "video_newline"),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("vision_tower.", "vision_tower."),
    ("multi_modal_projector.linear_1.", "projector.net.0."),
    ("multi_modal_projector.linear_2.", "projector.net.2."),
    ("image_newline", "video_newline"),
    ("language_model.", "language_model."),
)


def storm_name(name: str) -> str | None:
    for old, new in RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_source(src) -> dict:
    """SRC's config.json if SRC is a LLaVA-OneVision folder with safetensors weights."""
    src = Path(src)
    if not src.exists():
        raise MissingFileError(f"{src}: no such folder")
    if not src.is_dir():
        raise InputError(f"{src}: is a file, not a model folder")
    if not (src / "config.json").is_file():
        raise ModelFolderError(f"{src}: not a LLaVA-OneVision model folder (no config.json)")
    cfg = _read_json(src / "config.json")
    if cfg.get("model_type") != MODEL_TYPE:
        raise ModelFolderError(
            f"{src}: not a LLaVA-OneVision model folder (config.json model_type is {cfg.get('model_type')!r}, "
            f"not {MODEL_TYPE!r})"
        )
    if not any((src / w).is_file() for w in WEIGHTS):
        pickled = sorted(p.name for p in src.glob("*.bin"))
        why = f"only pickled weights {pickled}, which stormvl does not load" if pickled else "no model.safetensors"
        raise ModelFolderError(f"{src}: {why}")
    if isinstance(cfg.get("vision_feature_layer"), list):
        raise ModelFolderError(
            f"{src}: concatenated vision feature layers {cfg['vision_feature_layer']} are not supported"
        )
    for key, want in (("projector_hidden_act", "gelu"), ("multimodal_projector_bias", True)):
        if cfg.get(key, want) != want:
            raise ModelFolderError(f"{src}: {key} {cfg[key]!r} is not supported (only {want!r})")
    return cfg


def check_destination(dst) -> None:
    """DST must be new (or an empty folder) in a writable folder: nothing is ever overwritten."""
    dst = Path(dst)
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise InputError(f"{dst} already exists and is not empty; give a new folder (nothing was changed)")
    parent = dst.absolute().parent
    if not parent.is_dir():
        raise InputError(f"{dst}: its parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{dst}: cannot write in {parent}")


def video_processor_settings(src, image_size: int) -> dict:
    """The StormConfig preprocessing fields from SRC's saved video processor (or, in folders saved
    before transformers had video processors, the image processor whose settings it inherits)."""
    src = Path(src)
    path = next((src / f for f in PROCESSOR_FILES if (src / f).is_file()), None)
    if path is None:
        raise ModelFolderError(f"{src}: no processor settings ({' or '.join(PROCESSOR_FILES)})")
    p = _read_json(path)
    size = p.get("size") or {}
    side = {size.get("height"), size.get("width")} if "height" in size else {size.get("shortest_edge")}
    if side != {image_size}:
        raise ModelFolderError(f"{path}: size {size} is not the vision tower's {image_size}x{image_size} input")
    resample = PIL_RESAMPLE.get(p.get("resample", 3))
    if resample is None:
        raise ModelFolderError(f"{path}: resample {p['resample']!r} is not supported (2 bilinear, 3 bicubic)")
    if not p.get("do_rescale", True) or abs(p.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise ModelFolderError(f"{path}: pixels must be rescaled by 1/255")
    if not p.get("do_normalize", True):
        raise ModelFolderError(f"{path}: do_normalize false is not supported")
    return {"resample": resample, "image_mean": list(p["image_mean"]), "image_std": list(p["image_std"])}


def chat_content(tokenizer, video_token: str) -> str:
    """'parts' or 'text': which message form the tokenizer's chat template renders with exactly one
    video placeholder (LLaVA-OneVision's processor template reads parts)."""
    probe = "probe"
    forms = (("parts", [{"type": "video"}, {"type": "text", "text": probe}]), ("text", f"{video_token}\n{probe}"))
    for kind, content in forms:
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # noqa: BLE001 - a template that cannot render this form at all
            continue
        if text.count(video_token) == 1 and probe in text:
            return kind
    raise ModelFolderError(f"its chat template places no {video_token!r} for a video in a user turn")


def load_tokenizer(src, video_token_id: int):
    """SRC's tokenizer with its chat template (the processor's, saved in chat_template.json by older
    releases); returns (tokenizer, video token, chat_content)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{src}: cannot load its tokenizer ({first_line(e)})") from None
    legacy = Path(src) / "chat_template.json"
    if legacy.is_file():
        tok.chat_template = _read_json(legacy).get("chat_template") or tok.chat_template
    if not tok.chat_template:
        raise ModelFolderError(f"{src}: no chat template (chat_template.jinja or chat_template.json)")
    video_token = tok.convert_ids_to_tokens(video_token_id)
    if tok(video_token, add_special_tokens=False)["input_ids"] != [video_token_id]:
        raise ModelFolderError(
            f"{src}: the tokenizer does not read {video_token!r} as the video token {video_token_id}"
        )
    try:
        kind = chat_content(tok, video_token)
    except ModelFolderError as e:
        raise ModelFolderError(f"{src}: {e}") from None
    return tok, video_token, kind


def storm_config(source_config, tokenizer_info, processor: dict, **overrides):
    """The StormConfig of the converted model: LLaVA-OneVision's video path, then STORM's defaults
    for the temporal encoder, reductions off."""
    from ..config import StormConfig

    _, video_token, kind = tokenizer_info
    c = source_config
    fields = dict(
        vision_config=c.vision_config.to_dict(),
        text_config=c.text_config.to_dict(),
        projector_type="mlp2x_gelu",
        downsample=1,
        vision_feature_layer=c.vision_feature_layer,
        vision_feature_select_strategy=c.vision_feature_select_strategy,
        spatial_pool=2,
        spatial_pool_mode="bilinear",
        video_newline=True,
        video_token=video_token,
        video_token_id=c.video_token_id,
        video_position="before",
        chat_content=kind,
        **processor,
    )
    fields.update(overrides)
    return StormConfig(**fields)


def convert(src, dst, **overrides) -> dict:
    """Write the STORM folder DST from the LLaVA-OneVision folder SRC; `overrides` are StormConfig
    fields (the temporal encoder's settings, num_frames). DST appears whole or not at all."""
    src, dst = Path(src), Path(dst)
    check_source(src)
    check_destination(dst)
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    from ..models.storm import StormForConditionalGeneration
    from ..processing import StormProcessor

    try:
        source, info = LlavaOnevisionForConditionalGeneration.from_pretrained(
            src, local_files_only=True, use_safetensors=True, dtype="auto", output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelFolderError(f"{src}: cannot load the model ({first_line(e)})") from None
    absent = sorted(str(k) for k in info.get("missing_keys") or ())
    if absent:  # transformers would have initialised them at random
        raise ModelFolderError(f"{src}: its weights lack {len(absent)} parameters, e.g. {absent[:3]}")
    tokenizer_info = load_tokenizer(src, source.config.video_token_id)
    processor_settings = video_processor_settings(src, source.config.vision_config.image_size)
    config = storm_config(source.config, tokenizer_info, processor_settings, **overrides)
    dtype = next(source.parameters()).dtype
    model = StormForConditionalGeneration(config).to(dtype).eval()

    target = model.state_dict()
    weights, dropped = {}, []
    for name, tensor in source.state_dict().items():
        new = storm_name(name)
        if new in target:
            weights[new] = tensor
        elif new is not None and new.startswith("vision_tower."):
            dropped.append(name)  # layers after vision_feature_layer, the final norm, the pooling head
        else:
            raise ModelFolderError(f"{src}: parameter {name} has no place in the STORM model")
    missing = sorted(k for k in set(target) - set(weights) if not k.startswith("temporal_encoder."))
    if missing:
        raise ModelFolderError(f"{src}: the weights lack {len(missing)} STORM parameters, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            target[name].copy_(tensor)
    del source

    # Written beside DST, then renamed into place: an interrupted run leaves no half-written folder.
    tmp = dst.absolute().parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        StormProcessor(tokenizer_info[0], model.config).save_pretrained(tmp)
        if dst.exists():
            dst.rmdir()  # checked empty above
        os.rename(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "temporal_encoder_parameters": sum(
            p.numel() for n, p in model.named_parameters() if n.startswith("temporal_encoder.")
        ),
        "dropped": len(dropped),
        "tokens_per_video": config.tokens_per_video(),
        "num_frames": config.num_frames,
        "dtype": str(dtype).removeprefix("torch."),
    }
