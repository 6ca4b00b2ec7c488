"""The `medcot` command: `medcot ask "QUESTION" --model PATH` answers one question with a trained model."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from transformers import TextStreamer
from transformers.utils import logging as transformers_logging

from medcot_pipeline.settings import GenerationSettings
from medcot_pipeline.evaluation.generation import ModelLoadError, generate_answers, load_for_inference

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser(
        "ask",
        help="answer one question, streaming the tokens, then print the reasoning and the answer",
        description="Answer one medical question with a merged model, or a base model plus a LoRA adapter.",
    )
    ask.add_argument("question", help="the question; a long one is shortened to fit the model's context")
    ask.add_argument("--model", required=True, help="merged model directory (or a LoRA adapter directory, or the base model with --adapter)")
    ask.add_argument("--adapter", help="LoRA adapter directory to apply on top of --model")
    ask.add_argument("--max-new-tokens", type=_positive_int, default=1024, help="token budget of the answer (default 1024)")
    ask.add_argument(
        "--continuation-tokens", type=_non_negative_int, default=512,
        help="extra tokens for an answer that has not closed </response> yet (default 512)",
    )
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of headed sections")
    ask.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    ask.add_argument("--temperature", type=_positive_float, help="sampling temperature, with --sample (default 0.7)")
    ask.add_argument("--top-p", type=_positive_float, help="nucleus sampling, with --sample (default 0.95)")
    ask.add_argument("--no-stream", action="store_true", help="do not stream tokens to stderr while generating")
    ask.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="medcot: warning: %(message)s", stream=sys.stderr)
    if args.command == "ask":
        return ask(args)
    return EXIT_USAGE


def ask(args: argparse.Namespace) -> int:
    sampling = {"temperature": args.temperature, "top_p": args.top_p}
    sampling = {name: value for name, value in sampling.items() if value is not None}
    if sampling and not args.sample:
        _warn(f"{', '.join('--' + name.replace('_', '-') for name in sampling)} has no effect without --sample")
    # Library chatter (load bars, config notes) would bury the answer; our own warnings still show.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        model, tokenizer = load_for_inference(args.model, args.adapter, device=args.device)
    except ModelLoadError as err:
        print(f"medcot: error: {err}", file=sys.stderr)
        return EXIT_USAGE

    config = GenerationSettings(
        batch_size=1,
        max_new_tokens=args.max_new_tokens,
        continuation_tokens=args.continuation_tokens,
        do_sample=args.sample,
        **sampling,
    )
    streamer = None if args.no_stream else StderrStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    try:
        run = generate_answers(model, tokenizer, [args.question], config, streamer=streamer)
    except ValueError as err:  # e.g. a token budget that leaves no room for the prompt
        print(f"medcot: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if streamer is not None:
        sys.stderr.write("\n")
    answer = run.answers[0]
    parsed = answer.parsed

    if args.json:
        print(json.dumps({
            "question": answer.question,
            "think": parsed.think,
            "response": parsed.response,
            "truncated": answer.truncated,
            "compliant": parsed.compliant,
            "new_tokens": answer.new_tokens,
        }, ensure_ascii=False))
    else:
        print("## Reasoning\n")
        print(parsed.think if parsed.think is not None else "(no <think> block)")
        print("\n## Answer\n")
        # Without a <response> block the raw output is the only answer there is; say so rather than hide it.
        print(parsed.response if parsed.response is not None else answer.text.strip() or "(empty)")
    if answer.truncated:
        _warn(f"the answer was cut off after {answer.new_tokens} tokens before </response>; raise --max-new-tokens")
    elif not parsed.compliant:
        _warn(f"the output does not follow <think>…</think><response>…</response>: {', '.join(parsed.problems)}")
    return 0


class StderrStreamer(TextStreamer):
    """Shows the tokens on stderr as they come, keeping stdout for the result."""

    def on_finalized_text(self, text: str, stream_end: bool = False):
        # No newline at a stream's end: a continuation may follow on the same line; ask() ends the line.
        sys.stderr.write(text)
        sys.stderr.flush()


def _warn(message: str) -> None:
    print(f"medcot: warning: {message}", file=sys.stderr)


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
