"""The `medcot` command: `medcot ask "QUESTION"` answers one question with the newest trained model (or --model PATH);
`medcot chat` loads it once and answers question after question."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medcot_pipeline.settings import GenerationSettings

# Only the standard library at import time: `medcot --help` and argument errors must not wait for torch,
# transformers or Dagster (seconds each). Those are imported inside `ask`, after the paths are checked.

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C
CHAT_PROMPT = "question> "
EXIT_COMMANDS = ("/exit", "/quit")
# Sized to the device: a 2-core CPU generates a handful of tokens a second even with the 135M demo model, so
# a CPU answer gets the demo profile's rouge_report budget (160 + 48, what the demo grades); a GPU gets the
# pipeline's defaults (1,024 + 512).
DEFAULT_NEW_TOKENS = {"cpu": 160, "cuda": 1024}
DEFAULT_CONTINUATION_TOKENS = {"cpu": 48, "cuda": 512}
# Greedy decoding of a small or briefly trained model falls into loops (one paragraph repeated to the limit);
# a mild penalty and a ban on repeating any 6-token run keep an interactive answer readable.
DEFAULT_REPETITION_PENALTY = 1.1
DEFAULT_NO_REPEAT_NGRAM = 6


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    model = _model_options()

    ask = commands.add_parser(
        "ask",
        parents=[model],
        help="answer one question, printing the tokens as they come",
        description=(
            "Answer one medical question with a merged model, or a base model plus a LoRA adapter. On a terminal the "
            "answer streams as two sections, the reasoning and the answer; piped, it is written as generated "
            "(<think>…</think><response>…</response>). Progress and a closing line with tokens, seconds and tokens/s "
            "go to stderr."
        ),
    )
    ask.add_argument("question", help="the question; a long one is shortened to fit the model's context")
    commands.add_parser(
        "chat",
        parents=[model],
        help="load the model once and answer questions one after another (/exit to leave)",
        description=(
            "Load the model once, then read questions, one a line, and answer each as `medcot ask` does: from a "
            "terminal with a prompt, or piped from a file or another program. Each question is answered on its own "
            "(the model was trained on single questions, not conversations). /exit, /quit or end of input leaves; "
            "Ctrl-C stops the answer being written."
        ),
    )
    return parser


def _model_options() -> argparse.ArgumentParser:
    """The options `ask` and `chat` share: which model, on what, with what budget, written how."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--model",
        default="latest",
        help="'latest' (default: the newest merged_model under the artifacts root), a stage directory such as "
        "artifacts/merged_model (its newest run), a merged model directory, a LoRA adapter directory, or the base "
        "model with --adapter",
    )
    options.add_argument("--adapter", help="LoRA adapter directory to apply on top of --model")
    options.add_argument("--artifacts", help="artifacts root for --model latest (default: the root in $MEDCOT_PROFILE, else ./artifacts)")
    options.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        help=f"token budget of the answer (default {DEFAULT_NEW_TOKENS['cuda']} on a GPU, {DEFAULT_NEW_TOKENS['cpu']} on a CPU)",
    )
    options.add_argument(
        "--continuation-tokens",
        type=_non_negative_int,
        help="extra tokens for an answer that has not closed </response> yet "
        f"(default {DEFAULT_CONTINUATION_TOKENS['cuda']} on a GPU, {DEFAULT_CONTINUATION_TOKENS['cpu']} on a CPU)",
    )
    options.add_argument(
        "--repetition-penalty",
        type=_positive_float,
        default=DEFAULT_REPETITION_PENALTY,
        help=f"above 1 discourages repeated tokens; 1 turns it off (default {DEFAULT_REPETITION_PENALTY})",
    )
    options.add_argument(
        "--no-repeat-ngram",
        type=_non_negative_int,
        default=DEFAULT_NO_REPEAT_NGRAM,
        help=f"never repeat a run of this many tokens; 0 turns it off (default {DEFAULT_NO_REPEAT_NGRAM})",
    )
    options.add_argument(
        "--json", action="store_true", help="print one JSON object per answer (text, think, response, timing) instead of the text"
    )
    options.add_argument(
        "--raw", action="store_true", help="on a terminal too, write the answer as generated, tags and all, instead of two sections"
    )
    options.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    options.add_argument("--temperature", type=_positive_float, help="sampling temperature, with --sample (default 0.7)")
    options.add_argument("--top-p", type=_positive_float, help="nucleus sampling, with --sample (default 0.95)")
    options.add_argument(
        "--no-stream",
        action="store_true",
        help="print the answer when it is complete instead of token by token (with --json, nothing streams to stderr)",
    )
    options.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    options.add_argument(
        "--kv-cache",
        choices=("dynamic", "static"),
        default="dynamic",
        help="static: the preallocated cache rouge_report uses on GPUs, faster per token after a torch.compile "
        "warm-up that a single short answer does not repay (default dynamic)",
    )
    options.add_argument(
        # The names of settings.GenerationSettings.attention, written out: importing settings pulls in pydantic.
        "--attention",
        choices=("grouped_sdpa", "grouped_triton", "sdpa"),
        default="grouped_sdpa",
        help="attention while decoding (default grouped_sdpa); grouped_triton, with --kv-cache static, is what the "
        "h100 profiles' rouge_report uses on a GPU (it needs Triton, which CUDA builds of torch bring)",
    )
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Library warnings (e.g. a question shortened to fit the context) read as medcot's own.
    logging.basicConfig(level=logging.WARNING, format="medcot: warning: %(message)s", stream=sys.stderr)
    if args.command == "ask":
        return ask(args)
    if args.command == "chat":
        return chat(args)
    return EXIT_USAGE


@dataclass
class Session:
    """A loaded model and how it answers: what `ask` uses once and `chat` keeps between questions."""

    model: object
    tokenizer: object
    config: GenerationSettings
    model_path: str
    device: str


def ask(args: argparse.Namespace) -> int:
    question = args.question.strip()
    if not question:
        return _error('the question is empty; ask something, e.g. medcot ask "What causes iron deficiency anemia?"')
    session = load_session(args)
    if isinstance(session, int):
        return session
    try:
        return answer(session, question, args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        _note("interrupted")
        return EXIT_INTERRUPTED


def chat(args: argparse.Namespace) -> int:
    """Questions from stdin, one a line, each answered with the model loaded once; /exit or end of input leaves."""
    session = load_session(args)
    if isinstance(session, int):
        return session
    interactive = sys.stdin.isatty()
    if interactive:
        _note("ask a question and press Enter; /exit leaves, Ctrl-C stops an answer")
    while True:
        try:
            line = input(CHAT_PROMPT if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        question = line.strip()
        if not question:
            continue
        if question in EXIT_COMMANDS:
            return 0
        try:
            status = answer(session, question, args)
        except KeyboardInterrupt:
            print(file=sys.stderr)
            _note("answer stopped")
            continue
        if status != 0:
            return status


def load_session(args: argparse.Namespace) -> Session | int:
    """Check the arguments and paths (before torch is imported: a typo fails at once), the device, then load the
    model; an exit code instead when something is wrong, said in one line."""
    from medcot_pipeline import model_paths

    sampling = {"temperature": args.temperature, "top_p": args.top_p}
    sampling = {name: value for name, value in sampling.items() if value is not None}
    if sampling and not args.sample:
        _warn(f"{', '.join('--' + name.replace('_', '-') for name in sampling)} has no effect without --sample")

    if args.attention == "grouped_triton" and importlib.util.find_spec("triton") is None:
        return _error(
            "--attention grouped_triton needs Triton, which is not installed (CUDA builds of torch bring it); use --attention grouped_sdpa"
        )

    # Paths first: a typo or a missing run fails here, before torch is imported.
    try:
        model_path = model_paths.model_argument(args.model, model_paths.artifacts_root(args.artifacts))
        model_paths.tokenizer_source(*model_paths.resolve_model_paths(model_path, args.adapter))
    except model_paths.ModelLoadError as err:
        return _error(str(err))
    _note(f"loading {model_path}{f' with adapter {args.adapter}' if args.adapter else ''}…")

    started = time.perf_counter()
    import torch
    from transformers.utils import logging as transformers_logging

    from medcot_pipeline.evaluation.generation import ModelLoadError, load_for_inference
    from medcot_pipeline.settings import GenerationSettings

    try:
        device = resolve_device(args.device, torch)
    except ValueError as err:
        return _error(str(err))
    # Library chatter (load bars, config notes) would bury the answer; our own warnings still show.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    kind = "cuda" if device.startswith("cuda") else "cpu"
    try:
        model, tokenizer = load_for_inference(model_path, args.adapter, device=device, attention=args.attention)
    except ModelLoadError as err:
        return _error(str(err))

    config = GenerationSettings(
        batch_size=1,
        max_new_tokens=args.max_new_tokens or DEFAULT_NEW_TOKENS[kind],
        continuation_tokens=DEFAULT_CONTINUATION_TOKENS[kind] if args.continuation_tokens is None else args.continuation_tokens,
        do_sample=args.sample,
        repetition_penalty=args.repetition_penalty if args.repetition_penalty != 1 else None,
        no_repeat_ngram_size=args.no_repeat_ngram or None,
        kv_cache=args.kv_cache,
        attention=args.attention,
        **sampling,
    )
    _note(f"loaded in {time.perf_counter() - started:.1f} s; answering on {device} (up to {config.max_new_tokens} tokens)…")
    return Session(model=model, tokenizer=tokenizer, config=config, model_path=model_path, device=device)


def resolve_device(requested: str, torch) -> str:
    """The device to answer on; a device this machine lacks is a ValueError saying so in one line."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device {requested}: not a device torch knows; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"--device {requested}: CUDA is not available here (torch {torch.__version__}, {build}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    return requested


def answer(session: Session, question: str, args: argparse.Namespace) -> int:
    """Answer one question: streamed (two sections on a terminal, as generated when piped), or as one JSON object."""
    from medcot_pipeline.evaluation.generation import cache_kwargs, generate_answers

    # The text goes out once: streamed to stdout, or (with --json) to stderr for a person watching.
    stream_to = None if args.no_stream else sys.stderr if args.json else sys.stdout
    if args.json and not sys.stderr.isatty():
        stream_to = None
    writer = None if stream_to is None else answer_writer(stream_to, args.raw)
    streamer = None if writer is None else text_streamer(session.tokenizer, writer)
    try:
        run = generate_answers(
            session.model, session.tokenizer, [question], session.config, streamer=streamer, **cache_kwargs(session.config)
        )
    except ValueError as err:  # e.g. a token budget that leaves no room for the prompt
        return _error(str(err))
    result = run.answers[0]
    parsed = result.parsed
    if writer is not None:
        writer.finish()

    if args.json:
        print(
            json.dumps(
                {
                    "question": result.question,
                    "model": session.model_path,
                    "text": result.text,
                    "think": parsed.think,
                    "response": parsed.response,
                    "truncated": result.truncated,
                    "compliant": parsed.compliant,
                    "new_tokens": result.new_tokens,
                    "seconds": round(run.wall_seconds, 2),
                    "tokens_per_second": round(run.tokens_per_second, 1),
                },
                ensure_ascii=False,
            ),
            flush=True,
        )
    elif writer is None:
        whole = answer_writer(sys.stdout, args.raw)
        whole.feed(result.text.strip() or "(empty answer)")
        whole.finish()
    _note(f"{result.new_tokens} tokens in {run.wall_seconds:.1f} s, {run.tokens_per_second:.1f} tokens/s")
    if result.truncated:
        _warn(
            f"the answer was cut off after {result.new_tokens} tokens before </response>; raise --max-new-tokens or --continuation-tokens"
        )
    elif not parsed.compliant:
        _warn(f"the output does not follow <think>…</think><response>…</response>: {', '.join(parsed.problems)}")
    return 0


class _RawWriter:
    """The answer as generated, for pipes, files and --raw: what a script parses."""

    def __init__(self, stream):
        self.stream = stream

    def feed(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def answer_writer(stream, raw: bool):
    """Two labelled sections (reasoning, answer) on a terminal; the text as generated elsewhere or with --raw."""
    from medcot_pipeline.presentation.terminal import TaggedAnswerWriter

    return TaggedAnswerWriter(stream) if stream.isatty() and not raw else _RawWriter(stream)


def text_streamer(tokenizer, writer):
    """A transformers TextStreamer handing the answer's words to `writer` as they come (not the prompt)."""
    from transformers import TextStreamer

    class StreamTo(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            # No newline at a stream's end: a continuation may follow; the writer's finish() ends the line.
            writer.feed(text)

    return StreamTo(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _note(message: str) -> None:
    print(f"medcot: {message}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"medcot: warning: {message}", file=sys.stderr, flush=True)


def _error(message: str) -> int:
    print(f"medcot: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
