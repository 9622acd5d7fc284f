"""Pure decisions of flexnpu.operator: typed values in, decisions out; no I/O, no clients, no globals."""
