#!/usr/bin/env python3
"""Cut a llama-architecture GGUF to its first N layers (real weights, smaller file).

The GPU machine has no internet and takes at most 64 MiB of files per run, so the CUDA
end-to-end test runs on the real SmolLM2 weights cut to a few layers:

  python scripts/cut_gguf.py SRC.gguf OUT.gguf --layers 4 [--no-merges]

Every global tensor (embedding, output norm, output) and the tensors of blocks
0..N-1 are copied byte for byte in their stored type; `<arch>.block_count` becomes N.
Other metadata is copied as is, except the BPE merge list when --no-merges is given
(it is only needed to tokenize text, and it is a few MB).
"""
import argparse
import sys

import gguf
import numpy as np
from gguf import GGUFValueType as VT


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-merges", action="store_true", help="drop tokenizer.ggml.merges")
    a = ap.parse_args(argv)

    r = gguf.GGUFReader(a.src)
    arch = r.fields["general.architecture"].contents()
    n_layer = r.fields[f"{arch}.block_count"].contents()
    if not 0 < a.layers <= n_layer:
        sys.exit(f"cut_gguf: --layers must be in 1..{n_layer}, got {a.layers}")

    w = gguf.GGUFWriter(a.out, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue   # written by GGUFWriter itself
        if a.no_merges and key == "tokenizer.ggml.merges":
            continue
        if key == f"{arch}.block_count":
            w.add_uint32(key, a.layers)
            continue
        vt = f.types[0]
        if vt == VT.ARRAY:
            w.add_array(key, f.contents())
        else:
            w.add_key_value(key, f.contents(), vt)

    kept = 0
    for t in r.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= a.layers:
            continue
        # raw bytes in the stored type; shape in numpy order (outermost first)
        shape = [int(x) for x in reversed(t.shape)]
        data = np.asarray(t.data)
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(t.name, data.reshape(shape))
        else:
            w.add_tensor(t.name, data.view(np.uint8), raw_dtype=t.tensor_type)
        kept += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    print(f"cut_gguf: {a.out}: {a.layers} of {n_layer} layers, {kept} tensors")


if __name__ == "__main__":
    main()
