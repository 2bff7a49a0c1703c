"""Writing a GGUF file with the `gguf` package: metadata, then the tensors one at a time.

Tensors are converted and quantized as they are written, so memory stays close to one copy of the model.
The caller hands in an open temporary file and renames it into place: a crash leaves no half file.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

from llmctl.errors import UsageError
from llmctl.export.architectures import TensorSource

QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def check_quant(quant: str) -> str:
    if quant not in QUANTS:
        raise UsageError(f"unknown quantization '{quant}'", hint="use one of: " + ", ".join(QUANTS))
    return quant


def ggml_type(quant: str):
    import gguf

    return getattr(gguf.GGMLQuantizationType, quant.upper())


def file_type(quant: str) -> int:
    import gguf

    name = "ALL_F32" if quant == "f32" else f"MOSTLY_{quant.upper()}"
    return int(getattr(gguf.LlamaFileType, name))


def tensor_type(source: TensorSource, quant: str, output_name: str):
    """The GGML type one tensor is stored as under `quant`.

    1-D tensors and the MoE router stay F32 (llama.cpp reads them as F32). A row that is not a whole
    number of quantization blocks falls back to F16, as convert_hf_to_gguf.py does. Under the 4- and
    5-bit types the output matrix (the embedding, when tied) is kept at Q8_0: it is the most sensitive
    one, and llama.cpp's own quantizer gives it a larger type too (Q6_K, which gguf-py cannot write).
    """
    import gguf

    Q = gguf.GGMLQuantizationType
    if source.keep_f32 or len(source.shape) == 1 or quant == "f32":
        return Q.F32
    if quant in ("f16", "bf16"):
        return ggml_type(quant)
    wanted = Q.Q8_0 if quant != "q8_0" and source.name == output_name else ggml_type(quant)
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    return wanted if source.shape[-1] % block == 0 else Q.F16


def encoded_bytes(shape: tuple[int, ...], qtype) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * shape[-1] // block * size


def encode(array: np.ndarray, qtype) -> np.ndarray:
    import gguf

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return array.astype(np.float32, copy=False)
    if qtype == Q.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, qtype)


def output_tensor_name(sources: list[TensorSource]) -> str:
    names = {s.name for s in sources}
    return "output.weight" if "output.weight" in names else "token_embd.weight"


def write_gguf(path: Path, arch: str, quant: str, sources: list[TensorSource], metadata) -> dict[str, int]:
    """Write the whole file at `path` (the caller's temporary file). `metadata(writer)` adds the key-values.
    Returns how many tensors of each GGML type were written."""
    import gguf

    if sys.byteorder != "little":  # tensors are written as they lie in memory; GGUF files are little-endian
        raise UsageError("GGUF export needs a little-endian machine")
    writer = gguf.GGUFWriter(path=path, arch=arch)
    metadata(writer)
    writer.add_file_type(file_type(quant))
    if quant not in ("f32", "f16", "bf16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    output_name = output_tensor_name(sources)
    types = [tensor_type(s, quant, output_name) for s in sources]
    for source, qtype in zip(sources, types):
        writer.add_tensor_info(source.name, source.shape, np.dtype(np.float32), encoded_bytes(source.shape, qtype),
                               raw_dtype=qtype)
    counts: dict[str, int] = {}
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        f = writer.fout[0]
        for source, qtype in zip(sources, types):
            # What GGUFWriter.write_tensor_data does, but through file.write (ndarray.tofile reports a full
            # disk as a short write with no errno, file.write as ENOSPC/EFBIG) and in slices of rows.
            writer.write_padding(f, f.tell())
            written = sum(f.write(memoryview(np.ascontiguousarray(encode(rows, qtype))).cast("B"))
                          for rows in _row_slices(source.read()))
            if written != encoded_bytes(source.shape, qtype):
                raise AssertionError(f"{source.name}: wrote {written} bytes for {source.shape} as {qtype.name}")
            writer.write_padding(f, written)
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the target
    finally:
        writer.close()
    return counts


def _row_slices(array: np.ndarray, elements: int = 1 << 22):
    """The tensor as consecutive slices of whole rows (about 16 MB of float32 each): quantizing makes
    several temporaries the size of its input, so a whole embedding at once would cost more than the model."""
    rows = array.reshape(-1, array.shape[-1])
    step = max(1, elements // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        yield rows[start:start + step]
