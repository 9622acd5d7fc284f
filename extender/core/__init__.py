"""Pure decisions of flexnpu.extender: typed values in, decisions out; no I/O, no clients, no globals."""
