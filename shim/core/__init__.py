"""Pure decisions of flexnpu.shim: typed values in, decisions out; no I/O, no clients, no globals."""
