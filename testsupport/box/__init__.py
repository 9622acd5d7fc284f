"""A cluster in a box: the real flexnpu components as separate processes on one machine, with no cluster.

One kmock API emulator process stands for the API server (reached through a kubeconfig), a kubelet stub speaks
v1beta1 to the real device plugin, the real flexnpud serves the simulated NPU's registrations and grants, the
real extender and operator run against the emulator. This package plays the roles no flexnpu component plays:
kube-scheduler (it calls the extender's verbs), kubelet (it admits pods through the device plugin and starts
their "containers" with what Allocate returned) and the user (it creates pods). ``flexnpu demo --cluster`` and
``tests/box`` run it. Test support, not product: it may import any component, and none imports it.
"""
