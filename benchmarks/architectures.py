"""Architectures the other benchmarks do not build, exported from PyTorch: hwcc vs onnxruntime.

    python benchmarks/architectures.py [--models shufflenet_v2,vit_tiny,...] [--repeat 20]

Needs PyTorch (``pip install -e '.[torch]'``, which takes the CPU wheel ``torch==2.13.0``).
Each model is defined here with random weights (BatchNorm statistics randomized too, so that
folding them is exercised), exported with ``torch.onnx.export`` (opset 17) and compiled
untuned with hwcc's default schedules, as a user's unseen model would be. Reported: hwcc and
onnxruntime latency at batch 1 (alternating rounds, median of round medians), their ratio, and
the largest difference between the two outputs on the same random input.

The models: MobileNetV3-small (HardSwish, squeeze-and-excitation with HardSigmoid, 5x5
depthwise), a ConvNeXt-style net (7x7 depthwise, LayerNorm over channels via permutes, GELU
MLP), a 4-layer ViT-tiny (patch conv, 197 tokens, ``nn.TransformerEncoder``), ShuffleNetV2
(channel split, concat and shuffle; 58/116/232 channels), a small UNet (transposed conv,
bilinear upsampling, skip concats) and a YOLO-style detector (SiLU, SPPF max-pools, nearest
upsampling, two heads).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, machine_line, ort_session, save_results, table, time_fn

import compiler

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - an optional extra
    torch = None

#: Alternating timing rounds per model.
ROUNDS = 5
#: Pause before each engine's round, seconds.
SETTLE_S = 0.5

if torch is not None:

    def conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
        """Conv (no bias) + BatchNorm + activation (None: no activation)."""
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), act() if act else nn.Identity())

    class SqueezeExcite(nn.Module):
        def __init__(self, c, reduction=4, gate=nn.Hardsigmoid):
            super().__init__()
            self.squeeze = nn.Conv2d(c, c // reduction, 1)
            self.excite = nn.Conv2d(c // reduction, c, 1)
            self.gate = gate()

        def forward(self, x):
            pooled = F.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.excite(F.relu(self.squeeze(pooled))))

    class InvertedResidualV3(nn.Module):
        def __init__(self, cin, expanded, cout, k, stride, se, act):
            super().__init__()
            self.residual = stride == 1 and cin == cout
            layers = [conv_bn(cin, expanded, 1, act=act)] if expanded != cin else []
            layers.append(conv_bn(expanded, expanded, k, stride, groups=expanded, act=act))
            if se:
                layers.append(SqueezeExcite(expanded))
            layers.append(conv_bn(expanded, cout, 1, act=None))
            self.body = nn.Sequential(*layers)

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class MobileNetV3Small(nn.Module):
        #: (in, expanded, out, kernel, stride, squeeze-excite, activation)
        CONFIG = ((16, 16, 16, 3, 2, 1, nn.ReLU), (16, 72, 24, 3, 2, 0, nn.ReLU),
                  (24, 88, 24, 3, 1, 0, nn.ReLU), (24, 96, 40, 5, 2, 1, nn.Hardswish),
                  (40, 240, 40, 5, 1, 1, nn.Hardswish), (40, 240, 40, 5, 1, 1, nn.Hardswish),
                  (40, 120, 48, 5, 1, 1, nn.Hardswish), (48, 144, 48, 5, 1, 1, nn.Hardswish),
                  (48, 288, 96, 5, 2, 1, nn.Hardswish), (96, 576, 96, 5, 1, 1, nn.Hardswish),
                  (96, 576, 96, 5, 1, 1, nn.Hardswish))

        def __init__(self):
            super().__init__()
            self.stem = conv_bn(3, 16, 3, 2, act=nn.Hardswish)
            self.blocks = nn.Sequential(*[InvertedResidualV3(*c) for c in self.CONFIG])
            self.head = nn.Sequential(
                conv_bn(96, 576, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, 1000))

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    class ChannelsLayerNorm(nn.Module):
        """LayerNorm over the channels of an NCHW map (permute, normalize, permute back)."""

        def __init__(self, c):
            super().__init__()
            self.norm = nn.LayerNorm(c)

        def forward(self, x):
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class ConvNeXtBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 7, 1, 3, groups=c)
            self.norm = nn.LayerNorm(c)
            self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
            self.gamma = nn.Parameter(torch.full((c,), 0.1))

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.fc2(F.gelu(self.fc1(self.norm(y)))) * self.gamma
            return x + y.permute(0, 3, 1, 2)

    class ConvNeXtNano(nn.Module):
        def __init__(self, dims=(48, 96, 192, 384), depths=(2, 2, 4, 2), classes=1000):
            super().__init__()
            layers = [nn.Conv2d(3, dims[0], 4, 4), ChannelsLayerNorm(dims[0])]
            for i, (dim, depth) in enumerate(zip(dims, depths)):
                if i:
                    layers += [ChannelsLayerNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)]
                layers += [ConvNeXtBlock(dim) for _ in range(depth)]
            self.body = nn.Sequential(*layers)
            self.norm, self.fc = nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], classes)

        def forward(self, x):
            return self.fc(self.norm(self.body(x).mean((2, 3))))

    class ViTTiny(nn.Module):
        def __init__(self, dim=192, depth=4, heads=3, patch=16, tokens=197, classes=1000):
            super().__init__()
            self.patches = nn.Conv2d(3, dim, patch, patch)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, 0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, classes)

        def forward(self, x):
            tokens = self.patches(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.pos
            return self.fc(self.norm(self.encoder(tokens))[:, 0])

    def channel_shuffle(x, groups):
        b, c, h, w = x.shape
        return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride = stride
            half = cout // 2
            if stride == 2:
                self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, act=None),
                                          conv_bn(cin, half, 1))
            self.right = nn.Sequential(
                conv_bn(cin if stride == 2 else half, half, 1),
                conv_bn(half, half, 3, stride, groups=half, act=None), conv_bn(half, half, 1))

        def forward(self, x):
            if self.stride == 1:
                kept, branch = x.chunk(2, 1)
                out = torch.cat([kept, self.right(branch)], 1)
            else:
                out = torch.cat([self.left(x), self.right(x)], 1)
            return channel_shuffle(out, 2)

    class ShuffleNetV2(nn.Module):
        def __init__(self, widths=(24, 116, 232, 464), repeats=(4, 8, 4), head=1024,
                     classes=1000):
            super().__init__()
            layers = [conv_bn(3, widths[0], 3, 2), nn.MaxPool2d(3, 2, 1)]
            for i, n in enumerate(repeats, start=1):
                layers.append(ShuffleUnit(widths[i - 1], widths[i], 2))
                layers += [ShuffleUnit(widths[i], widths[i], 1) for _ in range(n - 1)]
            layers.append(conv_bn(widths[-1], head, 1))
            self.body, self.fc = nn.Sequential(*layers), nn.Linear(head, classes)

        def forward(self, x):
            return self.fc(self.body(x).mean((2, 3)))

    class UNetSmall(nn.Module):
        def __init__(self, width=16):
            super().__init__()
            w1, w2, w3 = width, 2 * width, 4 * width
            self.enc1 = nn.Sequential(conv_bn(3, w1), conv_bn(w1, w1))
            self.enc2 = nn.Sequential(conv_bn(w1, w2), conv_bn(w2, w2))
            self.enc3 = nn.Sequential(conv_bn(w2, w3), conv_bn(w3, w3))
            self.up2 = nn.ConvTranspose2d(w3, w2, 2, 2)
            self.dec2 = nn.Sequential(conv_bn(2 * w2, w2), conv_bn(w2, w2))
            self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.dec1 = nn.Sequential(conv_bn(w2 + w1, w1), conv_bn(w1, w1))
            self.out = nn.Conv2d(w1, 2, 1)

        def forward(self, x):
            a = self.enc1(x)
            b = self.enc2(F.max_pool2d(a, 2))
            c = self.enc3(F.max_pool2d(b, 2))
            d = self.dec2(torch.cat([self.up2(c), b], 1))
            return torch.sigmoid(self.out(self.dec1(torch.cat([self.up1(d), a], 1))))

    class YoloTiny(nn.Module):
        def __init__(self):
            super().__init__()
            act = nn.SiLU
            self.stage1 = nn.Sequential(conv_bn(3, 16, 3, 2, act=act),
                                        conv_bn(16, 32, 3, 2, act=act), conv_bn(32, 32, act=act))
            self.stage2 = nn.Sequential(conv_bn(32, 64, 3, 2, act=act), conv_bn(64, 64, act=act))
            self.stage3 = nn.Sequential(conv_bn(64, 128, 3, 2, act=act), conv_bn(128, 128, act=act))
            self.sppf_in = conv_bn(128, 64, 1, act=act)
            self.sppf_out = conv_bn(256, 128, 1, act=act)
            self.lateral = conv_bn(128 + 64, 64, 1, act=act)
            self.head_large, self.head_small = nn.Conv2d(128, 255, 1), nn.Conv2d(64, 255, 1)

        def forward(self, x):
            p3 = self.stage2(self.stage1(x))
            y = self.sppf_in(self.stage3(p3))
            m1 = F.max_pool2d(y, 5, 1, 2)
            m2 = F.max_pool2d(m1, 5, 1, 2)
            m3 = F.max_pool2d(m2, 5, 1, 2)
            p4 = self.sppf_out(torch.cat([y, m1, m2, m3], 1))
            up = F.interpolate(p4, scale_factor=2.0, mode="nearest")
            p3 = self.lateral(torch.cat([up, p3], 1))
            return self.head_large(p4), self.head_small(p3)

    #: name -> (module class, input shape)
    MODELS = {
        "mobilenet_v3_small": (MobileNetV3Small, [1, 3, 224, 224]),
        "convnext_nano": (ConvNeXtNano, [1, 3, 224, 224]),
        "vit_tiny": (ViTTiny, [1, 3, 224, 224]),
        "shufflenet_v2": (ShuffleNetV2, [1, 3, 224, 224]),
        "unet_small": (UNetSmall, [1, 3, 128, 128]),
        "yolo_tiny": (YoloTiny, [1, 3, 320, 320]),
    }

def export(name: str, path: Path) -> int:
    """Export model ``name`` of :data:`MODELS` (weights seeded with 0) to ONNX at ``path``;
    returns its number of parameters."""
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model = cls()
    export_module(model, shape, path)
    return sum(p.numel() for p in model.parameters())


def export_module(model, shape: list[int], path: Path) -> None:
    """Export ``model`` in eval mode to ONNX (opset 17, TorchScript exporter) at ``path``,
    BatchNorm statistics randomized first (with torch's current seed) so that folding them
    into the convolutions is exercised."""
    model = model.eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.data.uniform_(0.5, 1.5)
    torch.onnx.export(model, torch.randn(*shape), str(path), opset_version=17, dynamo=False,
                      input_names=["input"])


def export_all(names: list[str], out_dir: Path) -> None:
    """Export ``names`` into ``out_dir`` (``<name>.onnx``) and their parameter counts into
    ``out_dir/params.json``."""
    counts = {name: export(name, out_dir / f"{name}.onnx") for name in names}
    (out_dir / "params.json").write_text(json.dumps(counts))


def main() -> int:
    if torch is None:
        print("benchmarks/architectures.py needs PyTorch: pip install -e '.[torch]'",
              file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--export-to", type=Path, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    names = args.models.split(",")
    if args.export_to:
        export_all(names, args.export_to)
        return 0
    logging.basicConfig(level=logging.WARNING)
    per_round = max(4, args.repeat // ROUNDS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # exported in a child process: PyTorch's worker threads keep spinning for a while
        # after each export and would take cores from the timed runs
        subprocess.run([sys.executable, __file__, "--models", args.models, "--export-to", tmp],
                       check=True)
        params = json.loads((Path(tmp) / "params.json").read_text())
        for name in names:
            path = Path(tmp) / f"{name}.onnx"
            art = compiler.compile(path, "host", output_dir=Path(tmp) / name, verify=False,
                                   tuning_log=False)
            rng = np.random.default_rng(0)
            feeds = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in art.inputs}
            sess = ort_session(path)
            ours = list(art.run(feeds).values())  # output name -> array, in output order
            theirs = sess.run(None, feeds)
            err = max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(ours, theirs))
            runs: dict[str, list[float]] = {"hwcc_ms": [], "onnxruntime_ms": []}
            for _ in range(ROUNDS):
                # each engine starts on idle cores: onnxruntime's workers spin for a while
                # after its runs (its default), which would slow the next hwcc round
                time.sleep(SETTLE_S)
                runs["hwcc_ms"].append(art.benchmark(feeds, repeat=per_round)["median_ms"])
                time.sleep(SETTLE_S)
                runs["onnxruntime_ms"].append(time_fn(
                    lambda s=sess, f=feeds: s.run(None, f), repeat=per_round)["median_ms"])
            row = {"model": name, "params": params[name],
                   **{k: float(np.median(v)) for k, v in runs.items()}, "max_abs_diff": err}
            row["hwcc_vs_ort"] = row["hwcc_ms"] / row["onnxruntime_ms"]
            rows.append(row)
            print(f"{name}: {row}", flush=True)
            # an earlier model's onnxruntime session left alive slows both engines on the
            # next one (~1.8x on this 2-core machine): release it and its threads
            del sess, art
            gc.collect()
    cols = [("model", "model"), ("params", "params"), ("hwcc_ms", "hwcc untuned (ms)"),
            ("onnxruntime_ms", "onnxruntime (ms)"), ("hwcc_vs_ort", "hwcc / ORT"),
            ("max_abs_diff", "max abs diff vs ORT")]
    print(f"\nPyTorch-exported architectures, batch 1 — {machine_line(machine())}\n")
    print(table(rows, cols))
    save_results("architectures", rows, {
        "columns": cols,
        "title": "PyTorch-exported architectures, batch 1, random weights (hwcc untuned)",
        "notes": [("Defined in `benchmarks/architectures.py` and exported with "
                   "`torch.onnx.export` (needs `pip install -e '.[torch]'`); hwcc compiles them "
                   "as a user's unseen model, with no tuning log. Median of 5 alternating "
                   "rounds.")]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
