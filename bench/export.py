"""GGUF export of SmolLM2-135M-Instruct (the embedded default): time, size and perplexity per quantization.

Each quantization is exported with `llmctl export`'s own function (load + write timed apart from the round
trip, which is what gives the perplexity of source and export on the shipped text). Sizes are against the
float32 safetensors directory the model loads from. Goals: q8_0 at most 0.3x that size with a perplexity
within 2% of the source's; an export of SmolLM2 in under 30 s.

    python bench/export.py [--quants f16,q8_0,...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from llmctl.export.gguf_writer import QUANTS

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded copy, never the network


def safetensors_bytes() -> tuple[int, str]:
    from llmctl.config import Config
    from llmctl.loading import local_entry, weights_source

    config = Config()
    config.hf.offline = True
    source, _ = weights_source(local_entry("smollm2", "benchmarking"), config)
    return sum(p.stat().st_size for p in Path(source).glob("*.safetensors")), source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quants", default=",".join(QUANTS), help="comma-separated, default: all")
    parser.add_argument("--keep", type=Path, help="keep the GGUF files in this folder (default: a temporary one)")
    args = parser.parse_args()
    from llmctl.export.run import export_gguf

    start = time.perf_counter()
    reference, source = safetensors_bytes()  # converts the embedded GGUF once if needed (not timed below)
    print(f"source: {source} ({reference / 1e6:.1f} MB of float32 safetensors; ready in "
          f"{time.perf_counter() - start:.1f} s)")
    # The first load in a process also imports transformers' model code and reads the weights from disk;
    # it is timed on its own, so the rows compare the quantizations, not who came first.
    start = time.perf_counter()
    from llmctl.export.run import _cpu_float32
    from llmctl.loading import load_local

    load_local("smollm2", _cpu_float32(None), place=False)
    print(f"cold start (imports + first load of the weights): {time.perf_counter() - start:.1f} s\n")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-export-"))
    folder.mkdir(parents=True, exist_ok=True)
    header = ("quant", "export s", "MB", "size / safetensors", "round trip s", "ppl source", "ppl export",
              "ppl source/export", "max logit diff", "greedy equal", "round trip")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    rows = {}
    try:
        for quant in args.quants.split(","):
            result = export_gguf("smollm2", folder / f"smollm2-{quant}.gguf", quant=quant, register=False, force=True)
            rt = result.round_trip
            rows[quant] = result
            cells = (quant, f"{result.seconds:.1f}", f"{result.bytes / 1e6:.1f}", f"{result.bytes / reference:.3f}x",
                     f"{rt['seconds']:.1f}", f"{rt['ppl_source']:.3f}", f"{rt['ppl_export']:.3f}",
                     f"{rt['ppl_source'] / rt['ppl_export']:.4f}", f"{rt['max_logit_diff']:.3g}",
                     "yes" if rt["greedy_equal"] else "no", "PASS" if rt["passed"] else "FAIL: " + "; ".join(rt["failures"]))
            print("| " + " | ".join(cells) + " |", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    if "q8_0" in rows:
        q8 = rows["q8_0"]
        ratio = q8.round_trip["ppl_export"] / q8.round_trip["ppl_source"]
        print(f"\ngoal q8_0 size <= 0.3x safetensors: {q8.bytes / reference:.3f}x "
              f"({'met' if q8.bytes <= 0.3 * reference else 'MISSED'})")
        print(f"goal q8_0 perplexity within 2%: {100 * (ratio - 1):+.2f}% ({'met' if ratio <= 1.02 else 'MISSED'})")
    slowest = max(rows.values(), key=lambda r: r.seconds)
    print(f"goal export under 30 s: slowest {slowest.seconds:.1f} s ({slowest.quant}; "
          f"{'met' if slowest.seconds < 30 else 'MISSED'}), round trip not included")


if __name__ == "__main__":
    main()
