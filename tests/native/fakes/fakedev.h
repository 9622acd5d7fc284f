/* Moved to shim/simnpu/native/fakedev.h (the simulated node's device); this forward keeps old includes working. */
#include "../../../shim/simnpu/native/fakedev.h"
