/* Moved: the fake device libraries are part of the simulated node now (shim/simnpu/native). This forward keeps
 * shim/native/Makefile's `fakes` target building them from the new place. */
#include "../../../shim/simnpu/native/cuda.c"
