"""The `medcot` command: fast help and argument errors, the text once (streamed or in --json), --model latest, two
sections on a terminal, `chat` with the model loaded once (through a pipe and a pseudo-terminal), a missing device
in one line."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from medcot_pipeline.artifact_store import ArtifactRoot
from medcot_pipeline.cli import main
from medcot_pipeline.model_paths import ModelLoadError, model_argument, newest_run

QUESTION = "Which drug treats strep throat?"
HEAVY = ("torch", "transformers", "dagster", "peft", "trl")


def ask(model, *flags):
    return main(["ask", QUESTION, "--model", str(model), "--device", "cpu", "--max-new-tokens", "6",
                 "--continuation-tokens", "0", *flags])


def run_probe(code: str) -> dict:
    """Run `code` in a fresh interpreter (nothing imported yet) and return the JSON it prints last."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_and_argument_errors_return_without_importing_torch(tmp_path):
    probe = f"""
import contextlib, io, json, sys
from medcot_pipeline.artifact_store import ArtifactRoot
from medcot_pipeline.cli import main
results = {{}}
for name, argv in {{
    "help": ["--help"], "ask_help": ["ask", "--help"], "bad_flag": ["ask", "q", "--max-new-tokens", "0"],
    "empty": ["ask", "   "], "missing_model": ["ask", "q", "--model", {str(tmp_path / "nowhere")!r}],
    "no_run_yet": ["ask", "q", "--model", "latest", "--artifacts", {str(tmp_path / "artifacts")!r}],
    "triton": ["ask", "q", "--attention", "grouped_triton", "--model", {str(tmp_path / "nowhere")!r}],
}}.items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    results[name] = {{"code": code, "out": out.getvalue(), "err": err.getvalue()}}
results["heavy"] = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps(results))
"""
    results = run_probe(probe)
    assert results["heavy"] == [], f"imported before the arguments were handled: {results['heavy']}"
    assert results["help"]["code"] == 0 and "ask" in results["help"]["out"]
    assert results["ask_help"]["code"] == 0 and "--model" in results["ask_help"]["out"]
    assert results["bad_flag"]["code"] == 2 and "must be at least 1" in results["bad_flag"]["err"]
    assert results["empty"] == {"code": 2, "out": "", "err": results["empty"]["err"]}
    assert results["empty"]["err"].startswith("medcot: error: the question is empty")
    assert results["missing_model"]["err"] == f"medcot: error: model path {tmp_path / 'nowhere'} does not exist\n"
    assert results["no_run_yet"]["code"] == 2
    assert f"no merged model under {tmp_path / 'artifacts'}/ yet" in results["no_run_yet"]["err"]
    if importlib.util.find_spec("triton") is None:  # the CPU venv: said at once, not as an ImportError after loading
        assert results["triton"]["code"] == 2
        assert results["triton"]["err"].startswith("medcot: error: --attention grouped_triton needs Triton")
    else:  # a CUDA venv: Triton is there, so the path is checked next
        assert results["triton"]["err"] == f"medcot: error: model path {tmp_path / 'nowhere'} does not exist\n"


def test_json_carries_the_text_and_the_stream_prints_it_once(tiny_llama_dir, capsys):
    assert ask(tiny_llama_dir, "--json", "--no-stream") == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert result["question"] == QUESTION and result["model"] == str(tiny_llama_dir)
    # Random weights write no tags: the text is all there is, and the JSON must carry it.
    assert result["text"].strip() and (result["think"], result["response"]) == (None, None)
    assert (result["truncated"], result["compliant"], result["new_tokens"]) == (True, False, 6)
    assert result["seconds"] > 0 and result["tokens_per_second"] > 0
    assert "medcot: warning: the answer was cut off after 6 tokens" in err
    assert result["text"] not in err  # stderr is no terminal here: nothing streamed to it
    assert "medcot: 6 tokens in " in err and " tokens/s" in err  # the closing line

    # Without --json the same text streams to stdout, once, and stderr has only medcot's own lines.
    assert ask(tiny_llama_dir) == 0
    out, err = capsys.readouterr()
    assert out == result["text"] + "\n"
    assert all(line.startswith("medcot: ") for line in err.splitlines()), err
    assert "medcot: loading " in err

    assert ask(tiny_llama_dir, "--no-stream") == 0
    assert capsys.readouterr().out == result["text"].strip() + "\n"


def test_a_bad_model_path_exits_2_with_one_error_line(tmp_path, capsys):
    missing = tmp_path / "no_model"
    assert ask(missing, "--json", "--no-stream") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"medcot: error: model path {missing} does not exist\n"


def test_temperature_without_sample_warns(tiny_llama_dir, capsys):
    assert ask(tiny_llama_dir, "--json", "--no-stream", "--temperature", "0.3") == 0
    assert "medcot: warning: --temperature has no effect without --sample" in capsys.readouterr().err


def fake_run(stage, run_id: str, sub: str = "model", mtime: float | None = None):
    model = stage / run_id / sub
    model.mkdir(parents=True)
    (model / ("adapter_config.json" if sub == "adapter" else "config.json")).write_text("{}")
    if mtime is not None:
        os.utime(model, (mtime, mtime))
    return model


def test_a_stage_directory_resolves_to_its_newest_complete_run(tmp_path):
    root = tmp_path / "artifacts"
    stage = root / "merged_model"
    old = fake_run(stage, "run-old", mtime=1_000)
    new = fake_run(stage, "run-new", mtime=2_000)
    (stage / ".run-newer.staging-123" / "model").mkdir(parents=True)  # a write in progress is never chosen
    assert model_argument("latest", root) == str(new)
    assert model_argument(str(stage), root) == str(new)
    assert model_argument(str(stage / "run-old"), root) == str(old)  # a run directory: the model inside it
    assert model_argument(str(old), root) == str(old)  # a model directory: as given

    # The run the pipeline last handed on (refs/merged_model.json, written by the IO manager) wins over mtime.
    ArtifactRoot(str(root)).write_ref("merged_model", "run-old", str(old))
    assert model_argument("latest", root) == str(old)
    # A root written before object storage was supported names it by "path".
    (root / "refs" / "merged_model.json").write_text(json.dumps({"path": str(old), "run_id": "run-old"}))
    assert model_argument("latest", root) == str(old)
    shutil.rmtree(old)  # a ref to a deleted run falls back to the newest one left
    assert newest_run(stage) == new

    adapters = root / "lora_adapter"
    (adapters / "checkpoints" / "abc").mkdir(parents=True)  # checkpoints are not runs
    adapter = fake_run(adapters, "run-a", sub="adapter")
    assert model_argument(str(adapters), root) == str(adapter)

    (root / "empty_stage" / "run-x").mkdir(parents=True)
    assert model_argument(str(root / "empty_stage"), root) == str(root / "empty_stage")  # not a stage: load says why
    shutil.rmtree(stage)
    stage.mkdir()
    with pytest.raises(ModelLoadError, match="holds no complete run"):
        model_argument("latest", root)


def test_ask_latest_answers_with_the_newest_merged_model(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    from medcot_pipeline.evaluation import generation

    root = tmp_path / "artifacts"
    model = root / "merged_model" / "run-1" / "model"
    shutil.copytree(tiny_llama_dir, model)
    loaded = []
    real_load = generation.load_for_inference
    monkeypatch.setattr(generation, "load_for_inference", lambda *a, **kw: loaded.append(kw) or real_load(*a, **kw))
    assert main(["ask", QUESTION, "--artifacts", str(root), "--device", "cpu", "--max-new-tokens", "2",
                 "--continuation-tokens", "0", "--json", "--attention", "sdpa"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(model)
    assert loaded == [{"device": "cpu", "attention": "sdpa"}]


def test_on_a_terminal_the_reasoning_and_the_answer_are_two_sections():
    """The writer `ask` and `chat` use on a terminal, fed the way a streamer feeds it (tags split across chunks)."""
    import io

    from medcot_pipeline.presentation.terminal import BOLD, FAINT, REVERSE, TaggedAnswerWriter

    def written(text: str, color: bool, chunk: int = 3) -> str:
        out = io.StringIO()
        writer = TaggedAnswerWriter(out, color=color)
        for start in range(0, len(text), chunk):
            writer.feed(text[start:start + chunk])
        writer.finish()
        return out.getvalue()

    tagged = "<think>K+ shifts the resting potential.</think><response>Hyperkalaemia</response>"
    assert written(tagged, color=False) == "Reasoning\nK+ shifts the resting potential.\n\nAnswer\nHyperkalaemia\n"
    colored = written(tagged, color=True)
    assert f"{FAINT}K+ shifts" in colored and f"{BOLD}Hyperkalaemia" in colored and "<think>" not in colored
    # A tag out of order is shown as written and marked: a malformed answer does not look clean.
    assert written("<think><think>loop</think><response>x", color=False) == "Reasoning\n[<think>]loop\n\nAnswer\nx\n"
    assert f"{REVERSE}<think>" in written("<think><think>loop", color=True)
    assert written("An answer without tags < 5 mg", color=False) == "An answer without tags < 5 mg\n"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medcot_pipeline.cli", *args]


def test_chat_loads_the_model_once_and_answers_each_line_of_a_pipe(tiny_llama_dir):
    command = cli("chat", "--model", str(tiny_llama_dir), "--device", "cpu", "--max-new-tokens", "4",
                  "--continuation-tokens", "0", "--json")
    done = subprocess.run(command, input="First question?\n\n   \nSecond question?\n/exit\nNever asked?\n",
                          capture_output=True, text=True, timeout=600, env=os.environ)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["question"] for a in answers] == ["First question?", "Second question?"]  # blank lines skipped, /exit left
    assert done.stderr.count("medcot: loading ") == 1 and done.stderr.count(" tokens/s") == 2
    assert "Traceback" not in done.stderr


def test_chat_on_a_terminal_prompts_answers_and_leaves(tiny_llama_dir):
    """Through a real pseudo-terminal: the prompt, an answer, the prompt again, /exit."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, its stdin, stdout and stderr on the terminal
        os.execv(sys.executable, cli("chat", "--model", str(tiny_llama_dir), "--device", "cpu", "--max-new-tokens", "4",
                                     "--continuation-tokens", "0"))
    seen = b""

    def read_until(marker: bytes, count: int, timeout: float = 300) -> None:
        nonlocal seen
        deadline = time.time() + timeout
        while seen.count(marker) < count:
            if time.time() > deadline:
                raise AssertionError(f"no {marker!r} after {timeout} s; the terminal showed:\n{seen.decode(errors='replace')}")
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    break

    try:
        read_until(b"question> ", 1)
        os.write(fd, b"Which drug treats strep throat?\n")
        read_until(b"question> ", 2)
        os.write(fd, b"/exit\n")
        read_until(b"\x00", 1, timeout=60)  # never written: read until the child has closed the terminal
    except AssertionError:
        if b"question> " not in seen:
            raise
    _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "ask a question and press Enter; /exit leaves" in text
    assert text.count("medcot: loading ") == 1 and " tokens/s" in text and "Traceback" not in text


def test_a_cuda_device_without_cuda_is_one_line(tiny_llama_dir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["ask", QUESTION, "--model", str(tiny_llama_dir), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("medcot: error: --device cuda: CUDA is not available here (torch ")
    assert err.splitlines()[-1].endswith("; use --device cpu") and "Traceback" not in err
    assert main(["ask", QUESTION, "--model", str(tiny_llama_dir), "--device", "gpu0"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "medcot: error: --device gpu0: not a device torch knows; use cpu, cuda or cuda:N"
