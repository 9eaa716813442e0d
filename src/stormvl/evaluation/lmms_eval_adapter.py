"""lmms-eval model adapter: evaluate a stormvl model with lmms-eval's task definitions.

    pip install lmms-eval
    python -m lmms_eval --model stormvl \\
        --model_args pretrained=/path/to/storm,num_frames=32,temporal_sample=2 \\
        --tasks videomme,mlvu_dev --batch_size 1 --output_path logs/

lmms-eval 0.7 finds the model through the "lmms_eval.models" entry point that stormvl's
pyproject declares (`lmms_eval_manifest` below). Older releases, which look models up in their
`register_model` registry instead, get it by running this module in place of `lmms_eval`:
`python -m stormvl.evaluation.lmms_eval_adapter --model stormvl ...` (all arguments pass through).
Multi-process runs work as usual: `accelerate launch -m lmms_eval ...`.

`generate_until` answers generation tasks (most multiple-choice video tasks in lmms-eval);
`loglikelihood` scores a continuation with the same option scoring as `choice_mode="likelihood"`.
"""

from __future__ import annotations

import sys

from ..errors import InputError

try:  # lmms-eval is optional; without it the class below still works on plain request tuples
    from lmms_eval.api.model import lmms as _Base
except Exception:
    _Base = object
try:  # the older registry (it imports `evaluate`); lmms-eval 0.7 uses the entry point instead
    from lmms_eval.api.registry import register_model as _register
except Exception:

    def _register(*names):
        return lambda cls: cls


@_register("stormvl")
class StormLMMS(_Base):
    def __init__(
        self,
        pretrained: str | None = None,
        num_frames: int | None = None,
        temporal_sample: int | None = None,
        device: str | None = None,
        batch_size: int = 1,
        **kwargs,
    ):
        if _Base is not object:
            super().__init__()
        from ..pipeline import load

        self.pipe = load(pretrained, device=device)
        self.num_frames = int(num_frames) if num_frames else None
        self.temporal_sample = int(temporal_sample) if temporal_sample else None
        self.batch_size_per_gpu = int(batch_size)
        self.task_dict = getattr(self, "task_dict", {})
        self._last_clip = (None, None)

    def _respond(self, context: str, visuals, gen_kwargs: dict) -> str:
        videos = [v for v in (visuals or []) if isinstance(v, str)]
        if not videos:
            return ""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        ans = self.pipe.answer(
            videos[0],
            context,
            num_frames=self.num_frames,
            temporal_sample=self.temporal_sample,
            max_new_tokens=int(gen_kwargs.get("max_new_tokens", 32)),
        )
        text = ans.text
        for stop in until:
            if stop and stop in text:
                text = text.split(stop)[0]
        return text.strip()

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            out.append(self._respond(context, visuals, dict(gen_kwargs or {})))
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """(log-probability of the continuation, whether greedy decoding gives it) per request,
        for lmms-eval's likelihood-scored multiple-choice tasks."""

        out = []
        for req in requests:
            context, continuation, doc_to_visual, doc_id, task, split = req.args
            visuals = [v for v in (doc_to_visual(self.task_dict[task][split][doc_id]) or []) if isinstance(v, str)]
            if not visuals:
                raise InputError(f"{task} doc {doc_id}: stormvl needs a video for loglikelihood requests")
            key = (visuals[0], self.num_frames or self.pipe.config.num_frames)
            if self._last_clip[0] != key:  # one request per option of the same video: decode once
                self._last_clip = (key, self.pipe.load_clip(*key))
            clip = self._last_clip[1]
            score, greedy = self.pipe.option_scores(
                clip, context, [continuation], self.temporal_sample, return_greedy=True
            )
            out.append((float(score[0]), bool(greedy[0])))
        return out

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("multi-round generation is not supported")


def lmms_eval_manifest():
    """The "lmms_eval.models" entry point's payload (read by lmms-eval's model registry)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="stormvl", simple_class_path=f"{__name__}.StormLMMS")


def main():
    try:
        from lmms_eval.__main__ import cli_evaluate
    except ImportError:
        print("stormvl: error: lmms-eval is not installed (pip install lmms-eval)", file=sys.stderr)
        return 2
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
