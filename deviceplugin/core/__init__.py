"""Pure decisions of flexnpu.deviceplugin: typed values in, decisions out; no I/O, no clients, no globals."""
