"""bert-base from transformers, built from its config: random weights, nothing downloaded, sequence length 128."""

from __future__ import annotations

import torch
from torch import nn

from nn_speedups.models.registry import ModelSpec, register

SEQ_LEN = 128


class BertEncoder(nn.Module):
    """BertModel returning last_hidden_state [B, T, 768] as a plain tensor (for comparisons and ONNX export)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig()  # bert-base-uncased shape: 12 layers, hidden 768, 12 heads, vocab 30522
        self.vocab_size = config.vocab_size
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bert_inputs(batch_size: int, image_size: int = 0, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random token ids and an attention mask whose rows have random lengths in [SEQ_LEN/2, SEQ_LEN]."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 30522, (batch_size, SEQ_LEN), generator=generator)
    lengths = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (batch_size, 1), generator=generator)
    attention_mask = (torch.arange(SEQ_LEN)[None, :] < lengths).long()  # [B, T]
    return input_ids.to(device), attention_mask.to(device)


register(
    ModelSpec(
        name="bert-base",
        build=lambda image_size=None: BertEncoder(),
        example_inputs=bert_inputs,
        default_batch_sizes=(1, 64),
        tags=frozenset({"nlp"}),
        input_names=("input_ids", "attention_mask"),
    )
)
