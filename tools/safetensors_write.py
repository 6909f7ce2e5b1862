"""Minimal safetensors writer (no dependency beyond the standard library and torch).

Format (https://github.com/huggingface/safetensors): u64 little-endian header length N, N bytes
of JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then
the raw little-endian tensor bytes, offsets relative to the start of the data section.
jem reads the result with include/jem/safetensors.hpp.
"""
import json
import os
import struct

_DTYPES = {"float32": "F32", "float64": "F64", "int64": "I64", "int32": "I32", "uint8": "U8"}


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: torch.Tensor} to `path` atomically (a temporary file renamed over it)."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        dtype = _DTYPES.get(str(t.dtype).replace("torch.", ""))
        if dtype is None:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
        data = t.numpy().tobytes()  # numpy writes the machine's (little-endian) byte order
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * ((8 - len(head) % 8) % 8)  # align the data section to 8 bytes
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
