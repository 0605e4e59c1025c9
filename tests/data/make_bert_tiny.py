"""Re-create ``bert_tiny.onnx``: a tiny BERT-like encoder exported by PyTorch's TorchScript
exporter (``torch.onnx.export(dynamo=False)``), the way Hugging Face models were exported
for years: dynamic batch and sequence axes, position ids from ``arange`` over the input's
shape, an all-ones attention mask from ``torch.ones(input_ids.shape)`` (ConstantOfShape),
``expand`` over run-time shapes, LayerNorm, erf GELU, a tanh pooler.

    python tests/data/make_bert_tiny.py      # needs torch (not needed to run the tests)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

VOCAB, HIDDEN, LAYERS, HEADS, FFN, MAX_POS = 100, 32, 2, 2, 64, 64


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.o = nn.Linear(HIDDEN, HIDDEN)
        self.ln1 = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.ff1, self.ff2 = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)
        self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-12)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.size()
        return x.view(b, s, HEADS, HIDDEN // HEADS).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS) + mask
        ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(ctx.size(0), ctx.size(1), HIDDEN)
        x = self.ln1(x + self.o(ctx))
        return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class TinyBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word = nn.Embedding(VOCAB, HIDDEN)
        self.pos = nn.Embedding(MAX_POS, HIDDEN)
        self.token_type = nn.Embedding(2, HIDDEN)
        self.ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.pool = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor):
        shape = input_ids.size()
        mask = torch.ones(shape, device=input_ids.device)                # ConstantOfShape
        ext = (1.0 - mask[:, None, None, :]) * -10000.0
        pos = torch.arange(shape[1], dtype=torch.long).unsqueeze(0).expand(shape)  # Range
        x = self.ln(self.word(input_ids) + self.pos(pos) + self.token_type(token_type_ids))
        for layer in self.layers:
            x = layer(x, ext)
        return x, torch.tanh(self.pool(x[:, 0]))


def main() -> None:
    torch.manual_seed(0)
    model = TinyBert().eval()
    ids = torch.randint(0, VOCAB, (2, 8))
    types = torch.zeros_like(ids)
    out = Path(__file__).with_name("bert_tiny.onnx")
    torch.onnx.export(model, (ids, types), str(out), dynamo=False, opset_version=14,
                      input_names=["input_ids", "token_type_ids"],
                      output_names=["last_hidden_state", "pooler_output"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                    "token_type_ids": {0: "batch", 1: "seq"},
                                    "last_hidden_state": {0: "batch", 1: "seq"},
                                    "pooler_output": {0: "batch"}})
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
