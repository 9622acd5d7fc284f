"""Test support for flexnpu: the fakes that speak the real protocols, and the cluster in a box.

Not part of the product: a package of its own (``flexnpu_testsupport``, folder ``testsupport/``) that ships in
the same distribution so that ``flexnpu demo --cluster`` and ``flexnpu bench deviceplugin|operator`` can use it.
It needs the test extra (``pip install -e '.[test]'``: kmock above all). It may import any component; no
component imports it (``.importlinter`` checks that).

- ``kubeletstub``: a kubelet that serves ``v1beta1.Registration`` on a unix socket and calls the plugin back.
- ``kubeemulator``: kmock serving the resources the device plugin uses, in a thread, with a kubeconfig.
- ``operatorkit``: flexnpud as a process, kopf running the operator in a thread, claim helpers.
- ``waiting``: the one ``free_port`` and the one ``wait_for`` of the tests.
- ``box``: every component as a process against kmock (``flexnpu demo --cluster``, ``tests/box``).
"""
