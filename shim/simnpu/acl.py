"""AscendCL from Python through ctypes: what the demo's native tenants launch with.

The calls and signatures are AscendCL's own (``acl_rt.h``), so the same code runs on the fake ``libascendcl.so``
of the simulated node or a real one. ctypes resolves each function with ``dlsym``, which ``libflexnpu.so``
overrides: with the interposer preloaded every launch below goes through its gate. On the fake library a kernel's
duration is its argument (a uint64 of microseconds), read by the fake device only.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

ACL_SUCCESS = 0


class AclError(RuntimeError):
    """An AscendCL call returned an error code."""

    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call} returned {code}")
        self.call = call
        self.code = code


class AclStream:
    """One device (0) and one stream on it; ``launch`` queues a kernel, ``synchronize`` waits for the stream."""

    def __init__(self, library: Path) -> None:
        acl = ctypes.CDLL(str(library))
        acl.aclInit.argtypes = [ctypes.c_char_p]
        acl.aclrtSetDevice.argtypes = [ctypes.c_int32]
        acl.aclrtCreateStream.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        acl.aclrtDestroyStream.argtypes = [ctypes.c_void_p]
        acl.aclrtLaunchKernel.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        acl.aclrtLaunchKernel.argtypes += [ctypes.c_void_p]
        acl.aclrtSynchronizeStream.argtypes = [ctypes.c_void_p]
        for name in ("aclInit", "aclrtSetDevice", "aclrtCreateStream", "aclrtLaunchKernel"):
            getattr(acl, name).restype = ctypes.c_int
        acl.aclrtSynchronizeStream.restype = ctypes.c_int
        acl.aclrtDestroyStream.restype = ctypes.c_int
        self._acl = acl
        self._check("aclInit", acl.aclInit(None))
        self._check("aclrtSetDevice", acl.aclrtSetDevice(0))
        self._stream = ctypes.c_void_p()
        self._check("aclrtCreateStream", acl.aclrtCreateStream(ctypes.byref(self._stream)))
        self._arg = ctypes.c_uint64(0)
        self.launches = 0

    @staticmethod
    def _check(call: str, code: int) -> None:
        if code != ACL_SUCCESS:
            raise AclError(call, code)

    def launch(self, kernel_us: int) -> None:
        """aclrtLaunchKernel of one kernel (the fake runs it ``kernel_us`` on the device)."""
        self._arg.value = kernel_us
        code = self._acl.aclrtLaunchKernel(None, 1, ctypes.byref(self._arg), 8, self._stream)
        self._check("aclrtLaunchKernel", code)
        self.launches += 1

    def synchronize(self) -> None:
        self._check("aclrtSynchronizeStream", self._acl.aclrtSynchronizeStream(self._stream))

    def close(self) -> None:
        self.synchronize()
        self._check("aclrtDestroyStream", self._acl.aclrtDestroyStream(self._stream))
