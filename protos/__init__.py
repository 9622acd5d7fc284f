"""The kubelet gRPC APIs flexnpu speaks: device plugin v1beta1 and pod resources v1.

The ``.proto`` files are wire-compatible copies of upstream's; the ``*_pb2*`` modules beside them are generated
by ``protos/generate.py`` and committed (CI checks they are current).
"""
