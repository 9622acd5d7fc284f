"""The real-time simulated NPU: a server that separate OS processes share through a unix socket, like pods a card."""
