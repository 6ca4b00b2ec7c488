"""The `medcot` command: `medcot ask "QUESTION"` answers one question with the newest trained model (or --model PATH)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time

# Only the standard library at import time: `medcot --help` and argument errors must not wait for torch,
# transformers or Dagster (seconds each). Those are imported inside `ask`, after the paths are checked.

EXIT_USAGE = 2
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

    ask = commands.add_parser(
        "ask",
        help="answer one question, printing the tokens as they come",
        description=(
            "Answer one medical question with a merged model, or a base model plus a LoRA adapter. The answer "
            "(<think>…</think><response>…</response>) goes to stdout as it is generated; progress and a closing "
            "line with tokens, seconds and tokens/s go to stderr."
        ),
    )
    ask.add_argument("question", help="the question; a long one is shortened to fit the model's context")
    ask.add_argument(
        "--model", default="latest",
        help="'latest' (default: the newest merged_model under the artifacts root), a stage directory such as "
        "artifacts/merged_model (its newest run), a merged model directory, a LoRA adapter directory, or the base "
        "model with --adapter",
    )
    ask.add_argument("--adapter", help="LoRA adapter directory to apply on top of --model")
    ask.add_argument(
        "--artifacts", help="artifacts root for --model latest (default: the root in $MEDCOT_PROFILE, else ./artifacts)"
    )
    ask.add_argument(
        "--max-new-tokens", type=_positive_int,
        help=f"token budget of the answer (default {DEFAULT_NEW_TOKENS['cuda']} on a GPU, {DEFAULT_NEW_TOKENS['cpu']} on a CPU)",
    )
    ask.add_argument(
        "--continuation-tokens", type=_non_negative_int,
        help="extra tokens for an answer that has not closed </response> yet "
        f"(default {DEFAULT_CONTINUATION_TOKENS['cuda']} on a GPU, {DEFAULT_CONTINUATION_TOKENS['cpu']} on a CPU)",
    )
    ask.add_argument(
        "--repetition-penalty", type=_positive_float, default=DEFAULT_REPETITION_PENALTY,
        help=f"above 1 discourages repeated tokens; 1 turns it off (default {DEFAULT_REPETITION_PENALTY})",
    )
    ask.add_argument(
        "--no-repeat-ngram", type=_non_negative_int, default=DEFAULT_NO_REPEAT_NGRAM,
        help=f"never repeat a run of this many tokens; 0 turns it off (default {DEFAULT_NO_REPEAT_NGRAM})",
    )
    ask.add_argument("--json", action="store_true", help="print one JSON object (text, think, response, timing) instead of the text")
    ask.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    ask.add_argument("--temperature", type=_positive_float, help="sampling temperature, with --sample (default 0.7)")
    ask.add_argument("--top-p", type=_positive_float, help="nucleus sampling, with --sample (default 0.95)")
    ask.add_argument(
        "--no-stream", action="store_true",
        help="print the answer when it is complete instead of token by token (with --json, nothing streams to stderr)",
    )
    ask.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    ask.add_argument(
        "--kv-cache", choices=("dynamic", "static"), default="dynamic",
        help="static: the preallocated cache rouge_report uses on GPUs, faster per token after a torch.compile "
        "warm-up that a single short answer does not repay (default dynamic)",
    )
    ask.add_argument(
        # The names of settings.GenerationSettings.attention, written out: importing settings pulls in pydantic.
        "--attention", choices=("grouped_sdpa", "grouped_triton", "sdpa"), default="grouped_sdpa",
        help="attention while decoding (default grouped_sdpa); grouped_triton, with --kv-cache static, is what the "
        "h100 profiles' rouge_report uses on a GPU (it needs Triton, which CUDA builds of torch bring)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Library warnings (e.g. a question shortened to fit the context) read as medcot's own.
    logging.basicConfig(level=logging.WARNING, format="medcot: warning: %(message)s", stream=sys.stderr)
    if args.command == "ask":
        return ask(args)
    return EXIT_USAGE


def ask(args: argparse.Namespace) -> int:
    from medcot_pipeline import model_paths

    question = args.question.strip()
    if not question:
        return _error("the question is empty; ask something, e.g. medcot ask \"What causes iron deficiency anemia?\"")
    sampling = {"temperature": args.temperature, "top_p": args.top_p}
    sampling = {name: value for name, value in sampling.items() if value is not None}
    if sampling and not args.sample:
        _warn(f"{', '.join('--' + name.replace('_', '-') for name in sampling)} has no effect without --sample")

    if args.attention == "grouped_triton" and importlib.util.find_spec("triton") is None:
        return _error("--attention grouped_triton needs Triton, which is not installed (CUDA builds of torch bring it); "
                      "use --attention grouped_sdpa")

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

    from medcot_pipeline.evaluation.generation import ModelLoadError, cache_kwargs, generate_answers, load_for_inference
    from medcot_pipeline.settings import GenerationSettings

    # Library chatter (load bars, config notes) would bury the answer; our own warnings still show.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
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
    # The text goes out once: streamed to stdout, or (with --json) to stderr for a person watching.
    stream_to = None if args.no_stream else sys.stderr if args.json else sys.stdout
    if args.json and not sys.stderr.isatty():
        stream_to = None
    streamer = None if stream_to is None else text_streamer(tokenizer, stream_to)
    try:
        run = generate_answers(model, tokenizer, [question], config, streamer=streamer, **cache_kwargs(config))
    except ValueError as err:  # e.g. a token budget that leaves no room for the prompt
        return _error(str(err))
    answer = run.answers[0]
    parsed = answer.parsed
    if streamer is not None and stream_to is not None:
        stream_to.write("\n")
        stream_to.flush()

    if args.json:
        print(json.dumps({
            "question": answer.question,
            "model": model_path,
            "text": answer.text,
            "think": parsed.think,
            "response": parsed.response,
            "truncated": answer.truncated,
            "compliant": parsed.compliant,
            "new_tokens": answer.new_tokens,
            "seconds": round(run.wall_seconds, 2),
            "tokens_per_second": round(run.tokens_per_second, 1),
        }, ensure_ascii=False))
    elif streamer is None:
        print(answer.text.strip() or "(empty answer)")
    _note(f"{answer.new_tokens} tokens in {run.wall_seconds:.1f} s, {run.tokens_per_second:.1f} tokens/s")
    if answer.truncated:
        _warn(
            f"the answer was cut off after {answer.new_tokens} tokens before </response>; "
            "raise --max-new-tokens or --continuation-tokens"
        )
    elif not parsed.compliant:
        _warn(f"the output does not follow <think>…</think><response>…</response>: {', '.join(parsed.problems)}")
    return 0


def text_streamer(tokenizer, stream):
    """A transformers TextStreamer writing the answer's words to `stream` as they come (not the prompt)."""
    from transformers import TextStreamer

    class StreamTo(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            # No newline at a stream's end: a continuation may follow on the same line; ask() ends the line.
            stream.write(text)
            stream.flush()

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
