"""A layer-truncated copy of a GGUF: the first `n_blocks` transformer blocks, the same vocabulary and
embeddings. Its predictions are poor but its tokens are the original's: a draft model that is
mostly wrong, which exercises the draft's rollback."""

from __future__ import annotations

import re
from pathlib import Path

BUILDER_VERSION = 1


def truncate_blocks(src: Path | str, dst: Path | str, n_blocks: int) -> Path:
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch_field = reader.fields[gguf.Keys.General.ARCHITECTURE]
    arch = str(arch_field.contents())
    writer = gguf.GGUFWriter(str(dst), arch)
    block_count = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        value = n_blocks if field.name == block_count else field.contents()
        writer.add_key_value(field.name, value, val_type, sub_type=sub_type)
    keep = [t for t in reader.tensors
            if not (m := re.match(r"blk\.(\d+)\.", t.name)) or int(m.group(1)) < n_blocks]
    for t in keep:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in keep:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    return Path(dst)
