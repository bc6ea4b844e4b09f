"""The models the sandbox serves, in the shape of Together's `GET /v1/models` entries."""

from __future__ import annotations

from typing import Any

# (id, type, organization, context_length, input price, output price) per million tokens.
_MODELS: tuple[tuple[str, str, str, int, float, float], ...] = (
    ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "chat", "Meta", 131072, 0.88, 0.88),
    ("meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "chat", "Meta", 131072, 0.18, 0.18),
    ("Qwen/Qwen2.5-7B-Instruct-Turbo", "chat", "Qwen", 32768, 0.30, 0.30),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "chat", "mistralai", 32768, 0.60, 0.60),
    ("meta-llama/Llama-2-70b-hf", "language", "Meta", 4096, 0.90, 0.90),
    ("BAAI/bge-base-en-v1.5", "embedding", "BAAI", 512, 0.008, 0.0),
    ("togethercomputer/m2-bert-80M-8k-retrieval", "embedding", "Together", 8192, 0.008, 0.0),
    ("black-forest-labs/FLUX.1-schnell", "image", "Black Forest Labs", 0, 0.0, 0.0),
    ("Salesforce/Llama-Rank-V1", "rerank", "Salesforce", 8192, 0.10, 0.10),
    # Audio: billed per character or per audio minute, not per token (no token price here).
    ("cartesia/sonic", "audio", "Cartesia", 0, 0.0, 0.0),
    ("cartesia/sonic-2", "audio", "Cartesia", 0, 0.0, 0.0),
    ("hexgrad/Kokoro-82M", "audio", "hexgrad", 0, 0.0, 0.0),
    ("openai/whisper-large-v3", "transcribe", "OpenAI", 0, 0.0, 0.0),
)

# A fixed creation time keeps `GET /models` byte-identical between runs.
_CREATED = 1_733_000_000


def _entry(
    model_id: str, kind: str, org: str, context: int, inp: float, out: float
) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": _CREATED,
        "type": kind,
        "running": False,
        "display_name": model_id.split("/")[-1].replace("-", " "),
        "organization": org,
        "link": f"https://huggingface.co/{model_id}",
        "context_length": context,
        "config": {"chat_template": None, "stop": [], "bos_token": None, "eos_token": None},
        "pricing": {"hourly": 0, "input": inp, "output": out, "base": 0, "finetune": 0},
    }


def model_list(extra_models: list[str]) -> list[dict[str, Any]]:
    entries = [_entry(*spec) for spec in _MODELS]
    entries += [_entry(m, "chat", m.split("/")[0], 32768, 0.2, 0.2) for m in extra_models]
    return entries


def is_known(model: str, extra_models: list[str]) -> bool:
    return model in extra_models or any(spec[0] == model for spec in _MODELS)


def model_types(extra_models: list[str]) -> dict[str, str]:
    """Every model the sandbox serves and its Together type (chat, embedding, image...)."""
    types = {spec[0]: spec[1] for spec in _MODELS}
    types.update({model: "chat" for model in extra_models})
    return types
