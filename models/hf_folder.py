"""A local Hugging Face model folder as a ModelSpec (`--model hf:PATH`): config.json and its weights, as
`save_pretrained` writes them. Nothing is downloaded: loading is local_files_only with HF_HUB_OFFLINE set.

Text models only (the config has a vocab_size): an architecture ending in ForSequenceClassification loads through
AutoModelForSequenceClassification and returns its logits; anything else loads through AutoModel and returns
last_hidden_state, a plain tensor like models/bert.py's BertEncoder. Inputs: token ids below the vocabulary size and
an attention mask whose rows have random lengths in [T/2, T], T = --seq-len (default: 128, or the model's maximum
positions when it is shorter).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from nn_speedups.models.registry import ModelSpec
from nn_speedups.models.user import USER_TAG, UserModelError, cause, clean_name

HF_TAG = "hf"
DEFAULT_SEQ_LEN = 128
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


class HuggingFaceModel(nn.Module):
    """A transformers model loaded from a local folder, returning one tensor: logits for a sequence classifier,
    last_hidden_state otherwise."""

    def __init__(self, folder: str, classifier: bool) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers

        auto = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModel
        self.classifier = classifier
        self.model = auto.from_pretrained(folder, local_files_only=True, dtype=torch.float32)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return output.logits if self.classifier else output.last_hidden_state


def token_inputs(vocab_size: int, seq_len: int):
    """example_inputs for a text model: random ids and an attention mask of random row lengths in [T/2, T]."""

    def inputs(batch_size: int, image_size: int = 0, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
        lengths = torch.randint(max(1, seq_len // 2), seq_len + 1, (batch_size, 1), generator=generator)
        attention_mask = (torch.arange(seq_len)[None, :] < lengths).long()  # [B, T]
        return input_ids.to(device), attention_mask.to(device)

    return inputs


def hf_spec(path: str, seq_len: int | None = None) -> ModelSpec:
    """The spec of `--model hf:PATH`, read from its config.json (transformers is imported only to build it)."""
    where = f"--model hf:{path}"
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserModelError(f"{where}: no such folder (give one written by save_pretrained: config.json + weights)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise UserModelError(f"{where}: no config.json in it (is it a Hugging Face model folder?)") from None
    except (OSError, ValueError) as error:
        raise UserModelError(f"{where}: config.json cannot be read ({cause(error)})") from None
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UserModelError(f"{where}: no weights in it (expected one of {', '.join(WEIGHT_FILES)})")
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise UserModelError(
            f"{where}: its config has no vocab_size: hf: takes text models; describe other models with a factory "
            "(--model module.path:factory)"
        )
    max_positions = next((config[k] for k in POSITION_KEYS if isinstance(config.get(k), int)), None)
    length = seq_len or min(DEFAULT_SEQ_LEN, max_positions or DEFAULT_SEQ_LEN)
    if max_positions and length > max_positions:
        raise UserModelError(f"{where}: --seq-len {length} exceeds the model's {max_positions} positions")
    classifier = any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or ())
    num_classes = (len(config.get("id2label") or {}) or config.get("num_labels") or None) if classifier else None
    resolved = str(folder.resolve())
    return ModelSpec(
        name=clean_name(folder.resolve().name) or "hf-model",
        build=lambda image_size=None: HuggingFaceModel(resolved, classifier),
        example_inputs=token_inputs(vocab_size, length),
        default_batch_sizes=(1, 8),
        num_classes=num_classes,
        tags=frozenset({"nlp", HF_TAG, USER_TAG}),
        input_names=("input_ids", "attention_mask"),
    )
