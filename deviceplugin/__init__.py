"""The kubelet device plugin advertising ``huawei.com/vnpu`` units (DESIGN.md sections 3 and 4).

Shaped as a small framework: ``discovery`` backends only scan cards; ``server`` owns every kubelet/gRPC detail
(serve, register, re-register, ListAndWatch); ``kube`` is the one Kubernetes API adapter; ``plugin`` ties them
to the pure decisions in ``core`` (units, best fit, pod matching, the Allocate response) and the shared
npu-smi parser ``flexnpu.npusmi``.
The fakes that tests and the benchmark run it against (a kubelet stub, kmock) live in ``flexnpu_testsupport``.
"""
