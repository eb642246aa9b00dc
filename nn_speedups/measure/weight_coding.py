"""Weight coding sizes, Deep Compression's last stages, as a metric: how small a model's weights get once their
integer codes are entropy coded, measured on files actually written.

Stages of one model's state dict (`stage_sizes`):

- quantized: the int8 codes. An INT8 model's own int8 tensors as they are; a float model's weight tensors (2-D and
  up) quantized here per output channel, symmetric (code = round(w / scale), scale = max|w| / 127), with fp32
  scales. Written with torch.save.
- coded: every int8/uint8 tensor of the quantized stage (at least MIN_CODED elements) Huffman coded with its own
  code book built from its symbol counts (constriction's Huffman trees, a maintained Rust library), the counts
  stored beside the bits so the file decodes alone; every other tensor (biases, norms, scales) raw. Decoding must
  give back exactly the codes (`read_coded` after `write_coded`); the sizes are the files' bytes.
- k-means (optional, float models): each weight tensor's values replaced by the nearest of K shared centroids
  (1-D k-means, linear initialization, as Deep Compression; exact zeros of a pruned tensor keep a code of their
  own), the K-symbol indices Huffman coded, the centroids raw.
- zstd: the saved model file compressed with zstandard, the practical baseline.

    python -m nn_speedups.measure.weight_coding artifacts/compression/<case>/model.pt --fp32
    artifacts/compression/<m>/fp32.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

MIN_CODED = 1024  # tensors with fewer elements stay raw: a code book would cost more than it saves
ZSTD_LEVEL = 10
KMEANS_ITERATIONS = 20
KMEANS_FIT_SAMPLES = 65536  # centroids are fitted on at most this many values of a tensor, then all are assigned
MB = 1024 * 1024


def _constriction():
    try:
        import constriction
    except ImportError:
        raise ImportError("weight coding needs constriction: pip install -e .") from None
    return constriction


# ------------------------------------------------------------------------------------------- stages


def is_code(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.dtype in (torch.int8, torch.uint8)


def quantize_int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The int8 stage of a float state dict: weights (dim >= 2) as per-output-channel symmetric int8 codes plus an
    fp32 `<name>.int8_scale`; everything else as it is. A state that already holds int8 tensors is returned as is."""
    if any(is_code(t) for t in state.values()):
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.dim() >= 2:
            flat = tensor.detach().float().reshape(tensor.shape[0], -1)  # [out, in * kh * kw]
            scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            out[name] = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(tensor.shape)
            out[f"{name}.int8_scale"] = scale
        else:
            out[name] = tensor
    return out


def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Centroids (sorted, [clusters]) of 1-D k-means over `values` (a seeded sample of KMEANS_FIT_SAMPLES of them
    when there are more), initialized linearly between min and max."""
    values = values.float().flatten()
    low, high = values.min(), values.max()
    if values.numel() > KMEANS_FIT_SAMPLES:
        pick = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:KMEANS_FIT_SAMPLES]
        values = torch.cat([values[pick], torch.stack([low, high])])
    centroids = torch.linspace(float(low), float(high), clusters)
    for _ in range(iterations):
        index = nearest(values, centroids)
        sums = torch.zeros(clusters).index_add_(0, index, values)
        counts = torch.bincount(index, minlength=clusters).float()
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.equal(moved, centroids):
            break
        centroids = moved.sort().values
    return centroids


def nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted `centroids` for each value."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, midpoints)


def kmeans_codes(state: dict[str, torch.Tensor], clusters: int) -> dict[str, torch.Tensor]:
    """The k-means stage of a float state dict: each weight tensor (dim >= 2) as uint8 indices into
    `<name>.centroids` ([clusters] fp32; index 0 is an exact zero when a tenth or more of the tensor is zero, as in
    a pruned model); everything else as it is."""
    if not 2 <= clusters <= 256:
        raise ValueError(f"k-means clusters must be in [2, 256], got {clusters}")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not (tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() >= MIN_CODED):
            out[name] = tensor
            continue
        values = tensor.detach().float().flatten()
        zero = values == 0
        if zero.float().mean() >= 0.1:
            centroids = torch.cat([torch.zeros(1), kmeans_1d(values[~zero], clusters - 1)])
            index = torch.zeros_like(values, dtype=torch.long)
            index[~zero] = nearest(values[~zero], centroids[1:]) + 1
        else:
            centroids = kmeans_1d(values, clusters)
            index = nearest(values, centroids)
        out[name] = index.to(torch.uint8).reshape(tensor.shape)
        out[f"{name}.centroids"] = centroids
    return out


def dequantize_kmeans(codes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float state dict a k-means stage stands for (centroid values in place of the indices)."""
    out = {}
    for name, tensor in codes.items():
        if name.endswith(".centroids"):
            continue
        centroids = codes.get(f"{name}.centroids")
        out[name] = centroids[tensor.long()] if centroids is not None else tensor
    return out


# ------------------------------------------------------------------------------------------- Huffman


def symbols(tensor: torch.Tensor) -> np.ndarray:
    """A code tensor as Huffman symbols 0..255 (int8 shifted by 128)."""
    flat = tensor.detach().cpu().flatten()
    if tensor.dtype == torch.int8:
        return flat.numpy().astype(np.int64) + 128
    return flat.numpy().astype(np.int64)


def from_symbols(values: np.ndarray, dtype: torch.dtype, shape) -> torch.Tensor:
    if dtype == torch.int8:
        values = values - 128
    return torch.from_numpy(values.astype(np.int16)).to(dtype).reshape(shape)


def huffman_encode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(compressed words uint32, symbol counts int32 [256]) of `values` (ints in 0..255), one Huffman code book
    built from the counts."""
    constriction = _constriction()
    counts = np.bincount(values, minlength=256).astype(np.int64)
    tree = constriction.symbol.huffman.EncoderHuffmanTree(counts.astype(np.float64))
    encoder = constriction.symbol.QueueEncoder()
    encode = encoder.encode_symbol
    for value in values.tolist():
        encode(value, tree)
    words, _bits = encoder.get_compressed_and_bitrate()  # whole uint32 words; _bits is the exact bit count
    return np.asarray(words, dtype=np.uint32), counts.astype(np.int32)


def huffman_decode(words: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    constriction = _constriction()
    tree = constriction.symbol.huffman.DecoderHuffmanTree(counts.astype(np.float64))
    decoder = constriction.symbol.QueueDecoder(np.asarray(words, dtype=np.uint32))
    decode = decoder.decode_symbol
    return np.fromiter((decode(tree) for _ in range(n)), dtype=np.int64, count=n)


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy of the symbol distribution, bits per symbol (Huffman is within 1 bit of it)."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def write_coded(state: dict[str, torch.Tensor], path: str | Path) -> dict:
    """Write `state` with its code tensors Huffman coded; returns the file's bytes, coded symbols and bits."""
    coded, raw = {}, {}
    n_symbols = bits = 0
    for name, tensor in state.items():
        if is_code(tensor) and tensor.numel() >= MIN_CODED:
            values = symbols(tensor)
            words, counts = huffman_encode(values)
            coded[name] = {
                "words": torch.from_numpy(words.view(np.int32).copy()),
                "counts": torch.from_numpy(counts),
                "shape": list(tensor.shape),
                "dtype": str(tensor.dtype).removeprefix("torch."),
            }
            n_symbols += values.size
            bits += words.size * 32
        else:
            raw[name] = tensor.detach().cpu().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "nn-speedups huffman v1", "coded": coded, "raw": raw, "order": list(state)}, path)
    return {"bytes": path.stat().st_size, "symbols": n_symbols, "bits": bits}


def read_coded(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict a `write_coded` file holds, codes decoded."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for name in saved["order"]:
        if name in saved["coded"]:
            entry = saved["coded"][name]
            n = int(np.prod(entry["shape"])) if entry["shape"] else 1
            values = huffman_decode(entry["words"].numpy().view(np.uint32), entry["counts"].numpy(), n)
            out[name] = from_symbols(values, getattr(torch, entry["dtype"]), entry["shape"])
        else:
            out[name] = saved["raw"][name]
    return out


def check_roundtrip(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Decode `path` and compare with `state` tensor by tensor: any difference is an error naming the tensor."""
    back = read_coded(path)
    if list(back) != list(state):
        raise AssertionError(f"{path}: decoded tensors {list(back)[:3]}... differ from the coded ones")
    for name, tensor in state.items():
        if not torch.equal(back[name].cpu(), tensor.detach().cpu()):
            differing = int((back[name].cpu() != tensor.detach().cpu()).sum())
            raise AssertionError(f"{path}: Huffman round trip changed {differing} values of {name}")


def zstd_file(path: str | Path, level: int = ZSTD_LEVEL) -> Path:
    try:
        import zstandard
    except ImportError:
        raise ImportError("the zstd baseline needs zstandard: pip install -e .") from None
    path = Path(path)
    out = path.with_name(path.name + ".zst")
    out.write_bytes(zstandard.ZstdCompressor(level=level).compress(path.read_bytes()))
    return out


# ------------------------------------------------------------------------------------------- report


def save_state(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, path)
    return path


def stage_sizes(
    state: dict[str, torch.Tensor],
    model_file: str | Path,
    out_dir: str | Path,
    fp32_bytes: int,
    kmeans: tuple[int, ...] = (),
    verify: bool = True,
) -> dict:
    """Write the quantized and coded stages of `state` (the model saved in `model_file`) under `out_dir`, plus the
    zstd baseline, and return their sizes (MB) and ratios to the fp32 file (`fp32_bytes`). `verify` decodes the
    coded file and requires the exact codes back."""
    out_dir = Path(out_dir)
    model_bytes = Path(model_file).stat().st_size
    state = {name: tensor.detach().cpu() for name, tensor in state.items()}  # a CUDA model's too
    quantized = quantize_int8(state)
    own_int8 = any(is_code(t) for t in state.values())
    quantized_file = Path(model_file) if own_int8 else save_state(quantized, out_dir / "int8.pt")
    coded_file = out_dir / "int8.huff"
    coded = write_coded(quantized, coded_file)
    if verify:
        check_roundtrip(quantized, coded_file)
    zst = zstd_file(model_file)
    sizes = {
        "size_fp32_mb": fp32_bytes / MB,
        "quantized_size_mb": quantized_file.stat().st_size / MB,
        "compressed_size_mb": coded["bytes"] / MB,
        "zstd_size_mb": zst.stat().st_size / MB,
        "huffman_bits_per_code": coded["bits"] / coded["symbols"] if coded["symbols"] else None,
        "huffman_roundtrip": "exact" if verify else "not checked",
    }
    for k in kmeans:
        if own_int8:
            break  # k-means shares float weights; an INT8 model's are codes already
        codes = kmeans_codes(state, k)
        kfile = out_dir / f"kmeans{k}.huff"
        write_coded(codes, kfile)
        if verify:
            check_roundtrip(codes, kfile)
        sizes[f"kmeans{k}_size_mb"] = kfile.stat().st_size / MB
    ratios = {
        "size_ratio": fp32_bytes / model_bytes,
        **{
            key.replace("_size_mb", "_ratio"): fp32_bytes / (value * MB)
            for key, value in sizes.items()
            if key.endswith("_size_mb") and key != "size_fp32_mb" and value
        },
    }
    return {**sizes, **ratios, "coded_files": [str(coded_file), str(zst)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nn_speedups.measure.weight_coding", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", help="a saved state dict (torch.save), e.g. artifacts/compression/<case>/model.pt")
    parser.add_argument("--fp32", help="the uncompressed model's saved state dict, for the ratios (default: model)")
    parser.add_argument("--kmeans", default="16,32", help="k-means cluster counts for float models (default 16,32)")
    parser.add_argument("--out-dir", help="where the stage files go (default: beside the model, in coding/)")
    args = parser.parse_args(argv)
    model = Path(args.model)
    try:
        state = torch.load(model, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:
        print(f"error: {model}: {error}", file=sys.stderr)
        return 2
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a nn_speedups.train checkpoint
    fp32_bytes = Path(args.fp32).stat().st_size if args.fp32 else model.stat().st_size
    kmeans = tuple(int(k) for k in args.kmeans.split(",") if k.strip())
    sizes = stage_sizes(state, model, Path(args.out_dir or model.parent / "coding"), fp32_bytes, kmeans)
    print(f"{'stage':<22}{'MB':>10}{'x smaller than fp32':>22}")
    print(f"{'fp32':<22}{fp32_bytes / MB:>10.3f}{1.0:>22.2f}")
    print(f"{'this file':<22}{model.stat().st_size / MB:>10.3f}{sizes['size_ratio']:>22.2f}")
    names = {"quantized": "int8 codes", "compressed": "int8 + Huffman", "zstd": "zstd of the file"}
    for key, value in sizes.items():
        if key.endswith("_size_mb") and key != "size_fp32_mb":
            ratio = sizes.get(key.replace("_size_mb", "_ratio"))
            stage = key.removesuffix("_size_mb")
            stage = names.get(stage, stage.replace("kmeans", "k-means ") + " + Huffman")
            print(f"{stage:<22}{value:>10.3f}{ratio:>22.2f}")
    print(f"Huffman: {sizes['huffman_bits_per_code']:.3f} bits per int8 code, round trip {sizes['huffman_roundtrip']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
